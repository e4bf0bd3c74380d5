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
# # Figure 1 · Overview: the RSD loop, and what it does to accuracy
#
# **Paper:** Figure 1. Left: the teacher proposes each token, the student keeps it only if its own
# probability is at least p_th, otherwise the student samples the token itself (Algorithm 1). Right:
# average accuracy over AIME24, AIME25, GPQA Diamond and MATH500 of the base student, the student
# fine-tuned on s1K-1.1, and the student fine-tuned on its RSD traces.
#
# **Reads:** `results/<profile>/eval/summary.json` (the evaluation notebook) when it exists; the
# paper's bars come from `rsdlib.reference`. Without evaluation results the right panel shows the
# paper's bars only and says so.
#
# Our bars carry 95% bootstrap intervals over problems (`rsdlib.tables.accuracy_uncertainty`; the
# paper reports none).
#
# **Writes:** `figures/<profile>/fig1_overview.{pdf,png}`.
#
# **Time:** seconds.

# %%
import json

import matplotlib.pyplot as plt

from rsdlib import paths
from rsdlib.plots import draw_accuracy_bars, draw_rsd_loop, profile_note, save_figure, set_style
from rsdlib.tables import accuracy_uncertainty

# %% tags=["parameters"]
profile: str = "demo"  # results/<profile> and figures/<profile>
rsd_method: str = "rsd-p1"  # our model shown as "+ RSD"
s1k_method: str = "reference"  # our model shown as "+ s1K-1.1" (offline: its stand-in)

# %%
eval_path = paths.results_dir(profile) / "eval" / "summary.json"
ours = {}
if eval_path.is_file():
    models = json.loads(eval_path.read_text()).get("models", {})
    for key, name in (("base", "base"), ("s1k-1.1", s1k_method), ("rsd-p1", rsd_method)):
        if name in models and models[name].get("Average") is not None:
            ours[key] = models[name]["Average"]
bar_models = {"base": "base", "s1k-1.1": s1k_method, "rsd-p1": rsd_method}
intervals = {k: u["ours"].get("Average") for k, u in accuracy_uncertainty(
    {k: m for k, m in bar_models.items() if k in ours}, profile).items()} if ours else {}
print("our averages:", ours or "none (no evaluation results for this profile yet)")
print("95% intervals:", {k: (round(iv.low, 2), round(iv.high, 2)) for k, iv in intervals.items() if iv})

# %%
set_style()
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.35, 1]})
draw_rsd_loop(left)
draw_accuracy_bars(right, ours, intervals, rsd_method, profile)
profile_note(profile, fig, extra="ours: 95% bootstrap intervals over problems" if intervals else "")
fig.tight_layout()
save_figure(fig, "fig1_overview", profile)
plt.show()
