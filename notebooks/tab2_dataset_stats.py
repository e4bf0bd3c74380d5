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

from rsdlib import paths
from rsdlib.plots import write_table
from rsdlib.tables import dataset_stats, dataset_stats_notes, training_composition_rows

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
stats = dataset_stats(profile, run, analysis, manifest)
rows, columns = stats["rows"], stats["columns"]
pd.DataFrame(rows)[columns]

# %% [markdown]
# Training-set composition of every trace run (the hybrid recipe, Sections 3.3 and 4.2): full traces
# of the solved problems + 128-token prefixes of all the others. The paper's RSD-1% set is
# 180 full + 820 prefix = 1,000 examples.

# %%
pd.DataFrame(training_composition_rows(profile, manifest))

# %%
notes = dataset_stats_notes(manifest, run, threshold, stats["differences"])
write_table(rows, "tab2_dataset_stats", profile, columns=columns, notes=notes, csv_columns=stats["csv_columns"],
            title="Table 2: dataset characteristics of each trace generator (ours beside the paper)")
