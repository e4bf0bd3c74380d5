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
# # Figure 4 · Cross-model average accuracy: within-family, inter-family, tailored
#
# **Paper:** Figure 4 (Section 5.1): average accuracy of each student, base / + s1K-1.1 / + RSD traces.
# Left and centre: traces made for Qwen3-0.6B transferred to other students do not help; right: traces
# tailored to each student do. The bars are Table 4's Average column.
#
# **Reads:** `results/<profile>/eval/summary.json` (notebook 40) for our bars; the paper's from
# `rsdlib.reference`.
#
# **Writes:** `figures/<profile>/fig4_cross_model.{pdf,png}`.
#
# **Time:** seconds.

# %%
import json

import matplotlib.pyplot as plt

from rsdlib import paths, reference
from rsdlib.plots import error_bar, profile_note, save_figure, set_style
from rsdlib.tables import accuracy_uncertainty

# %% tags=["parameters"]
profile: str = "demo"  # results/<profile> and figures/<profile>
rows: dict = {
    "Qwen3-0.6B/base": "base", "Qwen3-0.6B/s1k-1.1": "reference", "Qwen3-0.6B/tailored": "rsd-p1",
}  # paper bar (student/setting) -> our evaluated model

# %%
eval_path = paths.results_dir(profile) / "eval" / "summary.json"
evaluation = json.loads(eval_path.read_text()) if eval_path.is_file() else {"models": {}}
ours = {key: evaluation["models"][m]["Average"] for key, m in rows.items()
        if m in evaluation["models"] and evaluation["models"][m].get("Average") is not None}
intervals = {k: u["ours"].get("Average") for k, u in accuracy_uncertainty(
    {k: m for k, m in rows.items() if k in ours}, profile, base_key="Qwen3-0.6B/base").items()} if ours else {}
bars = reference.figure4_bars()
print("our bars:", ours or "none")
print("95% intervals:", {k: (round(iv.low, 2), round(iv.high, 2)) for k, iv in intervals.items() if iv})

# %%
SETTING_COLORS = {"base": "#bdbdbd", "s1k-1.1": "#fc9272", "transferred": "#9ecae1", "tailored": "#3182bd"}
SETTING_LABELS = {"base": "base", "s1k-1.1": "+ s1K-1.1", "transferred": "+ RSD (transferred)",
                  "tailored": "+ RSD (tailored)"}
set_style()
panels = list(reference.FIGURE4_PANELS)
fig, axes = plt.subplots(1, 3, figsize=(13, 3.9), gridspec_kw={"width_ratios": [2, 4, 3]}, sharey=True)
for ax, panel in zip(axes, panels):
    students = reference.FIGURE4_PANELS[panel]
    settings = reference.FIGURE4_SETTINGS[panel]
    width = 0.8 / len(settings)
    for j, setting in enumerate(settings):
        xs, heights, mine, keys = [], [], [], []
        for i, student in enumerate(students):
            match = [b for b in bars if b["panel"] == panel and b["student"] == student and b["setting"] == setting]
            if match:
                xs.append(i + (j - (len(settings) - 1) / 2) * width)
                heights.append(match[0]["Average"])
                mine.append(ours.get(f"{student}/{setting}"))
                keys.append(f"{student}/{setting}")
        ax.bar(xs, heights, width=width * 0.95, color=SETTING_COLORS[setting], edgecolor="#555555", lw=0.6,
               label=SETTING_LABELS[setting] + " (paper)")
        ours_x = [x for x, m in zip(xs, mine) if m is not None]
        ax.scatter(ours_x, [m for m in mine if m is not None], marker="D", color="black", s=22, zorder=3,
                   label=f"ours ({profile})" if ours_x and j == 0 else None)
        ours_keys = [k for k, m in zip(keys, mine) if m is not None]
        if ours_x:  # our 95% bootstrap intervals over problems
            ax.errorbar(ours_x, [m for m in mine if m is not None],
                        yerr=error_bar([intervals.get(k) for k in ours_keys]),
                        fmt="none", ecolor="black", elinewidth=1, capsize=3, zorder=3)
    ax.set_xticks(range(len(students)), [s.replace("-Instruct", "\n-Instruct").replace("-Reasoning", "\n-Reasoning")
                                         for s in students], fontsize=8)
    ax.set_title(panel, fontsize=10)
axes[0].set_ylabel("average accuracy (%)")
handles, labels = {}, {}
for ax in axes:
    for h, label in zip(*ax.get_legend_handles_labels()):
        handles.setdefault(label, h)
order = sorted(handles, key=lambda label: label.startswith("ours"))  # the paper's settings first, ours last
fig.legend([handles[k] for k in order], order, loc="upper center", ncol=5, bbox_to_anchor=(0.5, 1.08), fontsize=8)
note = ("black diamonds: ours, with 95% bootstrap intervals over problems" if ours
        else "no evaluation of these students in this profile: paper bars only")
profile_note(profile, fig, extra=note)
fig.tight_layout()
save_figure(fig, "fig4_cross_model", profile)
plt.show()
