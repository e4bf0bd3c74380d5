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
# # Figure 3 · Trace perplexity under the student, per method
#
# **Paper:** Figure 3 / Section 3.2: PPL = exp(mean surprisal) of each training trace under the
# student. RSD traces cluster at low perplexity with small spread; teacher-written traces do not.
#
# **Reads:** `results/<profile>/analysis/scores.jsonl` (notebook 20).
#
# Beside each box: the mean perplexity with its 95% bootstrap interval over traces
# (`rsdlib.metrics.bootstrap_mean`; the paper reports none). With `s1k-solutions` (notebook 20), the
# pre-existing traces are the 1,000 s1K worked solutions.
#
# **Writes:** `figures/<profile>/fig3_perplexity.{pdf,png}`.
#
# **Time:** seconds.

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from rsdlib import paths
from rsdlib.metrics import bootstrap_mean
from rsdlib.plots import error_bar, method_color, profile_note, save_figure, set_style

# %% tags=["parameters"]
profile: str = "demo"  # results/<profile> and figures/<profile>
run: str = "main"  # which pair's traces
methods: list = ["s1k-solutions", "reference", "teacher", "self-distill", "skd", "rsd-p1"]  # left to right
log_scale: bool = False  # perplexity axis in log scale

# %%
path = paths.input_file(profile, "analysis", "scores.jsonl")
scores = pd.read_json(path, lines=True)
scores = scores[(scores["run"] == run) & scores["method"].isin(methods)].copy()
order = [m for m in methods if m in set(scores["method"])]
scores["traces"] = np.where(scores["kept"], "kept (training) traces", "samples (no kept trace)")
means = {m: bootstrap_mean(scores.loc[scores["method"] == m, "perplexity"].to_numpy()) for m in order}
scores.groupby("method")["perplexity"].describe().reindex(order).assign(
    ci_low=[means[m].low for m in order], ci_high=[means[m].high for m in order])

# %%
set_style()
fig, ax = plt.subplots(figsize=(max(4.5, 1.0 * len(order) + 1.5), 3.6))
palette = {m: method_color({"s1k-solutions": "reference"}.get(m, m), i) for i, m in enumerate(order)}
sns.boxplot(data=scores, x="method", y="perplexity", hue="method", order=order, palette=palette, ax=ax,
            showfliers=False, width=0.55, boxprops={"alpha": 0.35}, legend=False)
np.random.seed(0)  # seaborn's stripplot jitter draws from numpy's global generator: seeded, the same figure each run
sns.stripplot(data=scores, x="method", y="perplexity", hue="method", order=order, palette=palette, ax=ax,
              size=4, jitter=0.18, legend=False, edgecolor="white", linewidth=0.4)
ax.errorbar([i + 0.36 for i in range(len(order))], [means[m].estimate for m in order],
            yerr=error_bar([means[m] for m in order]), fmt="o", color="black", ms=3.5, elinewidth=1, capsize=3,
            zorder=4, label="mean, 95% CI")
ax.legend(loc="best", fontsize=8)
for i, m in enumerate(order):
    mine = scores[scores["method"] == m]
    label = f"n={len(mine)}" + ("" if mine["kept"].all() else "*")
    ax.annotate(label, (i, 1.0), xycoords=("data", "axes fraction"), ha="center", va="bottom", fontsize=8)
if log_scale:
    ax.set_yscale("log")
ax.set(xlabel="", ylabel="trace perplexity under the student")
ax.set_title("Trace-level perplexity per method", pad=16)
ax.tick_params(axis="x", rotation=20)
note = "* no kept trace: its samples are shown instead" if not scores["kept"].all() else ""
profile_note(profile, fig, extra="; ".join(x for x in (f"pair {run}", note) if x))
fig.tight_layout()
save_figure(fig, "fig3_perplexity", profile)
plt.show()
