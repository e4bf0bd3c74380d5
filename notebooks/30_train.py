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
# # 30 · Train one student per trace dataset
#
# **Paper:** Sections 3.3 and 4.1: the hybrid recipe (full traces of solved problems + 128-token UPFT
# prefixes of unsolved ones) with the s1 training setup (batch 16, lr 1e-5, 5% warmup + cosine,
# AdamW (0.9, 0.95), weight decay 1e-4, 15 epochs). Each trained student is a row of Table 1
# ("+ Teacher-generated", "+ Self-distill", "+ SKD-inspired", "+ RSD-generated"...), and "+ s1K-1.1"
# is the student trained on the reference traces.
#
# **Reads:** `results/<profile>/traces/<pair>/<method>/dataset.jsonl` (notebook 10).
#
# **Writes:** `results/<profile>/models/<pair>-<method>/` (rsdlib.train: `train_config.json`,
# `train_log.json`, `train_summary.json`, the model in `final/`) and `results/<profile>/models/manifest.json`
# (which model came from which dataset, for the evaluation notebook). A finished run with the same
# config and dataset is not redone; `force: true` retrains.
#
# **Time:** smoke about 20 s; demo (LoRA on the 0.5B student, a few steps per method) about 3 min
# on CPU; paper (full fine-tuning of Qwen3-0.6B, 15 epochs on ~1,000 examples of up to 8k tokens)
# about 1-2 GPU-hours per method on one H100 (not measured here).

# %%
import matplotlib.pyplot as plt
import pandas as pd

from rsdlib import paths
from rsdlib.launch import notebook_values
from rsdlib.plots import plot_loss_curves
from rsdlib.train import check_train_params, run_train_stage

# %% tags=["parameters"]
profile: str = "demo"  # results/<profile>
methods: list = ["reference", "teacher", "self-distill", "self-distill-ce", "skd", "rsd-p1"]  # pair main
extra_runs: dict = {}  # pair run -> list of methods, e.g. tailored students of Table 4
training: dict = {
    "epochs": 1, "global_batch_size": 2, "micro_batch_size": 1, "block_size": 1024, "truncate": True, "lora": True,
    "merge_lora": False, "learning_rate": 5e-4, "save_strategy": "no",
}  # TrainConfig keys shared by every run
method_training: dict = {}  # method -> TrainConfig keys over `training` (paper: s1's 32,768-token block for s1K-1.1)
require_kept_traces: bool = False  # True: 0 kept (full) traces stops training (paper); False: prefixes alone
force: bool = False  # retrain even if a finished run with the same config exists
workers: int = 1  # processes per run: above 1, DDP over torchrun ranks (same effective batch); 0: one per GPU

# %%
params = notebook_values("30_train", globals())
check_train_params(params)

# %%
trained = run_train_stage(params)
pd.DataFrame(trained.values())

# %% [markdown]
# ## Loss curves (a check, not a paper figure)

# %%
plot_loss_curves(trained, paths.results_dir(profile) / "models", profile)
plt.show()
