"""Training throughput and memory of rsdlib.train (paper Section 4.1 recipe): full fine-tuning vs LoRA.

For each (mode, block size, gradient checkpointing) it runs a few optimizer steps of micro-batch 1
on synthetic examples exactly ``block_size`` tokens long (a 64-token prompt, the rest a supervised
full completion ending with the end-of-turn token), each in a fresh child process so the peak RSS
belongs to that configuration alone. The first step is a warm-up and is not timed.

    python benchmarks/bench_train.py                       # embedded 0.5B student, block 512
    python benchmarks/bench_train.py --model /path/to/folder --block-sizes 512 1024 --steps 4
    python benchmarks/bench_train.py --demo-examples 64 --demo-tokens 700 --demo-epochs 3

Columns: tokens/s = trained tokens per second after warm-up; s/step(16) = seconds for one optimizer
step of the paper's global batch (16 examples of that length); peak RSS of the child process
(model + optimizer + activations) and the model's load time. On a GPU it also
reports the peak CUDA memory. ``--demo-*`` prints the estimated time of a training stage of that size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rss_peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def child(spec: dict) -> dict:
    """One configuration, in this process: load, train ``steps + 1`` steps, measure."""
    import torch
    from transformers import AutoTokenizer, TrainerCallback

    from rsdlib.models import load_student
    from rsdlib.prompts import turn_end_id
    from rsdlib.train import TrainConfig, model_source, train

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            model=spec["model"], output_dir=tmp, epochs=1, max_steps=spec["steps"] + 2,
            global_batch_size=1, micro_batch_size=1, block_size=spec["block_size"], lora=spec["lora"],
            gradient_checkpointing=spec["gc"], save_strategy="no", logging_steps=1, warmup_ratio=0.0,
            lr_scheduler="constant_with_warmup", bf16=spec["bf16"],
        )
        tok = AutoTokenizer.from_pretrained(model_source(cfg.model))
        eot = turn_end_id(tok, (cfg.eot_token,))
        t0 = time.perf_counter()
        model = load_student(cfg.model, dtype=cfg.model_dtype, device="cpu")[0].train()
        load_s = time.perf_counter() - t0
        top = min(len(tok), 151643)  # ordinary (non-special) ids of a Qwen vocabulary
        gen = torch.Generator().manual_seed(0)
        n_prompt = 64
        examples = []
        for i in range(spec["steps"] + 2):
            toks = torch.randint(100, top, (spec["block_size"] - 1,), generator=gen).tolist()
            examples.append({"id": f"b{i}", "prompt_ids": toks[:n_prompt], "completion_ids": toks[n_prompt:] + [eot],
                             "kind": "full", "source": "bench"})

        times: list[float] = []

        class Timer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                times.append(time.perf_counter())

            def on_step_end(self, args, state, control, **kw):
                times.append(time.perf_counter())
                if state.global_step == spec["steps"] + 1:  # stop before the last step: no final save
                    control.should_training_stop = True

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        train(cfg, examples, tokenizer=tok, model=model, callbacks=[Timer()])
        step_s = [times[i + 1] - times[i] for i in range(0, len(times) - 1, 2)][1:]  # drop the warm-up step
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return {
            **spec,
            "load_s": load_s,
            "step_s": step_s,
            "tokens_per_s": spec["block_size"] * len(step_s) / sum(step_s),
            "rss_peak_gib": rss_peak_gib(),
            "cuda_peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
            "trainable_params": trainable,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()}",
        }


def run_child(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "TQDM_DISABLE": "1"})
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {**spec, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["died"]}


def table(results: list[dict]) -> str:
    rows = ["| mode | block | grad ckpt | trainable params | tokens/s | s/step(16) | peak RSS GiB | load s "
            "| CUDA peak GiB | device |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        mode = "LoRA" if r["lora"] else "full"
        if "error" in r:
            rows.append(f"| {mode} | {r['block_size']} | {r['gc']} | - | failed: {r['error'][0][:60]} | | | | | |")
            continue
        cuda = f"{r['cuda_peak_gib']:.1f}" if r["cuda_peak_gib"] is not None else "-"
        rows.append(
            f"| {mode} | {r['block_size']} | {r['gc']} | {r['trainable_params'] / 1e6:.2f}M "
            f"| {r['tokens_per_s']:.0f} | "
            f"{16 * r['block_size'] / r['tokens_per_s']:.0f} | {r['rss_peak_gib']:.1f} | {r['load_s']:.0f} | "
            f"{cuda} | {r['device']} |"
        )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded:student", help="folder, hub id or embedded:student")
    ap.add_argument("--modes", nargs="+", default=["full", "lora"], choices=["full", "lora"])
    ap.add_argument("--block-sizes", nargs="+", type=int, default=[512])
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps (after one warm-up step)")
    ap.add_argument("--gradient-checkpointing", choices=["off", "on", "both"], default="off")
    ap.add_argument("--bf16", default="auto", help="auto | true | false")
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    ap.add_argument("--demo-examples", type=int, help="estimate a training stage: number of examples")
    ap.add_argument("--demo-tokens", type=float, help="... mean tokens per example")
    ap.add_argument("--demo-epochs", type=float, default=1.0, help="... epochs")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(json.loads(args.child))), flush=True)
        return
    if args.model.startswith("embedded:"):
        try:
            from rsdlib.train import model_source

            model_source(args.model)  # fills the cache if needed (rsdlib prepare)
        except Exception as err:  # noqa: BLE001
            sys.exit(f"the embedded model is not available ({err}); pass --model <folder>")
    gcs = {"off": [False], "on": [True], "both": [False, True]}[args.gradient_checkpointing]
    results = []
    for block in args.block_sizes:
        for mode in args.modes:
            for gc in gcs:
                spec = {"model": args.model, "lora": mode == "lora", "block_size": block, "gc": gc,
                        "steps": args.steps, "bf16": args.bf16}
                print(f"running {spec}", file=sys.stderr, flush=True)
                results.append(run_child(spec))
    print(f"model: {args.model}; micro-batch 1, {args.steps} timed steps after 1 warm-up, fp32 weights\n")
    print(table(results))
    ok = [r for r in results if "error" not in r]
    if args.demo_examples and args.demo_tokens and ok:
        tokens = args.demo_examples * args.demo_tokens * args.demo_epochs
        print(f"\nestimated training stage: {args.demo_examples} examples x {args.demo_tokens:.0f} tokens x "
              f"{args.demo_epochs:g} epochs = {tokens:.0f} tokens")
        for r in ok:
            print(f"  {'LoRA' if r['lora'] else 'full'} block {r['block_size']} gc={r['gc']}: "
                  f"{tokens / r['tokens_per_s'] / 60:.1f} min")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
