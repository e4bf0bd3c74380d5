"""Notebook 20's stage: every trace scored under its student (Section 3.2; Table 2's last column, Figures 2-7).

``run_analysis(params)`` scores each method's training traces (the kept, correct ones; a method that
kept none gets up to ``unkept_samples`` of its samples, marked ``kept: false``), teacher-forced, one
forward per batch (``rsdlib.metrics.score_traces``), and with ``s1k_solutions`` > 0 also N s1K worked
solutions under the main pair's student (method ``s1k-solutions``). It writes, under
``results/<profile>/analysis/``: ``scores.jsonl`` (per trace: per-token log-probabilities, entropies and
token texts), ``low_tokens.json`` (counts of sub-threshold tokens, for the word cloud), ``summary.json``
(per pair and method: the Table 2 / Table 6 row and perplexity statistics) and ``config.json`` (what was
scored: a rerun on the same traces skips the scoring unless ``force``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from pathlib import Path

from rsdlib import paths
from rsdlib.store import read_json, read_jsonl_resumable, write_json_atomic
from rsdlib.traces import trace_run_stats

S1K_METHOD = "s1k-solutions"


def check_analysis_params(params: dict) -> None:
    if not 0 < params["threshold"] < 1:
        raise ValueError(f"threshold must be in (0, 1), got {params['threshold']}")
    if params["batch_size"] < 1 or params["unkept_samples"] < 0 or params["s1k_solutions"] < 0:
        raise ValueError("batch_size must be >= 1, unkept_samples and s1k_solutions >= 0")


def fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    for name in ("dataset.jsonl", "samples.jsonl"):  # summary.json holds wall times: not a content change
        path = folder / name
        h.update(name.encode() + (path.read_bytes() if path.is_file() else b"-"))
    return h.hexdigest()[:16]


def traces_to_score(folder: Path, unkept_samples: int) -> list[dict]:
    """Kept (full) traces of a method, else up to ``unkept_samples`` samples (one per problem first)."""
    samples = {(s["problem_id"], s["sample_index"]): s for s in read_jsonl_resumable(folder / "samples.jsonl")}
    dataset = read_jsonl_resumable(folder / "dataset.jsonl")
    rows = []
    for ex in dataset:
        if ex["kind"] == "full":
            s = samples.get((ex["problem_id"], ex["sample_index"]), {})
            rows.append({"problem_id": ex["problem_id"], "sample_index": ex["sample_index"], "kept": True,
                         "prompt_ids": ex["prompt_ids"], "token_ids": ex["completion_ids"],
                         "fallback": s.get("fallback"), "source": s.get("source")})
    if rows or not unkept_samples:
        return rows
    ordered = sorted(samples.values(), key=lambda s: (s["sample_index"], s["problem_id"]))
    for s in ordered[:unkept_samples]:
        rows.append({"problem_id": s["problem_id"], "sample_index": s["sample_index"], "kept": False,
                     "prompt_ids": s["prompt_ids"], "token_ids": s["token_ids"],
                     "fallback": s.get("fallback"), "source": s.get("source")})
    return rows


def s1k_rows(tok, prompt: dict, n: int) -> list[dict]:
    """``n`` s1K worked solutions, evenly spaced over the set, as kept traces prompted as the traces were."""
    from rsdlib.data import load_benchmark
    from rsdlib.prompts import encode_parts, end_of_turn_ids, prompt_ids, prompt_style, worked_solution_parts

    style, eot = prompt_style(prompt), end_of_turn_ids(tok)[0]
    every = load_benchmark("s1k")
    picked = sorted({i * len(every) // n for i in range(min(n, len(every)))})
    rows = []
    for p in (every[i] for i in picked):
        parts = worked_solution_parts(p.meta.get("solution", ""), p.gold, style.think_close)  # data: never control
        rows.append({"problem_id": p.id, "sample_index": 0, "kept": True, "prompt_ids": prompt_ids(tok, p, style),
                     "token_ids": encode_parts(tok, parts) + [eot],
                     "fallback": None, "source": None})
    return rows


def _methods(manifest: dict, run: str, methods: list[str], s1k_solutions: int) -> list[str]:
    return [*methods, *([S1K_METHOD] if run == "main" and s1k_solutions else [])]


def score_all(params: dict, manifest: dict, trace_root: Path, out_dir: Path) -> None:
    """Score every run's methods under its student: ``scores.jsonl`` and ``low_tokens.json``."""
    from rsdlib.metrics import score_traces
    from rsdlib.models import load_student

    threshold = params["threshold"]
    scored_rows, low_tokens = [], {}
    for run, methods in manifest["methods"].items():
        model, tok = load_student(manifest["pairs"][run]["student"], dtype=params["dtype"], device=params["device"])
        for method in _methods(manifest, run, methods, params["s1k_solutions"]):
            if method == S1K_METHOD:
                rows = s1k_rows(tok, manifest["prompt"], params["s1k_solutions"])
            else:
                rows = [r for r in traces_to_score(trace_root / run / method, params["unkept_samples"])
                        if r["token_ids"]]
            print(f"{run}/{method}: {len(rows)} traces ({sum(r['kept'] for r in rows)} kept)")
            if not rows:
                continue
            scores = score_traces(model, [r["prompt_ids"] for r in rows], [r["token_ids"] for r in rows],
                                  batch_size=params["batch_size"], threshold=threshold, progress=True)
            counter = Counter()
            for r, sc in zip(rows, scores):
                texts = tok.batch_decode([[t] for t in r["token_ids"]], skip_special_tokens=False)
                for text, lp in zip(texts, sc["token_logprobs"]):
                    if lp < math.log(threshold) and r["kept"]:
                        counter[text] += 1
                ent = sc["token_entropy"]
                scored_rows.append({
                    "run": run, "method": method, "problem_id": r["problem_id"], "sample_index": r["sample_index"],
                    "kept": r["kept"], "n_tokens": sc["n_tokens"], "perplexity": sc["perplexity"],
                    "sub_threshold_ratio": sc["sub_threshold_ratio"], "mean_entropy": sum(ent) / len(ent),
                    "token_logprobs": [round(x, 5) for x in sc["token_logprobs"]],
                    "token_entropy": [round(x, 4) for x in ent], "tokens": texts,
                    "fallback": r["fallback"], "source": r["source"],
                })
            low_tokens[f"{run}/{method}"] = dict(counter.most_common())
        del model
    with open(out_dir / "scores.jsonl", "w", encoding="utf-8") as fh:
        for row in scored_rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    write_json_atomic(out_dir / "low_tokens.json", low_tokens, indent=1)


def summarize(params: dict, manifest: dict, trace_root: Path, scores) -> dict:
    """Per pair and method: the Table 2 / Table 6 row and perplexity statistics of the scored traces."""
    threshold = params["threshold"]
    summary = {}
    for run, methods in manifest["methods"].items():
        summary[run] = {}
        for method in _methods(manifest, run, methods, params["s1k_solutions"]):
            mine = scores[(scores["run"] == run) & (scores["method"] == method)] if len(scores) else scores
            if method == S1K_METHOD:  # no trace folder: every solution is a kept pre-existing trace
                n = int(len(mine))
                n_tok = int(mine["n_tokens"].sum()) if n else 0
                trace_summary = {"mode": "reference", "threshold": None, "solved": n, "problems": n,
                                 "fallback_rate": None, "avg_tokens": n_tok / n if n else None,
                                 "avg_sample_tokens": n_tok / n if n else None, "prefix_examples": 0, "samples": n}
            else:
                trace_summary = trace_run_stats(trace_root / run / method)
            kept = mine[mine["kept"]] if len(mine) else mine
            n_tok = int(kept["n_tokens"].sum()) if len(kept) else 0
            lps = kept["token_logprobs"] if len(kept) else []
            n_low = sum(sum(lp < math.log(threshold) for lp in row) for row in lps)
            summary[run][method] = {
                "method": method, "mode": trace_summary.get("mode"), "threshold": trace_summary.get("threshold"),
                "solved": trace_summary["solved"], "problems": trace_summary["problems"],
                "fallback_rate": trace_summary.get("fallback_rate"),
                "sub_threshold_tokens": 100 * n_low / n_tok if n_tok else None,
                "avg_tokens": trace_summary["avg_tokens"], "avg_sample_tokens": trace_summary["avg_sample_tokens"],
                "prefix_examples": trace_summary["prefix_examples"], "samples": trace_summary["samples"],
                "kept_traces": int(len(kept)), "scored_traces": int(len(mine)),
                "perplexity_mean": float(mine["perplexity"].mean()) if len(mine) else None,
                "perplexity_median": float(mine["perplexity"].median()) if len(mine) else None,
                "perplexity_std": float(mine["perplexity"].std()) if len(mine) > 1 else None,
                "mean_entropy": float(mine["mean_entropy"].mean()) if len(mine) else None,
            }
    return summary


def run_analysis(params: dict) -> dict:
    """Notebook 20: score (unless the stored scores match the traces) and summarize; returns the summary."""
    import pandas as pd

    check_analysis_params(params)
    profile = params["profile"]
    results = paths.results_dir(profile)
    trace_root = results / "traces"
    manifest = read_json(paths.input_file(profile, "traces", "manifest.json"))  # notebook 10's
    out_dir = results / "analysis"
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {"threshold": params["threshold"], "unkept_samples": params["unkept_samples"],
              "s1k_solutions": params["s1k_solutions"], "manifest": manifest,
              "inputs": {f"{run}/{m}": fingerprint(trace_root / run / m)
                         for run, ms in manifest["methods"].items() for m in ms}}
    cached = (out_dir / "config.json").is_file() and read_json((out_dir / "config.json")) == config
    print("scores up to date: skipping the scoring" if cached and not params["force"] else "scoring traces")
    if params["force"] or not cached:
        score_all(params, manifest, trace_root, out_dir)
    scores_path = out_dir / "scores.jsonl"
    scores = pd.read_json(scores_path, lines=True) if scores_path.stat().st_size else pd.DataFrame()
    summary = summarize(params, manifest, trace_root, scores)
    summary_doc = {"profile": profile, "threshold": params["threshold"], "pairs": manifest["pairs"], "runs": summary}
    write_json_atomic(out_dir / "summary.json", summary_doc)
    write_json_atomic(out_dir / "config.json", config)
    return summary
