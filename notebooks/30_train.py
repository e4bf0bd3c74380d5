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
# **Time:** smoke about 20 s; demo (LoRA on the 0.5B student, a few steps per method) about 5-10 min
# on CPU; paper (full fine-tuning of Qwen3-0.6B, 15 epochs on ~1,000 examples of up to 8k tokens)
# about 1-2 GPU-hours per method on one H100 (not measured here).

# %%
import json
import shutil
import time

import pandas as pd

from rsdlib import paths
from rsdlib.config import load_yaml_config
from rsdlib.models import model_location
from rsdlib.standins import carry_steering
from rsdlib.traces import check_trainable
from rsdlib.train import TrainConfig, load_examples, train

# %% tags=["parameters"]
profile: str = "demo"  # results/<profile>
methods: list = ["reference", "teacher", "self-distill", "self-distill-ce", "skd", "rsd-p10", "rsd-p1"]  # trace datasets to train on (pair "main")
extra_runs: dict = {}  # pair run -> list of methods, e.g. tailored students of Table 4
training: dict = {"epochs": 3, "global_batch_size": 2, "micro_batch_size": 1, "block_size": 1024, "truncate": True, "lora": True, "merge_lora": False, "learning_rate": 5e-4, "save_strategy": "no"}  # TrainConfig keys shared by every run
method_training: dict = {}  # method -> TrainConfig keys over `training` for that method's runs (paper: s1's 32,768-token block for the s1K-1.1 reference traces)
require_kept_traces: bool = True  # a dataset with 0 kept (full) traces stops training (smoke: false, its random models solve nothing)
force: bool = False  # retrain even if a finished run with the same config exists

# %%
results = paths.results_dir(profile)
manifest = json.loads(paths.input_file(profile, "traces", "manifest.json").read_text())  # notebook 10's
for bad in ("model", "output_dir"):
    if bad in training:
        raise ValueError(f"training.{bad} is set by this notebook (the pair's student / results/<profile>/models/...)")
load_yaml_config(TrainConfig, {**training, "model": "check"})  # unknown keys and ranges refused before any work
for method, keys in method_training.items():
    load_yaml_config(TrainConfig, {**training, **keys, "model": "check"})
runs = [("main", m) for m in methods] + [(run, m) for run, ms in extra_runs.items() for m in ms]
for run, method in runs:
    if method not in manifest["methods"].get(run, []):
        raise ValueError(f"no trace dataset {run}/{method}; notebook 10 made: {manifest['methods']}")
models_dir = results / "models"
models_dir.mkdir(parents=True, exist_ok=True)

# %%
trained = {}
for run, method in runs:
    dataset = results / "traces" / run / method / "dataset.jsonl"
    examples = load_examples(dataset)  # a malformed line is named by file and line
    name = f"{run}-{method}"
    out = models_dir / name
    n_full = check_trainable(dataset, name, require_kept=require_kept_traces)["full_examples"]  # 0 kept: an error
    keys = {**training, **method_training.get(method, {})}
    lengths = [len(e["prompt_ids"]) + len(e["completion_ids"]) for e in examples]
    over = sum(n > keys["block_size"] for n in lengths)
    print(f"{name}: training set {n_full} full + {len(examples) - n_full} prefix = {len(examples)} examples; "
          f"longest {max(lengths)} tokens, {over} over block_size {keys['block_size']} "
          f"({'cut' if keys.get('truncate') else 'refused by training'})")
    if force and out.exists():
        shutil.rmtree(out)
    cfg = load_yaml_config(TrainConfig, {**keys, "model": model_location(manifest["pairs"][run]["student"]),
                                         "output_dir": str(out)})
    start = time.perf_counter()
    final = train(cfg, dataset)
    carry_steering(cfg.model, final)  # the dry run's stand-ins stay steered after fine-tuning (real models: no-op)
    seconds = time.perf_counter() - start
    summary_path = out / "train_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    kinds = pd.Series([e["kind"] for e in examples]).value_counts().to_dict()
    trained[name] = {"run": run, "method": method, "student": manifest["pairs"][run]["student"],
                     "final": str(final) if final.is_dir() else None, "examples": len(examples),
                     "full": kinds.get("full", 0), "prefix": kinds.get("prefix", 0),
                     "train_loss": summary.get("train_loss"), "steps": summary.get("global_step"),
                     "seconds": round(seconds, 1)}
    print(f"{name}: {len(examples)} examples, loss {summary.get('train_loss')}, {seconds:.0f} s -> {final}")
(models_dir / "manifest.json").write_text(json.dumps({"profile": profile, "models": trained}, indent=2))
pd.DataFrame(trained.values())

# %% [markdown]
# ## Loss curves (a check, not a paper figure)

# %%
import matplotlib.pyplot as plt

from rsdlib.plots import method_color, set_style

set_style()
fig, ax = plt.subplots()
for i, (name, info) in enumerate(trained.items()):
    log_path = models_dir / name / "train_log.json"
    if info["final"] and log_path.is_file():
        points = [(r["step"], r["loss"]) for r in json.loads(log_path.read_text()) if "loss" in r]
        if points:
            ax.plot(*zip(*points), marker="o", label=name, color=method_color(info["method"], i))
ax.set(xlabel="optimizer step", ylabel="training loss", title=f"Training loss per dataset ({profile})")
ax.legend()
plt.show()
