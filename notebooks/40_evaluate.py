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
# # 40 · Evaluate the base student and every trained student
#
# **Paper:** Section 4 and Appendix B: AIME24 and AIME25 (avg@64), GPQA Diamond (avg@8, 16k tokens,
# `</think>` forced at 15k) and MATH500 (pass@1), 8k tokens elsewhere. These are the accuracy cells of
# Tables 1, 3, 4, 5 and the bars of Figures 1 and 4.
#
# **Reads:** `results/<profile>/models/manifest.json` (notebook 30), `results/<profile>/multistep/manifest.json`
# (notebook 35, when it ran) and the benchmarks (the copies shipped in rsdlib; `evaluation.source: hub`
# reads the hub datasets instead). In the
# demo, MATH500 problems come from the hash half that trace generation never saw (same salt as
# notebook 10, the other part).
#
# **Writes:** `results/<profile>/eval/<model>/` (rsdlib.evaluate: per-sample rows and a summary per
# benchmark) and `results/<profile>/eval/summary.json` (accuracy in % per model and benchmark, and
# their average, and how answers were found: boxed / stated / last expression / none). GPQA rows never
# hold question text, and this notebook never prints responses.
#
# **Grading** (rsdlib.grading): answers are read as math-verify reads them (boxed first, then "the
# final answer is ...", then the last expression; GPQA letters by a documented priority of forms),
# from the text after the thinking, or from the whole response for a model that does not think
# (`answer_from`, per model: Table 4's base Llama-3.2-1B-Instruct). Rows graded another way before
# are re-graded from their stored responses, without generating again.
# Finished samples are kept across reruns; `force: true` redoes them.
#
# **Time:** smoke about 30 s; demo (0.5B student, a few short problems per benchmark, per model) about
# 1.5 min per model on CPU (755 s for 8 models measured); paper (avg@64 on the AIMEs, avg@8 on GPQA,
# 500 MATH problems, 8-16k tokens) hours per model on one GPU with vLLM (not measured here).

# %%
import pandas as pd

from rsdlib.evaluate import answers_found_table, check_eval_params
from rsdlib.launch import notebook_values
from rsdlib.stages import run_eval_stage

# %% tags=["parameters"]
profile: str = "demo"  # results/<profile>
models: list = [
    "base", "reference", "teacher", "self-distill", "self-distill-ce", "skd", "rsd-p1", "rsd-p1-2step",
]  # "base" is the untrained student of pair main; the others were trained on that method's traces
extra_models: dict = {}  # name -> model spec or "<pair>-<method>" of notebook 30, for Tables 3-5
evaluation: dict = {
    # EvalConfig keys; here 1 AIME problem of each year and 2 GPQA at 48 tokens (they only exercise the path),
    # and the 6 easiest MATH500 problems of the hash half trace generation never used (split_part b of the
    # split of notebook 10) at 256
    "benchmarks": ["aime24", "aime25", "gpqa_diamond", "math500"],
    "samples": {"aime24": 1, "aime25": 1, "gpqa_diamond": 1, "math500": 1},
    "limit": {"aime24": 1, "aime25": 1, "gpqa_diamond": 2}, "math500_easiest": 6,
    "split_fraction": 0.5, "split_salt": "rsdlib-demo", "split_part": "b",
    "max_tokens": {"aime24": 48, "aime25": 48, "gpqa_diamond": 48, "math500": 256},
    "think_budget": {"gpqa_diamond": 32}, "temperature": 0.7, "top_p": 0.95, "batch_size": 8,
}  # EvalConfig keys (see above)
force: bool = False  # redo the evaluation even if finished samples exist
workers: int = 1  # processes per model: above 1, torchrun (one model per GPU, rsdlib.distributed); 0: one per GPU
answer_from: dict = {}  # model name -> auto | after_thinking | whole (where answers are read; default auto)

# %%
params = notebook_values("40_evaluate", globals())
check_eval_params(params)  # every model resolved and its config checked before any model loads

# %% [markdown]
# ## Every model on every benchmark (`rsdlib.stages.run_eval_stage`)

# %%
scores = run_eval_stage(params)
print("how answers were found (% of samples):")
print(answers_found_table(scores).to_string())
pd.DataFrame({k: {c: v for c, v in r.items() if c not in ("problems", "metric", "answers_found")}
              for k, r in scores.items()}).T
