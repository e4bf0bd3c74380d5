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
# # Table 2 · Dataset characteristics of each trace generator
#
# **Paper:** Table 2: problems correctly solved during trace generation (the teacher over all
# problems, the other methods over the problems the teacher solved: the paper's "/234"), the
# fallback rate (share of tokens where the proposal was rejected; RSD and SKD only) and the share of
# tokens below 1% probability under the student, over the training traces.
#
# **Reads:** `results/<profile>/analysis/summary.json` (notebook 20) and the trace manifest
# (notebook 10). Nothing is recomputed.
#
# **Writes:** `figures/<profile>/tab2_dataset_stats.{md,csv}`: our value beside the paper's.
#
# **Time:** seconds (CPU or GPU alike).

# %%
import json

import pandas as pd

from rsdlib import paths, reference
from rsdlib.plots import comparison_rows, write_table
from rsdlib.models import display_name
from rsdlib.tables import add_trace_intervals, difference_mde_note, read_scores, sub_share_difference, trace_uncertainty

# %% tags=["parameters"]
profile: str = "demo"  # results/<profile> and figures/<profile>
run: str = "main"  # which pair's traces (notebook 10's run name)

# %%
analysis = json.loads(paths.input_file(profile, "analysis", "summary.json").read_text())
manifest = json.loads(paths.input_file(profile, "traces", "manifest.json").read_text())
if run not in analysis["runs"]:
    raise ValueError(f"no run {run!r}; runs: {', '.join(analysis['runs'])}")
threshold = analysis["threshold"]

# %%
NOT_APPLICABLE = "Not Applicable"
full_scale = "s1k-solutions" in analysis["runs"][run]  # notebook 20 scored the 1,000 s1K worked solutions
# our method name -> the paper's row key: the pre-existing-traces row is the full s1K set where it was scored
KEY = {"s1k-solutions": "s1k-1.1", "reference": "reference (training)"} if full_scale else {"reference": "s1k-1.1"}
REFERENCE_LABEL = {"s1k-1.1": "s1K-1.1", "math500_solutions": "s1K-1.1 stand-in: MATH500 worked solutions"}
ours = []
for method, row in analysis["runs"][run].items():
    key = KEY.get(method, method)
    solved = f"{row['solved']}/{row['problems']}"
    fallback = row["fallback_rate"] if row["mode"] in ("rsd", "skd") else NOT_APPLICABLE
    if row["mode"] in ("rsd", "skd") and row["kept_traces"] == 0:
        fallback = None  # no training trace: nothing to measure
    label = REFERENCE_LABEL.get(manifest.get("reference"), "s1K-1.1") if method == "reference" else None
    if method == "s1k-solutions":
        label = f"s1K-1.1 stand-in: {row['problems']:,} of the 1,000 s1K worked solutions (teacher-forced, no generation)"
    elif method == "reference" and full_scale:
        label = f"{label} (the '+ s1K-1.1' training set)"
    ours.append({"key": key, "method": method, "label": label or method, "Correctly solved": solved,
                 "Fallback rate (%)": fallback, "Sub-1% tokens (%)": row["sub_threshold_tokens"],
                 "kept traces": row["kept_traces"]})
paper = [dict(r, **{"Fallback rate (%)": r["Fallback rate (%)"] if r["Fallback rate (%)"] is not None else NOT_APPLICABLE})
         for r in reference.TABLE2]
rows = comparison_rows(ours, paper, ["Correctly solved", "Fallback rate (%)", "Sub-1% tokens (%)"])
by_key = {r["key"]: r for r in ours}
for r in rows:  # our labels for rows the paper lacks, and the reference stand-in's name
    if r["key"] in by_key and (r["key"] == "s1k-1.1" or r["label"] == r["key"]):
        r["label"] = by_key[r["key"]]["label"]
rows = [{("Datasets" if k == "label" else k): v for k, v in r.items()} for r in rows]  # the paper's header
# 95% intervals: Wilson for solved counts, bootstrap over traces for the shares; teacher vs each method
scores = read_scores(profile)
uncertainty = trace_uncertainty(scores, analysis["runs"][run], run=run, threshold=threshold)
differences = {m: sub_share_difference(scores, m, "teacher", run=run, threshold=threshold)
               for m, r in analysis["runs"][run].items() if m != "teacher" and r["mode"] != "reference"}
layout = add_trace_intervals(rows, uncertainty, {r["key"]: r["method"] for r in ours}, differences)
columns, table = layout["columns"], pd.DataFrame(rows)[layout["columns"]]
table

# %% [markdown]
# Training-set composition of every trace run (the hybrid recipe, Sections 3.3 and 4.2): full traces
# of the solved problems + 128-token prefixes of all the others. The paper's RSD-1% set is
# 180 full + 820 prefix = 1,000 examples.

# %%
from rsdlib.traces import trace_run_stats

composition = []
for run_name, run_methods in manifest["methods"].items():
    for m in run_methods:
        st = trace_run_stats(paths.results_dir(profile) / "traces" / run_name / m)
        composition.append({"pair": run_name, "method": m, "full": st["solved"], "prefix": st["prefix_examples"],
                            "total": st["training_examples"]})
        print(f"{run_name}/{m}: {st['solved']} full + {st['prefix_examples']} prefix = {st['training_examples']} examples")
pd.DataFrame(composition)

# %%
trace_cfg = manifest["job"] | {"max_new_tokens": manifest["decoding"].get("max_new_tokens")}
notes = [
    f"Ours: {display_name(manifest['pairs'][run]['teacher'])} teaching {display_name(manifest['pairs'][run]['student'])}, "
    f"{len(manifest['problems'])} {manifest['benchmark']} problems, {trace_cfg.get('samples_per_problem')} samples "
    f"per problem, at most {trace_cfg.get('max_new_tokens')} new tokens. Paper: s1.1-7B teaching Qwen3-0.6B, "
    "1,000 s1K problems, 16 samples, 8k context.",
    "Correctly solved: the teacher over all problems; the other methods over the problems the teacher solved"
    + ("" if manifest["restrict_to_teacher_solved"] else " (not restricted in this profile: over all problems)") + ".",
    f"Sub-1% tokens: tokens of the kept (training) traces with probability below {threshold:g} under the "
    "student, teacher-forced, pooled over all tokens. Fallback rate: over the same traces.",
    "— : not produced (the method kept no trace, or the paper has no such row).",
    "95% CI: Wilson interval for Correctly solved; bootstrap over traces (2,000 resamples, seeded; a trace's "
    "tokens stay together) for the fallback rate and the sub-1% share. Δ vs teacher: the row's sub-1% share "
    "minus the teacher's, problems resampled jointly; * : its interval excludes 0. The paper reports no intervals.",
    difference_mde_note("a sub-1% share difference to the teacher", [d for d in differences.values() if d], "points"),
]
if manifest.get("reference") == "math500_solutions":
    notes.append("s1K-1.1 (DeepSeek-R1 traces) needs the Hugging Face hub; offline, the problems' worked "
                 "MATH500 solutions stand in as pre-existing traces the student did not write.")
write_table(rows, "tab2_dataset_stats", profile, columns=columns, notes=notes, csv_columns=layout["csv_columns"],
            title="Table 2: dataset characteristics of each trace generator (ours beside the paper)")
