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
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from rsdlib.decoding import Decoder, DecodingConfig

PROMPT = (
    "Solve step by step, in words: a rectangle has a perimeter of 30 and its length is twice its "
    "width. What is its area? Put the final answer in \\boxed{}."
)


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
