"""The quick check: every trace path of a profile's notebook 10 in minutes, and what to look at (issue 30).

``rsdlib quickcheck`` (default: the paper-dry profile, stand-in models on CPU) runs notebook 10's stage
(``rsdlib.stages.run_trace_stage``) in a scratch results folder with the profile's own settings except:
the first ``problems`` problems (s1K's first six hold two without a trusted gold, so the ungradable path
runs), one method per decoding mode (teacher, self-distill, SKD, the first RSD threshold) plus the
compute-equivalent self-distill capped to one attempt more than the others (the same path as its 203),
and every extra pair. ``--profile paper`` does the same on the real models (one GPU; ``samples`` and
``max_new_tokens`` cap the cost). Then, per run, it prints and checks:

- composition: ``F full + P prefix = N`` with N the number of problems (prefix scope "all"), U of them
  ungradable (no trusted gold, ``rsdlib.grading.gold_trust``);
- kept traces: each closes its thinking exactly once with the student's delimiter (how many had s1's
  native ``<|im_start|>answer`` mapped to it) and ends with the turn-end token; prefixes carry no
  end-of-turn token and at most ``prefix_tokens`` tokens;
- grading agrees: the stored grade (the trace filter's boxed reading) against rsdlib's standard reading
  (math-verify's extraction) of the same samples, with the first disagreements shown.

Exit status 0 when every hard check holds (composition, delimiters, prefixes, at least one kept trace
for the teacher), 1 otherwise.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path


def quick_params(profile: str = "paper-dry", problems: int = 6, samples: int | None = None,
                 max_new_tokens: int | None = None) -> dict:
    """Notebook 10's parameters of ``profile``, cut down to one method per path (see the module docstring)."""
    from rsdlib.reproduce import resolved_params

    params = resolved_params(profile, "10_generate_traces")
    params["n_problems"] = problems
    params["workers"] = 1
    params["force"] = True
    if samples is not None:
        params["job"] = {**params["job"], "samples_per_problem": samples}
    if max_new_tokens is not None:
        params["decoding"] = {**params["decoding"], "max_new_tokens": max_new_tokens}
    per_problem = params["job"].get("samples_per_problem", 16)
    chosen: dict[str, dict] = {}
    seen_modes = set()
    in_pairs = {m for extra in params["extra_pairs"].values() for m in extra["methods"]}
    # one method per mode: the one the extra pairs use first (RSD at 1% in the paper), then the first listed
    order = sorted(params["methods"], key=lambda m: (m != "teacher", m not in in_pairs))
    for name in order:
        spec = params["methods"][name]
        mode = spec.get("mode")
        if name == "teacher" or mode not in seen_modes:
            chosen[name] = dict(spec)
            seen_modes.add(mode)
        elif spec.get("samples_per_problem", per_problem) > per_problem:  # the compute-equivalent run
            chosen[name] = {**spec, "samples_per_problem": per_problem + 1}
    params["methods"] = chosen
    params["extra_pairs"] = {run: {**extra, "methods": [m for m in extra["methods"] if m in chosen]}
                             for run, extra in params["extra_pairs"].items()
                             if any(m in chosen for m in extra["methods"])}
    return params


def _check_run(folder: Path, tok, problems: dict, echo) -> list[str]:
    """Print what to look at in one trace folder; return the failed hard checks."""
    import json

    from rsdlib import store
    from rsdlib.grading import grade_many
    from rsdlib.prompts import end_of_turn_ids, turn_end_id
    from rsdlib.traces import trace_run_stats

    failures, n_problems = [], len(problems)
    config = json.loads((folder / "config.json").read_text())
    job = config["config"]
    stats = trace_run_stats(folder)
    name = f"{folder.parent.name}/{folder.name}"
    line = (f"{name}: {stats['solved']} full + {stats['prefix_examples']} prefix = {stats['training_examples']} "
            f"(problems {n_problems}, {stats['ungradable_problems']} ungradable); solved "
            f"{stats['solved']}/{stats['problems']}; keep {stats['keep']}")
    if job.get("prefix_scope") == "all" and job.get("prefix_tokens") and stats["training_examples"] != n_problems:
        failures.append(f"{name}: {stats['training_examples']} examples for {n_problems} problems")
    echo(line)
    samples = store.unique_samples(store.read_jsonl_resumable(folder / "samples.jsonl"))
    attempted = [s for s in samples if not s.get("prefix_only")]
    dataset = store.read_jsonl_resumable(folder / "dataset.jsonl")
    close = job["prompt"]["think_close"]
    close_ids = list(tok(close, add_special_tokens=False)["input_ids"])
    turn_end, stops = turn_end_id(tok), set(end_of_turn_ids(tok))
    by_key = {(s["problem_id"], s["sample_index"]): s for s in attempted}
    mapped = sum(bool(s.get("think_close_mapped_from")) for s in attempted)
    for e in dataset:
        ids = e["completion_ids"]
        if e["kind"] == "full":
            closes = sum(ids[i:i + len(close_ids)] == close_ids for i in range(len(ids)))
            if closes != 1 or ids[-1] != turn_end:
                failures.append(f"{name}: kept trace {e['id']} closes its thinking {closes} times, "
                                f"ends with id {ids[-1]} (turn end {turn_end})")
        elif set(ids) & stops or len(ids) > job["prefix_tokens"]:
            failures.append(f"{name}: prefix {e['id']} has {len(ids)} tokens or an end-of-turn token")
    statuses = {k: sum(s["status"] == k for s in attempted) for k in ("correct", "wrong", "no_answer")}
    echo(f"    samples {len(attempted)} ({statuses}); closed thinking once: "
         f"{sum(s['think_closes'] == 1 for s in attempted)}; ended their turn: "
         f"{sum(bool(s['ended_turn']) for s in attempted)}; native end of thinking mapped to {close!r}: {mapped}")
    if attempted:
        items = [(s["text"], problems[s["problem_id"]].gold, problems[s["problem_id"]].kind) for s in attempted]
        # a generous limit: a check on a loaded machine must not report a slow sympy as a disagreement
        standard = grade_many(items, timeout=max(job.get("grade_timeout") or 10.0, 60.0), delim=close,
                              answer_format="standard")
        timed_out = sum(bool(g.get("timed_out")) for g in standard)
        differ = [(s, g) for s, g in zip(attempted, standard)
                  if not g.get("timed_out") and (s["status"] == "correct") != (g["status"] == "correct")]
        echo(f"    grading: the filter's {job.get('answer_format', 'boxed')} reading and the standard reading agree "
             f"on {len(attempted) - len(differ) - timed_out}/{len(attempted)} samples"
             + (f" ({timed_out} timed out)" if timed_out else ""))
        for s, g in differ[:3]:
            echo(f"      look at {s['problem_id']}#{s['sample_index']}: filter {s['status']} ({s['answer']!r}), "
                 f"standard {g['status']} ({g['answer']!r}), gold {problems[s['problem_id']].gold!r}")
    kept = [by_key.get((e["problem_id"], e["sample_index"])) for e in dataset if e["kind"] == "full"]
    if kept and kept[0]:
        echo(f"    a kept trace ({kept[0]['problem_id']}): ...{kept[0]['text'][-160:]!r}")
    return failures


def quickcheck(out: str | Path | None = None, *, profile: str = "paper-dry", problems: int = 6,
               samples: int | None = None, max_new_tokens: int | None = None, echo=print) -> int:
    """Run the cut-down notebook 10 stage of ``profile`` under ``out`` (default: a temporary folder) and print
    the checks; 0 when every hard check holds, 1 otherwise."""
    from rsdlib import paths
    from rsdlib.launch import student_tokenizer
    from rsdlib.stages import run_trace_stage
    from rsdlib.traces import trace_problems

    out = Path(out) if out else Path(tempfile.mkdtemp(prefix="rsdlib-quickcheck-"))
    previous = os.environ.get("RSDLIB_RESULTS")
    os.environ["RSDLIB_RESULTS"] = str(out)  # a scratch results folder: the real runs are never touched
    try:
        params = quick_params(profile, problems, samples, max_new_tokens)
        started = time.perf_counter()
        echo(f"quick check of {profile}: {problems} problems, methods {', '.join(params['methods'])}, extra pairs "
             f"{', '.join(params['extra_pairs']) or 'none'}; results under {out}")
        summaries = run_trace_stage(params)
        problems_by_id = {p.id: p for p in trace_problems(params)}
        echo(f"\n=== what to look at ({time.perf_counter() - started:.0f} s of generation) ===")
        failures = []
        root = paths.results_dir(params["profile"]) / "traces"
        for run, methods in summaries.items():
            tok = student_tokenizer((params if run == "main" else params["extra_pairs"][run])["student"])
            for method in methods:
                if method != "reference":
                    failures += _check_run(root / run / method, tok, problems_by_id, echo)
        teacher = summaries["main"]["teacher"]
        if not teacher["solved"]:
            failures.append("main/teacher: no kept trace")
        ref = summaries["main"].get("reference")
        if ref:
            echo(f"main/reference: {ref['solved']} pre-existing traces (Figure 7's left prompt)")
        for f in failures:
            echo(f"FAILED: {f}")
        echo(f"quick check {'ok' if not failures else 'FAILED'} in {time.perf_counter() - started:.0f} s")
        return 0 if not failures else 1
    finally:
        if previous is None:
            os.environ.pop("RSDLIB_RESULTS", None)
        else:
            os.environ["RSDLIB_RESULTS"] = previous
