"""Decoder throughput: teacher-only, student-only, lockstep RSD and speculative RSD, side by side.

Prints, for each batch size, generated tokens/s of each mode (equal prompt, every row forced to the
same length: no stop ids), the ratio rsd/teacher, and the lockstep limit of that ratio,
1 / (1 + student step time / teacher step time), computed from the single-model runs of the same
batch size: lockstep RSD pays one teacher step plus one student step per token. A second table gives
speculative RSD (``--draft-tokens``, exact, rsdlib.speculative) against teacher-only sampling, with
the draft acceptance rate.

    python benchmarks/bench_decoding.py                      # embedded pair, batch 1 4 16
    python benchmarks/bench_decoding.py --dtype bfloat16     # also reports peak memory
    python benchmarks/bench_decoding.py --tiny               # tiny random models (a smoke run)
    python benchmarks/bench_decoding.py --tiny --steps-only  # just the per-step table below

First, a per-step table (issue 31): milliseconds per lockstep RSD step (every row emits one token) and
steps/s at each batch size, for the decoders side by side in the same run: ``old`` is rsdlib's decoder as it
was at commit BASELINE (its engine, sampling, decoding and speculative modules loaded from git), ``rows``
today's code on the host-side scheduler (``Decoder(engine="rows")``), ``slots`` today's default
(``rsdlib.engine.run_slots``: no per-row Python, one host sync per window of steps), ``static`` the slot
path on a fixed-shape KV cache (``Decoder(cache="static")``) and, with ``--compiled``, that path with each
model's forward compiled (``Decoder(compile=True)``; compiled once per batch size before timing). A step's time is
(time of T_long steps - time of T_short steps) / (T_long - T_short), so prefill is excluded.
With ``--tiny`` it runs on the bench's tiny models and on micro models (2 layers, hidden 32), whose
forwards cost almost nothing: there the step time is the framework, Python and sync overhead.
"""

from __future__ import annotations

import argparse
import importlib
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from rsdlib.decoding import Decoder, DecodingConfig

PROMPT = (
    "Solve step by step, in words: a rectangle has a perimeter of 30 and its length is twice its "
    "width. What is its area? Put the final answer in \\boxed{}."
)


BASELINE = "fb08601"  # the decoder before issue 31 (per-row Python and host syncs in every step)
BASELINE_MODULES = ("sampling", "engine", "speculative", "decoding")


def baseline_decoding(commit: str = BASELINE):
    """rsdlib.decoding as it was at ``commit``: its decoder modules read from git into a package of their own
    (``rsdlib_baseline``), the rest of rsdlib shared."""
    root = Path(__file__).resolve().parents[1]
    folder = Path(tempfile.mkdtemp(prefix="rsdlib-baseline-")) / "rsdlib_baseline"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    for name in BASELINE_MODULES:
        text = subprocess.run(["git", "show", f"{commit}:rsdlib/{name}.py"], cwd=root, check=True,
                              capture_output=True, text=True).stdout
        for other in BASELINE_MODULES:
            text = text.replace(f"rsdlib.{other} ", f"rsdlib_baseline.{other} ").replace(
                f"rsdlib.{other}\n", f"rsdlib_baseline.{other}\n")
        (folder / f"{name}.py").write_text(text)
    sys.path.insert(0, str(folder.parent))
    return importlib.import_module("rsdlib_baseline.decoding")


def _peak_rss(reset: bool = False) -> float:
    """Peak resident set (GiB) since start or the last reset (Linux: VmHWM, reset by clear_refs 5)."""
    try:
        status = open("/proc/self/status").read()
        peak = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 2**20
        if reset:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        return peak
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def load(args):
    if args.tiny:
        from rsdlib.bridge import VocabBridge
        from rsdlib.standins import tiny_model

        def lm(layers, hidden):
            return tiny_model(seed=layers, layers=layers, hidden=hidden, vocab_size=1000, max_positions=32768,
                              eos_token_id=None, pad_token_id=None)

        return lm(6, 256), lm(3, 128), VocabBridge.identity(1000), list(range(10, 60))
    from rsdlib.models import load_demo_pair

    pair = load_demo_pair(dtype=args.dtype)
    tok = pair.student_tokenizer
    messages = [{"role": "user", "content": PROMPT}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(prompt, "input_ids") or isinstance(prompt, dict):
        prompt = prompt["input_ids"]
    return pair.teacher, pair.student, pair.bridge, list(prompt)


def micro_models():
    """Micro random models (2 layers, hidden 32, 1,000 ids): a step's forwards cost almost nothing."""
    from rsdlib.bridge import VocabBridge
    from rsdlib.standins import tiny_model

    def lm(seed):
        return tiny_model(seed=seed, layers=2, hidden=32, vocab_size=1000, max_positions=32768,
                          eos_token_id=None, pad_token_id=None)

    return lm(1), lm(2), VocabBridge.identity(1000), list(range(10, 60))


def _timed_generate(decoding, make, teacher, student, bridge, prompt, batch, steps, threshold):
    cfg = decoding.DecodingConfig(mode="rsd", temperature=0.7, threshold=threshold, max_new_tokens=steps)
    dec = make(decoding.Decoder, teacher, student, bridge, cfg)
    start = time.perf_counter()
    traces = dec.generate([prompt] * batch, list(range(batch)), batch_size=batch)
    elapsed = time.perf_counter() - start
    assert all(len(t.token_ids) == steps for t in traces)
    return elapsed


def step_table(label, teacher, student, bridge, prompt, batch_sizes, steps, threshold, repeats=1, compiled=False):
    """Rows (label, batch, {decoder: ms per step}) for the old, rows, slots and static decoders (and the
    compiled one), measured side by side."""
    import rsdlib.decoding as current

    old = baseline_decoding()
    decoders = {
        "old": (old, lambda D, t, s, b, c: D(t, s, b, c)),
        "rows": (current, lambda D, t, s, b, c: D(t, s, b, c, engine="rows")),
        "slots": (current, lambda D, t, s, b, c: D(t, s, b, c)),
        "static": (current, lambda D, t, s, b, c: D(t, s, b, c, cache="static")),
    }
    if compiled:  # each batch size compiles both models once, in the warm-up run of that size below
        decoders["compiled"] = (current, lambda D, t, s, b, c: D(t, s, b, c, compile=True))
    short, long = steps
    for decoding, make in decoders.values():  # warm-up
        _timed_generate(decoding, make, teacher, student, bridge, prompt, 2, 4, threshold)
    rows = []
    for b in batch_sizes:
        ms = {}
        for name, (decoding, make) in decoders.items():
            if name == "compiled":  # compile for this batch shape outside the timing
                _timed_generate(decoding, make, teacher, student, bridge, prompt, b, steps[0], threshold)
            best = float("inf")
            for _ in range(repeats):  # best of repeats: this machine is shared
                t_short = _timed_generate(decoding, make, teacher, student, bridge, prompt, b, short, threshold)
                t_long = _timed_generate(decoding, make, teacher, student, bridge, prompt, b, long, threshold)
                best = min(best, (t_long - t_short) / (long - short) * 1e3)
            ms[name] = best
        rows.append((label, b, ms))
    return rows


def print_step_table(rows) -> None:
    names = [n for n in ("old", "rows", "slots", "static", "compiled") if n in rows[0][2]]
    print("| models | batch | " + " | ".join(f"{n} ms/step" for n in names) + " | old steps/s | slots steps/s | "
          + " | ".join(f"old/{n}" for n in names[2:]) + " |")
    print("|---|---:|" + "---:|" * (len(names) + 2 + len(names[2:])))
    for label, b, ms in rows:
        print(f"| {label} | {b} | " + " | ".join(f"{ms[n]:.2f}" for n in names)
              + f" | {1e3 / ms['old']:.1f} | {1e3 / ms['slots']:.1f} | "
              + " | ".join(f"{ms['old'] / ms[n]:.2f}x" for n in names[2:]) + " |")


def tokens_per_second(teacher, student, bridge, prompt, mode, batch, new_tokens, threshold, draft_tokens=0):
    """(tokens/s, fallback share, draft acceptance rate or None) of one timed generate call."""
    cfg = DecodingConfig(mode=mode, temperature=0.7, threshold=threshold, max_new_tokens=new_tokens,
                         draft_tokens=draft_tokens)
    dec = Decoder(teacher, student, bridge, cfg)
    start = time.perf_counter()
    traces = dec.generate([prompt] * batch, list(range(batch)), batch_size=batch)
    elapsed = time.perf_counter() - start
    generated = sum(len(t.token_ids) for t in traces)
    fallback = sum(sum(t.fallback) for t in traces) / max(generated, 1)
    acceptance = dec.stats["accepted"] / dec.stats["drafted"] if draft_tokens else None
    return generated / elapsed, fallback, acceptance


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threshold", type=float, default=0.01)
    ap.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--tiny", action="store_true", help="tiny random models instead of the embedded pair")
    ap.add_argument("--steps-only", action="store_true", help="print only the per-step table (old against new)")
    ap.add_argument("--step-batch-sizes", type=int, nargs="+", default=None,
                    help="batch sizes of the per-step table (default: 1 16 64 with --tiny, 4 otherwise)")
    ap.add_argument("--step-tokens", type=int, nargs=2, default=None, metavar=("SHORT", "LONG"),
                    help="the two run lengths whose difference times a step (default: 16 80 tiny, 8 24 otherwise)")
    ap.add_argument("--repeats", type=int, default=1, help="per-step table: best of this many timings")
    ap.add_argument("--compiled", action="store_true",
                    help="per-step table: also Decoder(compile=True) (torch.compile; compiling takes minutes)")
    ap.add_argument("--draft-tokens", type=int, nargs="*", default=[2, 4, 8],
                    help="speculative RSD draft lengths k to measure (none: skip the speculative table)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher, student, bridge, prompt = load(args)
    load_peak = _peak_rss(reset=True)  # loading maps the cached fp32 safetensors; decoding is measured apart
    dev = next(teacher.parameters()).device
    print(f"device={dev} dtype={next(teacher.parameters()).dtype} threads={torch.get_num_threads()} "
          f"prompt={len(prompt)} tokens, new={args.new_tokens}, threshold={args.threshold}")
    step_sizes = args.step_batch_sizes or ([1, 16, 64] if args.tiny else [4])
    step_tokens = tuple(args.step_tokens or ((16, 80) if args.tiny else (8, 24)))
    label = "tiny 6x256 / 3x128" if args.tiny else "embedded pair"
    table = step_table(label, teacher, student, bridge, prompt, step_sizes, step_tokens, args.threshold, args.repeats,
                       args.compiled)
    if args.tiny:
        table += step_table("micro 2x32 / 2x32", *micro_models(), step_sizes, step_tokens, args.threshold,
                            args.repeats, args.compiled)
    print(f"\nper-step time, lockstep RSD, old = commit {BASELINE}; steps {step_tokens[0]} and {step_tokens[1]}")
    print_step_table(table)
    if args.steps_only:
        return
    # warm-up (allocator, kernels)
    tokens_per_second(teacher, student, bridge, prompt, "rsd", 1, 4, args.threshold)
    rows, spec_rows = [], []
    for b in args.batch_sizes:
        tps = {}
        for mode in ("teacher", "student", "rsd"):
            tps[mode], fb, _ = tokens_per_second(teacher, student, bridge, prompt, mode, b, args.new_tokens,
                                                 args.threshold)
            if mode == "rsd":
                fallback = fb
        limit = 1 / (1 + tps["teacher"] / tps["student"])  # student step / teacher step = tps_t / tps_s
        ratio = tps["rsd"] / tps["teacher"]
        rows.append((b, tps["teacher"], tps["student"], tps["rsd"], ratio, limit, ratio / limit, fallback))
        for k in args.draft_tokens:
            spec, fb, acc = tokens_per_second(teacher, student, bridge, prompt, "rsd", b, args.new_tokens,
                                              args.threshold, draft_tokens=k)
            spec_rows.append((b, k, tps["teacher"], tps["rsd"], spec, spec / tps["teacher"], acc, fb))
    print()
    print("| batch | teacher tok/s | student tok/s | rsd tok/s | rsd/teacher | lockstep limit | % of limit "
          "| rsd fallback |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for b, t, s, r, ratio, limit, frac, fb in rows:
        print(f"| {b} | {t:.2f} | {s:.2f} | {r:.2f} | {ratio:.3f} | {limit:.3f} | {100 * frac:.0f}% "
              f"| {100 * fb:.1f}% |")
    if spec_rows:
        print()
        print("| batch | k | teacher tok/s | lockstep rsd tok/s | speculative rsd tok/s | speculative/teacher "
              "| acceptance | fallback |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for b, k, t, r, sp, ratio, acc, fb in spec_rows:
            print(f"| {b} | {k} | {t:.2f} | {r:.2f} | {sp:.2f} | {ratio:.2f}x | {100 * acc:.0f}% | {100 * fb:.1f}% |")
    if len(rows) > 1:
        print(f"\nrsd throughput, batch {rows[-1][0]} / batch {rows[0][0]}: {rows[-1][3] / rows[0][3]:.2f}x")
    print(f"peak resident memory while loading both models: {load_peak:.2f} GiB "
          "(includes page-cache pages of the memory-mapped safetensors files)")
    print(f"peak resident memory while decoding (both models loaded): {_peak_rss():.2f} GiB")
    if torch.cuda.is_available():
        print(f"peak CUDA memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
