"""Teacher-forced scoring throughput: what scoring all 1,000 s1K solutions costs (Table 2, Figures 3, 6).

Notebook 20 scores the s1K worked solutions under the student with ``rsdlib.metrics.score_traces``
(one forward per batch, no generation). This script times exactly that call on ``--solutions`` of
them (evenly spaced, prompted as notebook 10's defaults prompt, ``rsdlib.analysis.s1k_rows``), counts
the tokens of all 1,000 (tokenizing only) and projects the time of scoring all of them at the
measured rate. The demo scores 16 (``s1k_solutions`` of notebook 20); this is the measurement
behind that choice.

    python benchmarks/bench_scoring.py                       # embedded 0.5B student, 16 solutions, batch 4 8
    python benchmarks/bench_scoring.py --solutions 32 --batch-sizes 8
    python benchmarks/bench_scoring.py --tiny                # tiny random model (a smoke run)

On a shared CPU the numbers depend on what else runs: the script prints the load average before
and after.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from bench_eval import add_model_arguments, load  # this folder's evaluation benchmark: the same model loading

from rsdlib.analysis import s1k_rows
from rsdlib.metrics import score_traces
from rsdlib.reproduce import notebook_parameters


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(ap)
    ap.add_argument("--solutions", type=int, default=16, help="s1K solutions to time (evenly spaced)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8])
    args = ap.parse_args(argv)
    model, tok, source = load(args)
    prompt = notebook_parameters("10_generate_traces")["prompt"].default  # the demo's prompt style and shot
    every = s1k_rows(tok, prompt, 1000)
    all_tokens = sum(len(r["prompt_ids"]) + len(r["token_ids"]) for r in every)
    rows = s1k_rows(tok, prompt, args.solutions)
    tokens = sum(len(r["prompt_ids"]) + len(r["token_ids"]) for r in rows)
    param = next(model.parameters())
    print(f"model={source} device={param.device} dtype={param.dtype} torch threads={torch.get_num_threads()}; "
          f"{len(rows)} solutions, {tokens:,} prompt+solution tokens; all {len(every):,}: {all_tokens:,} tokens; "
          f"load average before: {os.getloadavg()[0]:.2f}")
    score_traces(model, [rows[0]["prompt_ids"]], [rows[0]["token_ids"][:8]], batch_size=1)  # warm-up

    results = []
    for b in args.batch_sizes:
        start = time.perf_counter()
        score_traces(model, [r["prompt_ids"] for r in rows], [r["token_ids"] for r in rows], batch_size=b)
        seconds = time.perf_counter() - start
        results.append((b, seconds))
        print(f"  batch {b}: {seconds:.1f} s", flush=True)

    print()
    print(f"| batch | solutions | tokens | seconds | ms per token | all {len(every):,} solutions (projected) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for b, seconds in results:
        per_token = seconds / tokens
        print(f"| {b} | {len(rows)} | {tokens:,} | {seconds:.1f} | {1000 * per_token:.1f} "
              f"| {per_token * all_tokens / 3600:.2f} h |")
    print(f"\nload average after: {os.getloadavg()[0]:.2f} (CPU shared with other jobs inflates the times)")


if __name__ == "__main__":
    main()
