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
# # Table 1 · Accuracy of the student trained on each kind of trace
#
# **Paper:** Table 1 (Section 4.2): Qwen3-0.6B, then fine-tuned on s1K-1.1, on teacher-generated,
# self-distilled, SKD-inspired and RSD traces at four thresholds, on AIME24, AIME25, GPQA Diamond,
# MATH500 and their average. Direct distillation of teacher traces hurts; RSD at 1% helps.
#
# **Reads:** `results/<profile>/eval/summary.json` (notebook 40).
#
# **Writes:** `figures/<profile>/tab1_main_results.{md,csv}`: our value beside the paper's.
#
# **Time:** seconds.

# %%
import json

import pandas as pd

from rsdlib import paths, reference, tables
from rsdlib.models import display_name
from rsdlib.plots import comparison_rows

# %% tags=["parameters"]
profile: str = "demo"  # results/<profile> and figures/<profile>
rows: dict = {
    "base": "base", "s1k-1.1": "reference", "teacher": "teacher", "self-distill": "self-distill", "skd": "skd",
    "rsd-p1": "rsd-p1",
}  # paper row key -> our evaluated model

# %%
evaluation = tables.load_evaluation(profile)
tables.check_row_keys(rows, reference.TABLE1, "Table 1")
manifest = json.loads(paths.input_file(profile, "traces", "manifest.json").read_text())
columns = [*reference.BENCHMARKS, "Average"]

# %%
table = comparison_rows(tables.accuracy_rows(rows, evaluation, columns), reference.TABLE1, columns, label_as="Models")
tables.name_our_student(table, "base", manifest["pairs"]["main"]["student"])
columns += list(tables.extra_sample_columns(rows, profile))  # e.g. MATH500 avg@4 beside the paper's pass@1
intervals = tables.add_accuracy_intervals(table, tables.accuracy_uncertainty(rows, profile, base_key="base"), columns)
shown = intervals["columns"]
pd.DataFrame(table)[shown]

# %%
student = display_name(manifest["pairs"]["main"]["student"])
problems = next(iter(evaluation["models"].values()), {}).get("problems", {})
metric = next(iter(evaluation["models"].values()), {}).get("metric", {})
notes = [
    f"Ours: {student} (first row) and its fine-tuned copies, evaluated on "
    + ", ".join(f"{b}: {n} problems, {metric.get(b, '?')}" for b, n in problems.items())
    + ". Paper: Qwen3-0.6B; avg@64 on the AIMEs, avg@8 on GPQA Diamond, pass@1 on MATH500 (full sets).",
    "Accuracy in %. The '+ s1K-1.1' row is, offline, the student trained on the stand-in reference traces "
    "(MATH500 worked solutions)." if manifest.get("reference") == "math500_solutions" else "Accuracy in %.",
    "MATH500 problems of the evaluation are the hash half never used for trace generation.",
    "MATH500 avg@k (where shown): the mean over k samples per problem, beside the paper's pass@1 on sample 0 "
    "(one sample at T = 0.7 has a standard error near 2 points, more than the paper's gaps between methods).",
    "— : not produced in this profile (method not run or not evaluated).",
]
tables.write_accuracy_table(table, "tab1_main_results", profile, intervals, notes,
                     title="Table 1: accuracy of the student trained on each kind of trace (ours beside the paper)")
