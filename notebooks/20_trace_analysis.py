# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 20 · Trace analysis: every trace scored under its student
#
# **Paper:** Section 3.2 (surprisal s_i = -log P_s(y_i | y_<i), entropy, trace perplexity
# exp(mean s_i), the share of sub-1% tokens), the numbers behind Table 2's last column and
# Figures 2, 3, 5-7 and 6.
#
# **Reads:** `results/<profile>/traces/manifest.json` and each method's `dataset.jsonl` /
# `samples.jsonl` (notebook 10).
#
# **Writes:** `results/<profile>/analysis/scores.jsonl` (one row per scored trace: per-token
# log-probabilities, entropies and token texts), `summary.json` (per pair and method: the Table 2 /
# Table 6 row and perplexity statistics), `low_tokens.json` (counts of sub-threshold tokens, for the
# word cloud) and `config.json` (what was scored; a rerun on the same traces skips the scoring).
#
# With `s1k_solutions` > 0 the worked solutions of N s1K problems (shipped with rsdlib; evenly spaced
# over the 1,000, all of them at N = 1000) are scored too, under the main pair's student, as method
# `s1k-solutions`: pre-existing traces the student did not write, toward the paper's scale (its Figure 6
# covers the 1,000 s1K traces). Teacher-forced scoring needs no generation, but all 1,000 are 730,738
# prompt + solution tokens under the 0.5B student, measured at 25 ms of CPU per token on the shared
# 2-core machine (hours for all 1,000), so the demo scores 16 (~14k tokens) to stay within its 45-minute
# budget; on a GPU all 1,000 take minutes. Table 2's pre-existing-traces row and Figures 3 and 6 use it.
#
# The traces scored are each method's training traces (the kept, correct ones). A method that kept
# none (always so with the smoke profile's random models) gets up to `unkept_samples` of its samples
# scored instead, marked `kept: false`, so the figures still have something to show; Table 2 never
# uses them.
#
# **Time:** smoke about 10 s; demo about 1-4 min on CPU (the 16 s1K solutions included); paper (8,000 traces of ~4k tokens under
# Qwen3-0.6B) minutes on one GPU.

# %%
import hashlib
import json
import math
from collections import Counter
from pathlib import Path

import pandas as pd

from rsdlib import paths
from rsdlib.metrics import score_traces
from rsdlib.data import load_benchmark
from rsdlib.prompts import end_of_turn_ids, prompt_ids, worked_solution_completion
from rsdlib.models import load_student
from rsdlib.prompts import prompt_style
from rsdlib.traces import trace_run_stats
from rsdlib.traces import read_jsonl_resumable

# %% tags=["parameters"]
profile: str = "demo"  # results/<profile>
threshold: float = 0.01  # sub-threshold probability under the student (paper: 1%)
batch_size: int = 4  # traces per scoring forward pass
dtype: str = "auto"  # auto (bf16 on GPUs and bf16-capable CPUs, else fp16 / fp32), float32, bfloat16
device: str = "auto"  # auto, cpu, cuda
unkept_samples: int = 4  # a method with no kept trace: score this many of its samples instead; 0 scores none
s1k_solutions: int = 16  # also score N s1K worked solutions (evenly spaced; 1000: all) under the main student (method "s1k-solutions"); 0: none
force: bool = False  # rescore even if the stored scores match the traces

# %%
if not 0 < threshold < 1:
    raise ValueError(f"threshold must be in (0, 1), got {threshold}")
if batch_size < 1 or unkept_samples < 0 or s1k_solutions < 0:
    raise ValueError("batch_size must be >= 1, unkept_samples and s1k_solutions >= 0")
results = paths.results_dir(profile)
trace_root = results / "traces"
manifest = json.loads(paths.input_file(profile, "traces", "manifest.json").read_text())  # notebook 10's
out_dir = results / "analysis"
out_dir.mkdir(parents=True, exist_ok=True)


def fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    for name in ("dataset.jsonl", "samples.jsonl"):  # summary.json holds wall times: not a content change
        path = folder / name
        h.update(name.encode() + (path.read_bytes() if path.is_file() else b"-"))
    return h.hexdigest()[:16]


config = {"threshold": threshold, "unkept_samples": unkept_samples, "s1k_solutions": s1k_solutions, "manifest": manifest,
          "inputs": {f"{run}/{m}": fingerprint(trace_root / run / m)
                     for run, ms in manifest["methods"].items() for m in ms}}
cached = (out_dir / "config.json").is_file() and json.loads((out_dir / "config.json").read_text()) == config
print("scores up to date: skipping the scoring" if cached and not force else "scoring traces")

# %% [markdown]
# ## Score the traces (teacher-forced, one forward per batch)

# %%
def traces_to_score(folder: Path) -> list[dict]:
    """Kept (full) traces of a method, else up to `unkept_samples` samples (one per problem first)."""
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


S1K_METHOD = "s1k-solutions"


def s1k_rows(tok) -> list[dict]:
    """`s1k_solutions` s1K worked solutions, evenly spaced over the set, as kept traces prompted as the traces were."""
    style, eot = prompt_style(manifest["prompt"]), end_of_turn_ids(tok)[0]
    every = load_benchmark("s1k")
    picked = sorted({i * len(every) // s1k_solutions for i in range(min(s1k_solutions, len(every)))})
    rows = []
    for p in (every[i] for i in picked):
        text = worked_solution_completion(p.meta.get("solution", ""), p.gold, style.think_close)
        rows.append({"problem_id": p.id, "sample_index": 0, "kept": True, "prompt_ids": prompt_ids(tok, p, style),
                     "token_ids": list(tok(text, add_special_tokens=False)["input_ids"]) + [eot],
                     "fallback": None, "source": None})
    return rows


if force or not cached:
    scored_rows, low_tokens = [], {}
    for run, methods in manifest["methods"].items():
        student_spec = manifest["pairs"][run]["student"]
        model, tok = load_student(student_spec, dtype=dtype, device=device)
        extra = [S1K_METHOD] if run == "main" and s1k_solutions else []
        for method in [*methods, *extra]:
            if method == S1K_METHOD:
                rows = s1k_rows(tok)
            else:
                rows = [r for r in traces_to_score(trace_root / run / method) if r["token_ids"]]
            print(f"{run}/{method}: {len(rows)} traces ({sum(r['kept'] for r in rows)} kept)")
            if not rows:
                continue
            scores = score_traces(model, [r["prompt_ids"] for r in rows], [r["token_ids"] for r in rows],
                                  batch_size=batch_size, threshold=threshold, progress=True)
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
    (out_dir / "low_tokens.json").write_text(json.dumps(low_tokens, ensure_ascii=False, indent=1))

# %% [markdown]
# ## Per-method summary: Table 2 and Table 6 rows, perplexity statistics

# %%
scores = pd.read_json(out_dir / "scores.jsonl", lines=True) if (out_dir / "scores.jsonl").stat().st_size else pd.DataFrame()
summary = {}
for run, methods in manifest["methods"].items():
    summary[run] = {}
    extra = [S1K_METHOD] if run == "main" and s1k_solutions else []
    for method in [*methods, *extra]:
        if method == S1K_METHOD:  # no trace folder: every solution is a kept pre-existing trace
            n = int(((scores["run"] == run) & (scores["method"] == method)).sum()) if len(scores) else 0
            n_tok = int(scores.loc[(scores["run"] == run) & (scores["method"] == method), "n_tokens"].sum()) if n else 0
            trace_summary = {"mode": "reference", "threshold": None, "solved": n, "problems": n, "fallback_rate": None,
                             "avg_tokens": n_tok / n if n else None, "avg_sample_tokens": n_tok / n if n else None,
                             "prefix_examples": 0, "samples": n}
        else:
            trace_summary = trace_run_stats(trace_root / run / method)
        mine = scores[(scores["run"] == run) & (scores["method"] == method)] if len(scores) else scores
        kept = mine[mine["kept"]] if len(mine) else mine
        n_tok = int(kept["n_tokens"].sum()) if len(kept) else 0
        n_low = sum(sum(lp < math.log(threshold) for lp in lps) for lps in kept["token_logprobs"]) if len(kept) else 0
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
summary_doc = {"profile": profile, "threshold": threshold, "pairs": manifest["pairs"], "runs": summary}
(out_dir / "summary.json").write_text(json.dumps(summary_doc, indent=2))
(out_dir / "config.json").write_text(json.dumps(config, indent=2))
pd.DataFrame([{"pair": run, **row} for run, rows in summary.items() for row in rows.values()])
