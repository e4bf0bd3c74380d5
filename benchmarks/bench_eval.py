"""Evaluation throughput: generated tokens/s of the evaluation backends on one model, per batch size.

The generation function is exactly the one ``rsdlib.evaluate`` uses (``hf_backend``: rsdlib's
batched, KV-cached Decoder in single-model mode; ``vllm_backend`` where vLLM is installed). Every
row gets the same prompt (the paper's prompt around a made-up MATH-style question) and the same
length: no stop ids, so each row generates exactly ``--new-tokens`` tokens. Time includes the
prefill of the batch, as in an evaluation run.

    python benchmarks/bench_eval.py                               # embedded 0.5B student, batch 1 8 32
    python benchmarks/bench_eval.py --model /path/to/folder       # any model rsdlib.evaluate loads
    python benchmarks/bench_eval.py --backends hf vllm            # on a GPU with vLLM installed
    python benchmarks/bench_eval.py --tiny                        # tiny random model (a smoke run)

On a shared CPU the numbers depend on what else runs: the script prints the load average before
and after.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch

from rsdlib.data import Problem
from rsdlib.evaluate import EvalConfig, _vllm_source, hf_backend, vllm_backend
from rsdlib.prompts import PromptStyle, prompt_ids

QUESTION = "A rectangle has a perimeter of 30 and its length is twice its width. What is its area?"


def load(args):
    """(model or None, tokenizer, model source string), with torch's threads set from ``--threads`` first."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tiny:
        from rsdlib.standins import tiny_model, tiny_tokenizer

        tok = tiny_tokenizer()
        return tiny_model(tok, layers=4, hidden=128), tok, "tiny"
    from rsdlib.evaluate import load_eval_model

    source = args.model or "embedded:student"
    model, tok = load_eval_model(source, dtype=args.dtype, device=args.device)
    return model, tok, source


def add_model_arguments(ap: argparse.ArgumentParser) -> None:
    """The model arguments ``load`` reads (shared with bench_scoring.py)."""
    ap.add_argument("--model", default=None, help="model folder / hub id / embedded:student (default)")
    ap.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--tiny", action="store_true", help="tiny random model instead of the embedded student")


def run_once(generate, prompt, batch, new_tokens):
    """Generated tokens and seconds for ``batch`` copies of ``prompt``."""
    lengths = []
    start = time.perf_counter()
    generate([prompt] * batch, list(range(batch)), new_tokens, lambda i, ids, finish: lengths.append(len(ids)))
    return sum(lengths), time.perf_counter() - start


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(ap)
    ap.add_argument("--backends", nargs="+", default=["hf"], choices=["hf", "vllm"])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--new-tokens", type=int, default=32)
    args = ap.parse_args(argv)
    model, tok, source = load(args)
    problem = Problem(id="bench", question=QUESTION, gold="50", kind="integer", source="bench")
    prompt = prompt_ids(tok, problem, PromptStyle())
    param = next(model.parameters())
    print(f"model={source} device={param.device} dtype={param.dtype} torch threads={torch.get_num_threads()} "
          f"prompt={len(prompt)} tokens, new={args.new_tokens}, load average before: {os.getloadavg()[0]:.2f}")

    results = []
    for backend in args.backends:
        cfg = EvalConfig(backend=backend, temperature=0.7, top_p=0.95, batch_size=max(args.batch_sizes),
                         dtype=args.dtype)
        if backend == "hf":
            generate = hf_backend(model, tok, cfg, stop_ids=())
        else:
            import tempfile
            from pathlib import Path

            generate = vllm_backend(_vllm_source(source, Path(tempfile.mkdtemp()), cfg), cfg, (), progress=False)
        run_once(generate, prompt, 1, 4)  # warm-up (allocator, kernels)
        for b in args.batch_sizes:
            cfg.batch_size = b
            tokens, seconds = run_once(generate, prompt, b, args.new_tokens)
            results.append((backend, b, tokens, seconds))
            print(f"  {backend} batch {b}: {tokens} tokens in {seconds:.1f} s", flush=True)

    print()
    print("| backend | batch | generated tokens | seconds | tokens/s | ms per decoding step |")
    print("|---|---:|---:|---:|---:|---:|")
    for backend, b, tokens, seconds in results:
        print(f"| {backend} | {b} | {tokens} | {seconds:.1f} | {tokens / seconds:.1f} "
              f"| {1000 * seconds / args.new_tokens:.0f} |")
    print(f"\nload average after: {os.getloadavg()[0]:.2f} (CPU shared with other jobs inflates the times)")
    print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    if torch.cuda.is_available():
        print(f"peak CUDA memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
