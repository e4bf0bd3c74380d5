"""The `rsdlib` command line.

- `rsdlib prepare`: fetch, verify, convert and cache the embedded model pair (see `rsdlib.embedded`)
  so later runs work offline; prints the cache paths and timings.
- `rsdlib demo`: the main job on the embedded pair. For now each model answers one small math
  problem with the paper's Qwen system prompt (Section 4 / Figure 7) and a step-by-step, \\boxed{}
  instruction; `run_demo` is the function to replace once the RSD decoder drives it.

Subcommands are argparse subparsers; add one by writing `add_<name>(subparsers)` and calling it in
`build_parser`. Known failures (model not found, checksum mismatch, download error) end with one
message on stderr and exit status 1, not a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
DEMO_PROBLEM = "If $2x + 3 = 17$, what is the value of $x$?"
DEMO_INSTRUCTION = (
    "Please reason step by step in words (do not write any code), "
    "and put your final answer within \\boxed{}."
)


def _gib(num_bytes: int) -> str:
    return f"{num_bytes / 2**30:.2f} GiB"


def run_prepare(args: argparse.Namespace) -> int:
    from rsdlib import embedded, models, paths

    roles = [args.only] if args.only else list(embedded.EMBEDDED)
    print(f"cache: {paths.cache_dir()}  (set RSDLIB_CACHE to move it)")
    for role in roles:
        spec = embedded.EMBEDDED[role]
        was_cached = embedded._cache_complete(embedded.model_dir(spec), spec) and not args.force
        start = time.perf_counter()
        folder = embedded.prepare(spec, force=args.force)
        elapsed = time.perf_counter() - start
        weights = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
        gguf = embedded.gguf_path(spec)
        print(f"{role}: {spec.name}")
        print(f"  safetensors: {folder} ({_gib(weights)}, float32)")
        print(f"  gguf:        {gguf}" + (f" ({_gib(gguf.stat().st_size)}, sha256 checked at assembly)" if gguf.exists() else ""))
        print(f"  {'already cached' if was_cached else 'fetched + verified + converted'} in {elapsed:.1f} s")
        if args.check:
            start = time.perf_counter()
            model, tokenizer = models.load_model(folder, dtype="float32", device="cpu")
            print(f"  cached load: {time.perf_counter() - start:.1f} s; logit rows {models.logit_rows(model):,}, "
                  f"tokenizer length {len(tokenizer):,}, chat template {'present' if tokenizer.chat_template else 'MISSING'}")
            del model
    return 0


def _answer(model, tokenizer, problem: str, args: argparse.Namespace) -> tuple[str, int, int, float]:
    """Generate one answer; returns (text, prompt tokens, new tokens, seconds)."""
    import torch

    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"{problem}\n\n{DEMO_INSTRUCTION}"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    enc = tokenizer(text, return_tensors="pt").to(model.device)
    sampling = {"do_sample": True, "temperature": args.temperature, "top_p": args.top_p} if args.sample else {"do_sample": False}
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=args.max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling)
    seconds = time.perf_counter() - start
    new = out[0, enc["input_ids"].shape[1]:]
    return tokenizer.decode(new, skip_special_tokens=True), enc["input_ids"].shape[1], len(new), seconds


def run_demo(args: argparse.Namespace) -> int:
    """Each model of the embedded pair answers one small math problem (placeholder main job)."""
    from rsdlib import models

    start = time.perf_counter()
    pair = models.load_demo_pair(dtype=args.dtype, device=args.device)
    print(f"loaded {pair.name} in {time.perf_counter() - start:.1f} s "
          f"(dtype {pair.teacher.dtype}, device {pair.teacher.device})")
    print(f"problem: {args.problem}\nmode: " + (f"sampled (T={args.temperature}, top_p={args.top_p}, seed {args.seed})" if args.sample else "greedy"))
    for role, model, tokenizer in (("teacher", pair.teacher, pair.teacher_tokenizer),
                                   ("student", pair.student, pair.student_tokenizer)):
        text, n_prompt, n_new, seconds = _answer(model, tokenizer, args.problem, args)
        print(f"\n=== {role}: {Path(model.name_or_path).name} ===\n{text.strip()}")
        print(f"--- {n_new} new tokens (prompt {n_prompt}) in {seconds:.1f} s = {n_new / seconds:.2f} tokens/s")
    return 0


def add_prepare(subparsers) -> None:
    p = subparsers.add_parser("prepare", help="fetch, verify, convert and cache the embedded model pair")
    p.add_argument("--only", choices=["teacher", "student"], help="prepare only one of the two models")
    p.add_argument("--force", action="store_true", help="rebuild the safetensors cache even if present")
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the timed load from the cache")
    p.set_defaults(func=run_prepare)


def add_demo(subparsers) -> None:
    p = subparsers.add_parser("demo", help="the main job on the embedded pair (for now: each model answers a problem)")
    p.add_argument("--problem", default=DEMO_PROBLEM, help="the math problem to answer")
    p.add_argument("--max-new-tokens", type=int, default=384, help="generation budget per model")
    p.add_argument("--sample", action="store_true", help="sample (temperature/top-p) instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (with --sample)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus mass (with --sample)")
    p.add_argument("--seed", type=int, default=0, help="torch seed for sampling")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.set_defaults(func=run_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsdlib", description="Reverse Speculative Decoding (arXiv 2509.22230)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); on a machine shared with other "
                             "busy processes, 1 thread can decode several times faster")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_prepare(subparsers)
    add_demo(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from rsdlib.embedded import ChecksumError, DownloadError
    from rsdlib.models import ModelNotFoundError

    args = build_parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        return args.func(args)
    except (ModelNotFoundError, ChecksumError, DownloadError) as err:
        print(f"rsdlib {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
