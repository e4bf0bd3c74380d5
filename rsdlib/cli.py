"""The `rsdlib` command line.

- `rsdlib prepare`: fetch, verify, convert and cache the embedded model pair (see `rsdlib.embedded`)
  so later runs work offline; prints the cache paths and timings. An existing cache is re-hashed
  against the checksums recorded when it was written; `--force` rebuilds it from the GGUF.
- `rsdlib demo`: a short RSD demo on the embedded pair: a few easy MATH500 problems, a few samples
  each, with each answer, its fallback rate and its share of sub-1% tokens, beside plain teacher
  sampling of the same problems.
- `rsdlib reproduce --profile demo`: run a profile's notebooks with papermill (`rsdlib.reproduce`).
- `rsdlib regrade results/demo/eval`: re-grade stored evaluations with the current answer reading
  (`rsdlib.evaluate.regrade`) and print which scores moved.
- `rsdlib preflight --profile paper`: before the first GPU-hour, check that every hub model and dataset
  the profile names is reachable (gated ones too), the disk has room for the weights, and the CUDA
  driver suits the torch build (`rsdlib.preflight`); one line and exit status 1 at the first failure.
- `rsdlib quickcheck`: minutes on the paper-dry profile (stand-ins, CPU) through every trace path the
  paper run takes, printing what to look at (`rsdlib.quickcheck`).

Subcommands are argparse subparsers; add one by writing `add_<name>(subparsers)` and calling it in
`build_parser`. Known failures (model not found, checksum mismatch, download error) end with one
message on stderr and exit status 1, not a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time


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
        folder = embedded.prepare(spec, force=args.force, verify="full")
        elapsed = time.perf_counter() - start
        weights = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
        gguf = embedded.gguf_path(spec)
        print(f"{role}: {spec.name}")
        print(f"  safetensors: {folder} ({_gib(weights)}, float32)")
        checked = f" ({_gib(gguf.stat().st_size)}, sha256 checked at assembly)" if gguf.exists() else ""
        print(f"  gguf:        {gguf}{checked}")
        print(f"  {'already cached, every file re-hashed' if was_cached else 'fetched + verified + converted'} "
              f"in {elapsed:.1f} s")
        if args.check:
            start = time.perf_counter()
            model, tokenizer = models.load_model(folder, dtype="float32", device="cpu")
            print(f"  cached load: {time.perf_counter() - start:.1f} s; logit rows {models.logit_rows(model):,}, "
                  f"tokenizer length {len(tokenizer):,}, "
                  f"chat template {'present' if tokenizer.chat_template else 'MISSING'}")
            del model
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """A short RSD demo on the embedded pair: a few easy MATH500 problems, a few samples each.

    Prints each sample's answer and grade, its fallback rate (tokens sampled by the student because
    the teacher's proposal was below the threshold) and the share of its tokens below 1% raw student
    probability, then the same sub-1% share for plain teacher sampling of the same problems.
    """
    from rsdlib import data, grading, models, prompts
    from rsdlib.decoding import Decoder, DecodingConfig

    start = time.perf_counter()
    pair = models.load_demo_pair(dtype=args.dtype, device=args.device)
    print(f"loaded {pair.name} in {time.perf_counter() - start:.1f} s "
          f"(dtype {pair.teacher.dtype}, device {pair.teacher.device}, bridge identity: {pair.bridge.is_identity})")
    tok = pair.student_tokenizer
    problems = data.easiest(data.load_benchmark("math500"), args.problems)
    style = prompts.PromptStyle.named("user-instruction", extra_instruction=prompts.WORDS_ONLY)
    prompt_ids = [prompts.prompt_ids(tok, p, style) for p in problems for _ in range(args.samples)]
    seeds = [args.seed + i for i in range(len(prompt_ids))]
    summary = {}
    for mode in ("rsd", "teacher"):
        cfg = DecodingConfig(mode=mode, temperature=args.temperature, threshold=args.threshold,
                             max_new_tokens=args.max_new_tokens, stop_ids=prompts.end_of_turn_ids(tok),
                             record_both=(mode == "teacher"))
        print(f"\n=== {mode}: {len(problems)} problems x {args.samples} samples, T={cfg.temperature}, "
              f"threshold {cfg.threshold:g}, up to {cfg.max_new_tokens} new tokens ===")
        start = time.perf_counter()
        traces = Decoder(pair.teacher, pair.student, pair.bridge, cfg).generate(
            prompt_ids, seeds, batch_size=args.batch_size, progress=mode)
        seconds = time.perf_counter() - start
        n_tokens = sum(len(t.token_ids) for t in traces)
        sub = sum(p < 0.01 for t in traces for p in t.student_prob_raw)
        fb = sum(sum(t.fallback) for t in traces)
        summary[mode] = (n_tokens, sub, fb, seconds)
        for i, trace in enumerate(traces):
            problem = problems[i // args.samples]
            text = tok.decode(trace.token_ids, skip_special_tokens=True)
            graded = grading.grade(text, problem, delim=style.think_close)
            if mode == "rsd" or args.verbose:
                print(f"\n--- problem {problem.id} (gold {problem.gold}), sample {i % args.samples}, seed {trace.seed}")
                print(text.strip()[-args.show_chars:] if args.show_chars else "")
            print(f"    [{mode}] answer {graded['answer']!r} -> {graded['status']}; {len(trace.token_ids)} tokens "
                  f"({trace.finish_reason}); fallback {trace.fallback_rate:.1%}; "
                  f"sub-1% tokens {trace.sub_threshold_ratio():.1%}")
    print("\n=== summary (all samples) ===")
    for mode, (n_tokens, sub, fb, seconds) in summary.items():
        fallback = f"{fb / max(n_tokens, 1):.1%}" if mode == "rsd" else "n/a"
        print(f"{mode:>8}: {n_tokens} tokens in {seconds:.0f} s ({n_tokens / seconds:.2f} tokens/s); "
              f"fallback {fallback}; sub-1% tokens {sub / max(n_tokens, 1):.2%}")
    return 0


def add_prepare(subparsers) -> None:
    p = subparsers.add_parser("prepare", help="fetch, verify, convert and cache the embedded model pair")
    p.add_argument("--only", choices=["teacher", "student"], help="prepare only one of the two models")
    p.add_argument("--force", action="store_true", help="rebuild the safetensors cache from the GGUF even if present "
                   "(the fix for a damaged cache)")
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the timed load from the cache")
    p.set_defaults(func=run_prepare)


def add_demo(subparsers) -> None:
    p = subparsers.add_parser("demo", help="a short RSD demo on the embedded pair (RSD vs teacher sampling)")
    p.add_argument("--problems", type=int, default=3, help="how many of the easiest MATH500 problems")
    p.add_argument("--samples", type=int, default=2, help="samples per problem")
    p.add_argument("--max-new-tokens", type=int, default=160, help="generation budget per sample")
    p.add_argument("--threshold", type=float, default=0.01, help="RSD acceptance threshold p_th")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (paper: 0.7)")
    p.add_argument("--batch-size", type=int, default=8, help="decoder rows at once")
    p.add_argument("--seed", type=int, default=0, help="first seed (one per sample)")
    p.add_argument("--show-chars", type=int, default=400, help="print the last N characters of each RSD answer")
    p.add_argument("--verbose", action="store_true", help="also print the teacher-mode answers")
    p.add_argument("--dtype", default="auto",
                   help="auto (bf16 on GPUs and bf16-capable CPUs, else fp16 / fp32), float32, bfloat16, float16")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.set_defaults(func=run_demo)


def run_regrade(args: argparse.Namespace) -> int:
    from rsdlib.evaluate import run_regrade as run

    return run(args)


def add_regrade(subparsers) -> None:
    from rsdlib.grading import ANSWER_FORMATS, ANSWER_FROM

    p = subparsers.add_parser("regrade", help="re-grade stored evaluation folders (no model needed) and "
                                              "print which scores moved")
    p.add_argument("folder", help="an evaluation folder (config.json + <benchmark>/samples.jsonl) or a folder "
                                  "of them, e.g. results/demo/eval")
    p.add_argument("--answer-format", choices=ANSWER_FORMATS, default=None, help="default: the stored config's")
    p.add_argument("--answer-from", choices=ANSWER_FROM, default=None, help="default: the stored config's")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds per math-verify item (default: the stored config's)")
    p.set_defaults(func=run_regrade)


def run_preflight(args: argparse.Namespace) -> int:
    from rsdlib.preflight import PreflightError, preflight

    try:
        preflight(args.profile, cuda=args.cuda)
    except PreflightError as err:
        print(err, file=sys.stderr)
        return 1
    return 0


def add_preflight(subparsers) -> None:
    p = subparsers.add_parser("preflight", help="check hub access (gated too), disk space and the CUDA driver "
                                                "before a long run")
    p.add_argument("--profile", default="paper", help="the profile whose parameter files name the models (paper)")
    p.add_argument("--no-cuda", dest="cuda", action="store_false", help="skip the CUDA driver / torch check")
    p.set_defaults(func=run_preflight)


def run_quickcheck(args: argparse.Namespace) -> int:
    from rsdlib.quickcheck import quickcheck

    return quickcheck(args.out, profile=args.profile, problems=args.problems, samples=args.samples,
                      max_new_tokens=args.max_new_tokens)


def add_quickcheck(subparsers) -> None:
    p = subparsers.add_parser("quickcheck", help="minutes on the paper-dry stand-ins through every trace path, "
                                                 "printing what to look at")
    p.add_argument("--out", default=None, help="results folder (default: a temporary folder)")
    p.add_argument("--profile", default="paper-dry", help="paper-dry (stand-ins, CPU, minutes) or paper (one GPU)")
    p.add_argument("--problems", type=int, default=6, help="s1K problems (the first ones; some have no trusted gold)")
    p.add_argument("--samples", type=int, default=None, help="samples per problem (default: the profile's)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="generation budget (default: the profile's)")
    p.set_defaults(func=run_quickcheck)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsdlib", description="Reverse Speculative Decoding (arXiv 2509.22230)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); on a machine shared with other "
                             "busy processes, 1 thread can decode several times faster")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_prepare(subparsers)
    add_demo(subparsers)
    from rsdlib.reproduce import add_reproduce_parser

    add_reproduce_parser(subparsers)
    add_regrade(subparsers)
    add_preflight(subparsers)
    add_quickcheck(subparsers)
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
