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
# # Figure 2 · Token surprisal along one trace of each method
#
# **Paper:** Figure 2 / Section 3.2: the surprisal s_i = -log P_s(y_i | y_<i) of each token under the
# student, along a trace from each generator. Teacher-written traces show spikes above the threshold
# load -log p_th; RSD traces do not.
#
# **Reads:** `results/<profile>/analysis/scores.jsonl` (notebook 20).
#
# **Writes:** `figures/<profile>/fig2_surprisal.{pdf,png}`.
#
# **Time:** seconds.

# %%
import json
import math

import matplotlib.pyplot as plt
import pandas as pd

from rsdlib import paths
from rsdlib.plots import method_color, profile_note, save_figure, set_style

# %% tags=["parameters"]
profile: str = "demo"  # results/<profile> and figures/<profile>
run: str = "main"  # which pair's traces
methods: list = ["reference", "teacher", "self-distill", "skd", "rsd-p1"]  # one panel each, top to bottom
max_tokens: int = 256  # tokens shown per trace

# %%
scores = pd.read_json(paths.input_file(profile, "analysis", "scores.jsonl"), lines=True)
threshold = json.loads(paths.input_file(profile, "analysis", "summary.json").read_text())["threshold"]
scores = scores[(scores["run"] == run) & scores["method"].isin(methods)]
shown = [m for m in methods if m in set(scores["method"])]
missing = [m for m in methods if m not in shown]
if missing:
    print(f"no scored trace for {missing} (not generated in this profile)")
if max_tokens < 10:
    raise ValueError("max_tokens must be >= 10")

# %%
# one problem for all panels where possible: the problem with a kept trace in the most methods
kept = scores[scores["kept"]]
counts = kept.groupby("problem_id")["method"].nunique().sort_values(ascending=False)
problem = counts.index[0] if len(counts) else None
chosen = {}
for m in shown:
    mine = scores[scores["method"] == m]
    same = mine[(mine["problem_id"] == problem) & mine["kept"]] if problem is not None else mine.iloc[:0]
    pick = same if len(same) else mine.sort_values("kept", ascending=False)
    chosen[m] = pick.iloc[0]

set_style()
fig, axes = plt.subplots(len(shown), 1, figsize=(7.2, 1.25 * len(shown) + 0.8), sharex=True, sharey=True, squeeze=False)
load = -math.log(threshold)
for ax, m, i in zip(axes[:, 0], shown, range(len(shown))):
    row = chosen[m]
    s = [-lp for lp in row["token_logprobs"][:max_tokens]]
    ax.plot(range(len(s)), s, lw=0.7, color=method_color(m, i))
    ax.axhline(load, ls="--", lw=0.8, color="#444444")
    spikes = sum(v > load for v in s)
    tag = "" if row["kept"] else " (not a kept trace)"
    ax.set_title(f"{m}{tag}: {spikes} of {len(s)} tokens above -log p_th", fontsize=9, loc="left")
    ax.set_ylabel("surprisal")
axes[-1, 0].set_xlabel("token position")
axes[0, 0].text(1.0, 1.02, f"-log p_th = {load:.2f} (p_th = {threshold:g})", transform=axes[0, 0].transAxes,
                ha="right", va="bottom", fontsize=8, color="#444444")
fig.suptitle("Token surprisal under the student along one trace per method", y=1.0)
profile_note(profile, fig, extra=f"pair {run}, problem {problem}" if problem else f"pair {run}")
fig.tight_layout()
save_figure(fig, "fig2_surprisal", profile)
plt.show()
