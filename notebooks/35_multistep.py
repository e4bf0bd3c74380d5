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
# # 35 · Multi-step RSD: generate, train, and let the trained model be the next student
#
# **Paper:** Section 5.4 and Appendix E (Table 5): three cycles with p_th = 1%; in each cycle RSD
# traces are generated with the *current* student, the current student is trained on them (5 epochs),
# and the trained model becomes the student of the next cycle. The paper finds that this degrades
# accuracy below single-step RSD and below the base model.
#
# **Reads:** `results/<profile>/traces/manifest.json` and `traces/main/<method>/` (notebook 10): the
# problems, the prompt and the trace-job config of `method` are reused unchanged; only the student
# changes from cycle to cycle. Cycle 1's student is the base student, so cycle 1 reuses notebook 10's
# traces of `method` instead of generating them again.
#
# **Writes:** `results/<profile>/multistep/cycle<c>/traces/` (cycles 2, 3, ...: rsdlib.traces) and
# `results/<profile>/multistep/cycle<c>/model/` (rsdlib.train), and
# `results/<profile>/multistep/manifest.json`, which names the model after the last cycle
# `<method>-<cycles>step` for the evaluation notebook (Table 5). Finished traces and trained cycles
# are kept across reruns; `force: true` redoes them.
#
# **Time:** smoke about 20 s; demo (LoRA merged after each cycle, a few problems) about 5 min on CPU;
# paper (three cycles of RSD generation with s1.1-7B and 5 epochs of full fine-tuning each): about
# three times notebook 10's RSD run plus a third of notebook 30's training per cycle, GPU-days (not
# measured here).

# %%
import pandas as pd

from rsdlib.launch import notebook_values
from rsdlib.multistep import check_multistep_params, run_multistep

# %% tags=["parameters"]
profile: str = "demo"  # results/<profile>
method: str = "rsd-p1"  # the trace method of notebook 10 applied in every cycle (paper: RSD with a 1 percent threshold)
cycles: int = 2  # generate -> train cycles (paper: 3; the demo 2, within its 45-minute budget)
training: dict = {
    # TrainConfig keys of each cycle (paper: 5 epochs); a LoRA run must merge, its model is the next student
    "epochs": 1, "global_batch_size": 2, "micro_batch_size": 1, "block_size": 1024, "truncate": True, "lora": True,
    "merge_lora": True, "learning_rate": 5e-4, "save_strategy": "no",
}  # TrainConfig keys of each cycle (a LoRA run must merge: its model is the next student)
dtype: str = "auto"  # trace generation: auto (bf16 on GPUs and bf16-capable CPUs, else fp16 / fp32), float32, bfloat16
require_kept_traces: bool = False  # True: 0 kept (full) traces stops training (paper); False: prefixes alone
force: bool = False  # redo traces and training even if finished cycles exist
workers: int = 1  # processes per cycle: above 1, torchrun ranks (traces, DDP training); 0: one per GPU

# %%
params = notebook_values("35_multistep", globals())
check_multistep_params(params)

# %% [markdown]
# ## The cycles: traces with the current student, then training (`rsdlib.multistep`)

# %%
rows = run_multistep(params)
pd.DataFrame(rows)[["cycle", "solved", "problems", "fallback_rate", "avg_tokens", "examples"]]
