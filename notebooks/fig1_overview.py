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
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from rsdlib import paths, reference
from rsdlib.plots import PAPER_COLOR, error_bar, method_color, profile_note, save_figure, set_style
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
def box(ax, xy, w, h, text, color):
    ax.add_patch(FancyBboxPatch(xy, w, h, boxstyle="round,pad=0.02,rounding_size=0.03", fc=color, ec="#333333", lw=1))
    ax.text(xy[0] + w / 2, xy[1] + h / 2, text, ha="center", va="center", fontsize=8.5, wrap=True)


def arrow(ax, a, b, text="", color="#333333", offset=(0, 0), rad=0.0):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=12, lw=1.2, color=color,
                                 connectionstyle=f"arc3,rad={rad}"))
    if text:
        ax.text((a[0] + b[0]) / 2 + offset[0], (a[1] + b[1]) / 2 + offset[1], text, fontsize=7.5,
                ha="center", va="center", color=color)


set_style()
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.35, 1]})
left.set_axis_off()
left.set_xlim(0, 1)
left.set_ylim(0, 1)
box(left, (0.02, 0.72), 0.26, 0.18, "Teacher\n(large model)\nproposes y ~ P_t", "#fde0c5")
box(left, (0.38, 0.72), 0.28, 0.18, "Student checks\nP_s(y) ≥ p_th ?", "#dbe9f6")
box(left, (0.74, 0.72), 0.24, 0.18, "keep the\nteacher's token y", "#d9f0d3")
box(left, (0.38, 0.34), 0.28, 0.18, "fallback:\nstudent samples\ny ~ P_s", "#e7e1ef")
box(left, (0.38, 0.02), 0.60, 0.16, "context ← context + y   (stop at end of turn)\n"
    "rejection sampling keeps a correct trace per problem", "#f0f0f0")
arrow(left, (0.28, 0.81), (0.38, 0.81), "y", offset=(0, 0.035))
arrow(left, (0.66, 0.81), (0.74, 0.81), "yes", color="#238b45", offset=(0, 0.035))
arrow(left, (0.52, 0.72), (0.52, 0.52), "no: improbable\nfor the student", color="#cb181d", offset=(0.12, 0))
arrow(left, (0.86, 0.72), (0.86, 0.18))
arrow(left, (0.52, 0.34), (0.52, 0.18))
arrow(left, (0.38, 0.10), (0.15, 0.72), "next\nstep", rad=-0.25, offset=(-0.11, -0.02))
left.set_title("Reverse Speculative Decoding: teacher proposes, student decides", fontsize=10)

labels = [b["label"] for b in reference.FIGURE1_BARS]
keys = [b["key"] for b in reference.FIGURE1_BARS]
xs = range(len(keys))
width = 0.38 if ours else 0.6
paper_x = [x - width / 2 for x in xs] if ours else list(xs)
bars = right.bar(paper_x, [b["Average"] for b in reference.FIGURE1_BARS], width=width, color=PAPER_COLOR,
                 edgecolor="#555555", label="paper (Qwen3-0.6B)")
right.bar_label(bars, fmt="%.2f", fontsize=8)
if ours:
    ours_bars = right.bar([x + width / 2 for x in xs], [ours.get(k, 0) for k in keys], width=width,
                          color=[method_color({"rsd-p1": rsd_method}.get(k, k)) for k in keys], label=f"ours ({profile})",
                          yerr=error_bar([intervals.get(k) for k in keys]), capsize=4,
                          error_kw={"elinewidth": 1, "ecolor": "#333333"})
    right.bar_label(ours_bars, labels=[f"{ours[k]:.2f}" if k in ours else "not run" for k in keys], fontsize=8)
else:
    right.text(0.98, 0.98, "ours: no evaluation results\nfor this profile yet\n(evaluation stage not run)",
               transform=right.transAxes, ha="right", va="top", fontsize=8, color="#cb181d")
right.set_xticks(list(xs), labels)
right.set_ylabel("average accuracy (%)")
right.set_ylim(0, max([b["Average"] * 1.35 for b in reference.FIGURE1_BARS]
                      + [iv.high * 1.1 for iv in intervals.values() if iv is not None]))
right.set_title("Average of AIME24, AIME25, GPQA Diamond, MATH500", fontsize=10)
right.legend(loc="upper left")
profile_note(profile, fig, extra="ours: 95% bootstrap intervals over problems" if intervals else "")
fig.tight_layout()
save_figure(fig, "fig1_overview", profile)
plt.show()
