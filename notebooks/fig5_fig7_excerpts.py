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
# # Figures 5 and 7 · A teacher-written trace beside the RSD trace of the same problem
#
# **Paper:** Figure 5 (Section 5.5) and Figure 7 (Appendix H): excerpts of an s1K-1.1 trace with its
# sub-1% tokens under the student highlighted in red, beside the RSD trace of the same question:
# similar reasoning, no low-probability tokens.
#
# **Reads:** `results/<profile>/analysis/scores.jsonl` (notebook 20: token texts and log-probabilities).
# Traces of GPQA problems are never drawn.
#
# **Writes:** `figures/<profile>/fig5_excerpts.{pdf,png}` (short excerpts) and
# `figures/<profile>/fig7_comparison.{pdf,png}` (longer excerpts).
#
# **Time:** seconds.

# %%
import math

import matplotlib.pyplot as plt
import pandas as pd

from rsdlib import paths
from rsdlib.plots import pick_excerpt_pair, render_excerpts

# %% tags=["parameters"]
profile: str = "demo"  # results/<profile> and figures/<profile>
run: str = "main"  # which pair's traces
left: list = ["teacher", "reference"]  # left trace: the first of these methods with a trace of the chosen problem
right: str = "rsd-p1"  # right trace: the RSD method
threshold: float = 0.01  # tokens below this student probability are highlighted
excerpt_tokens: int = 120  # Figure 5: tokens shown per side
comparison_tokens: int = 256  # Figure 7: tokens shown per side

# %%
path = paths.input_file(profile, "analysis", "scores.jsonl")
scores = pd.read_json(path, lines=True)
scores = scores[(scores["run"] == run) & ~scores["problem_id"].astype(str).str.lower().str.startswith("gpqa")]
if not 0 < threshold < 1 or excerpt_tokens < 10 or comparison_tokens < 10:
    raise ValueError("threshold must be in (0, 1) and the token counts >= 10")
available = sorted(set(scores["method"]))
if right not in available:  # e.g. the teacher solved nothing, so the restricted RSD run had no problem
    fallback = [m for m in available if m.startswith("rsd")] or [m for m in available if m not in left]
    if not fallback:
        raise ValueError(f"no scored trace of {right!r} nor of any other method; methods: {available}")
    print(f"no scored trace of {right!r}: showing {fallback[0]!r} instead")
    right = fallback[0]
left_row, right_row = pick_excerpt_pair(scores, left, right)
log_th = math.log(threshold)
for side, row in (("left", left_row), ("right", right_row)):
    low = sum(lp < log_th for lp in row["token_logprobs"])
    print(f"{side}: {row['method']} {row['problem_id']} sample {row['sample_index']} kept={row['kept']}: "
          f"{low}/{row['n_tokens']} tokens below {threshold:g}")

# %%
options = {"threshold": threshold, "profile": profile, "run": run}
render_excerpts((left_row, right_row), excerpt_tokens, "fig5_excerpts", 7.5, "Trace excerpts of the same problem",
                **options)
plt.show()
render_excerpts((left_row, right_row), comparison_tokens, "fig7_comparison", 6.5, "Detailed trace comparison",
                **options)
plt.show()
