# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Table 4 · Cross-model evaluation: transferred vs tailored RSD traces
#
# **Paper:** Appendix D, Table 4: RSD traces generated for Qwen3-0.6B ("Transferred") do not help other
# students (Qwen3-1.7B/4B, Llama-3.2-1B-Instruct, Gemma-3-1B-IT, Phi-4-Mini(-Reasoning)); traces
# generated for each student ("Tailored") do.
#
# **Reads:** `results/<profile>/eval/summary.json` (notebook 40).
#
# **Writes:** `figures/<profile>/tab4_cross_model.{md,csv}`: our value beside the paper's.
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
    "Qwen3-0.6B/base": "base", "Qwen3-0.6B/s1k-1.1": "reference", "Qwen3-0.6B/tailored": "rsd-p1",
}  # paper row key (student/setting) -> our evaluated model

# %%
evaluation = tables.load_evaluation(profile)
manifest = json.loads(paths.input_file(profile, "traces", "manifest.json").read_text())
tables.check_row_keys(rows, reference.TABLE4, "Table 4")
columns = [*reference.BENCHMARKS, "Average"]

# %%
ours = tables.accuracy_rows(rows, evaluation, columns)
paper = [dict(r, label=r["label"] if r["setting"] != "base" else r["student"]) for r in reference.TABLE4]
table = comparison_rows(ours, paper, columns, label_as="Models")
tables.name_our_student(table, "Qwen3-0.6B/base", manifest["pairs"]["main"]["student"])
uncertainty = tables.cross_model_uncertainty(rows, profile)  # each row against its own student's base
intervals = tables.add_accuracy_intervals(table, uncertainty, columns)
shown = intervals["columns"]
pd.DataFrame(table)[shown]

# %%
student = display_name(manifest["pairs"]["main"]["student"])
mapped = ", ".join(f"{k} <- {v}" for k, v in rows.items())
notes = [
    f"Ours (accuracy in %): {mapped}. In this profile the main student is {student}; other pairs and "
    "transferred students appear when the profile generates, trains and evaluates them.",
    "Transferred: trained on RSD traces made for Qwen3-0.6B (re-tokenized with its own tokenizer and chat template); "
    "Tailored: trained on RSD traces made for itself. Δ vs base: each row against its own student's base row.",
    "— : not produced in this profile.",
]
tables.write_accuracy_table(table, "tab4_cross_model", profile, intervals, notes,
                     title="Table 4: cross-model evaluation, transferred vs tailored RSD traces (ours beside the "
                           "paper)")
