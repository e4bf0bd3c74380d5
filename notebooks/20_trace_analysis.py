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
# # 20 · Trace analysis: every trace scored under its student
#
# **Paper:** Section 3.2 (surprisal s_i = -log P_s(y_i | y_<i), entropy, trace perplexity
# exp(mean s_i), the share of sub-1% tokens), the numbers behind Table 2's last column and
# Figures 2, 3, 5-7 and 6.
#
# **Reads:** `results/<profile>/traces/manifest.json` and each method's `dataset.jsonl` /
# `samples.jsonl` (notebook 10).
#
# **Writes:** `results/<profile>/analysis/scores.jsonl` (one row per scored trace: per-token
# log-probabilities, entropies and token texts), `summary.json` (per pair and method: the Table 2 /
# Table 6 row and perplexity statistics), `low_tokens.json` (counts of sub-threshold tokens, for the
# word cloud) and `config.json` (what was scored; a rerun on the same traces skips the scoring).
#
# With `s1k_solutions` > 0 the worked solutions of N s1K problems (shipped with rsdlib; evenly spaced
# over the 1,000, all of them at N = 1000) are scored too, under the main pair's student, as method
# `s1k-solutions`: pre-existing traces the student did not write, toward the paper's scale (its Figure 6
# covers the 1,000 s1K traces). Teacher-forced scoring needs no generation, but all 1,000 are 729,265
# prompt + solution tokens under the 0.5B student, 15.6 ms each on a quiet 2-core machine
# (`benchmarks/bench_scoring.py`: about 3.2 h for all 1,000), so the demo scores 16 (6,992 solution
# tokens) to stay within its 45-minute budget; on a GPU all 1,000 take minutes. Table 2's
# pre-existing-traces row and Figures 3 and 6 use it.
#
# The traces scored are each method's training traces (the kept, correct ones). A method that kept
# none (always so with the smoke profile's random models) gets up to `unkept_samples` of its samples
# scored instead, marked `kept: false`, so the figures still have something to show; Table 2 never
# uses them.
#
# **Time:** smoke about 10 s; demo about 1-4 min on CPU (the 16 s1K solutions included); paper (8,000 traces
# of ~4k tokens under Qwen3-0.6B) minutes on one GPU.

# %%
import pandas as pd

from rsdlib.analysis import check_analysis_params, run_analysis
from rsdlib.launch import notebook_values

# %% tags=["parameters"]
profile: str = "demo"  # results/<profile>
threshold: float = 0.01  # sub-threshold probability under the student (paper: 1%)
batch_size: int = 4  # traces per scoring forward pass
dtype: str = "auto"  # auto (bf16 on GPUs and bf16-capable CPUs, else fp16 / fp32), float32, bfloat16
device: str = "auto"  # auto, cpu, cuda
unkept_samples: int = 4  # a method with no kept trace: score this many of its samples instead; 0 scores none
s1k_solutions: int = 16  # also score N s1K worked solutions (evenly spaced; 1000: all; 0: none) as "s1k-solutions"
force: bool = False  # rescore even if the stored scores match the traces

# %%
params = notebook_values("20_trace_analysis", globals())
check_analysis_params(params)

# %% [markdown]
# ## Score the traces (teacher-forced, one forward per batch), then the per-method summary
# Table 2 and Table 6 rows and perplexity statistics (`rsdlib.analysis`).

# %%
summary = run_analysis(params)
pd.DataFrame([{"pair": run, **row} for run, rows in summary.items() for row in rows.values()])
