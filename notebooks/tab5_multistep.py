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
# # Table 5 · Multi-step RSD
#
# **Paper:** Appendix E, Table 5: three cycles of (RSD traces with the current student, 5 epochs of
# training, the trained model becomes the student) end below both single-step RSD and the base model.
#
# **Reads:** `results/<profile>/eval/summary.json` (notebook 40, which evaluated the models of notebook 35)
# and `results/<profile>/multistep/manifest.json` (notebook 35: cycles and epochs).
#
# **Writes:** `figures/<profile>/tab5_multistep.{md,csv}`: our value beside the paper's.
#
# **Time:** seconds.

# %%
import json

import pandas as pd

from rsdlib import paths, reference, tables
from rsdlib.plots import comparison_rows

# %% tags=["parameters"]
profile: str = "demo"  # results/<profile> and figures/<profile>
rows: dict = {"base": "base", "rsd-p1": "rsd-p1", "rsd-p1-3step": "rsd-p1-2step"}  # paper row key -> our model

# %%
evaluation = tables.load_evaluation(profile)
tables.check_row_keys(rows, reference.TABLE5, "Table 5")
columns = [*reference.BENCHMARKS, "Average"]

# %%
table = comparison_rows(tables.accuracy_rows(rows, evaluation, columns), reference.TABLE5, columns, label_as="Models")
manifest = json.loads(paths.input_file(profile, "traces", "manifest.json").read_text())
tables.name_our_student(table, "base", manifest["pairs"]["main"]["student"])
intervals = tables.add_accuracy_intervals(table, tables.accuracy_uncertainty(rows, profile, base_key="base"), columns)
shown = intervals["columns"]
pd.DataFrame(table)[shown]

# %%
multi = rows.get("rsd-p1-3step")
ms_path = paths.results_dir(profile) / "multistep" / "manifest.json"
ms = json.loads(ms_path.read_text()) if ms_path.is_file() else None
notes = [
    "Accuracy in %. Our single-step row is the student trained once on its RSD (p_th = 1%) traces (notebook 30).",
    (f"Multi-step row: model {multi!r}, {ms['cycles']} cycle(s) of {ms['method']} with "
     f"{ms['training'].get('epochs')} epoch(s) each (notebook 35; paper: 3 cycles of 5 epochs)."
     if ms and multi in evaluation["models"] else
     f"Multi-step row: no evaluated model {multi!r} (run notebooks 35_multistep and 40_evaluate)."),
    "— : not produced in this profile.",
]
tables.write_accuracy_table(table, "tab5_multistep", profile, intervals, notes,
                     title="Table 5: multi-step RSD (ours beside the paper)")
