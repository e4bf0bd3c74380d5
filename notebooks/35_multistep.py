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
# **Time:** smoke about 20 s; demo (LoRA merged after each cycle, a few problems) about 5-8 min on CPU;
# paper (three cycles of RSD generation with s1.1-7B and 5 epochs of full fine-tuning each): about
# three times notebook 10's RSD run plus a third of notebook 30's training per cycle, GPU-days (not
# measured here).

# %%
import dataclasses
import json
import shutil
import time

import pandas as pd

from rsdlib import paths
from rsdlib.config import load_yaml_config
from rsdlib.data import load_benchmark
from rsdlib.models import load_pair, model_location
from rsdlib.traces import trace_run_stats
from rsdlib.standins import carry_steering
from rsdlib.traces import TraceJobConfig, check_trainable, run_trace_job
from rsdlib.train import TrainConfig, train

# %% tags=["parameters"]
profile: str = "demo"  # results/<profile>
method: str = "rsd-p1"  # the trace method of notebook 10 applied in every cycle (paper: RSD with a 1 percent threshold)
cycles: int = 3  # generate -> train cycles (paper: 3)
training: dict = {"epochs": 1, "global_batch_size": 2, "micro_batch_size": 1, "block_size": 1024, "truncate": True, "lora": True, "merge_lora": True, "learning_rate": 5e-4, "save_strategy": "no"}  # TrainConfig keys of each cycle (paper: 5 epochs); a LoRA run must merge, its model is the next student
dtype: str = "auto"  # model dtype for trace generation: auto (bf16 on GPUs and bf16-capable CPUs, else fp16 / fp32), float32, bfloat16
require_kept_traces: bool = True  # a dataset with 0 kept (full) traces stops training (smoke: false, its random models solve nothing)
force: bool = False  # redo traces and training even if finished cycles exist

# %%
results = paths.results_dir(profile)
manifest = json.loads(paths.input_file(profile, "traces", "manifest.json").read_text())  # notebook 10's
if method not in manifest["methods"].get("main", []):
    raise ValueError(f"method {method!r} has no traces of pair main; notebook 10 made {manifest['methods']['main']}")
if cycles < 1:
    raise ValueError("cycles must be at least 1")
for bad in ("model", "output_dir"):
    if bad in training:
        raise ValueError(f"training.{bad} is set by this notebook (the current student / multistep/cycle<c>/model)")
if training.get("lora") and not training.get("merge_lora", True):
    raise ValueError("training.lora needs merge_lora: true here: each cycle's model is the next cycle's student")
load_yaml_config(TrainConfig, {**training, "model": "check"})  # unknown keys and ranges refused before any work

first_dir = results / "traces" / "main" / method
stored = json.loads((first_dir / "config.json").read_text())
base_job = load_yaml_config(TraceJobConfig, stored["config"])
if base_job.decoding.mode not in ("rsd", "skd"):
    raise ValueError(f"method {method!r} is a {base_job.decoding.mode!r} run; multi-step RSD needs an rsd (or skd) method")
# the problems of notebook 10's run: attempted (teacher-solved when restricted) + prefix-only (the hybrid recipe)
wanted = set(stored["problems"]) | set(stored.get("prefix_only_problems", []))
problems = [p for p in load_benchmark(manifest["benchmark"], source=manifest.get("source", "shipped")) if p.id in wanted]
restrict_dir = results / "traces" / "main" / "teacher" if manifest.get("restrict_to_teacher_solved") else None
teacher = manifest["pairs"]["main"]["teacher"]
student = manifest["pairs"]["main"]["student"]
root = results / "multistep"
root.mkdir(parents=True, exist_ok=True)
print(f"{cycles} cycle(s) of {method} (threshold {base_job.decoding.threshold}) on {len(problems)} problems; "
      f"{training.get('epochs')} epoch(s) per cycle")

# %%
rows = []
current = model_location(student)
for cycle in range(1, cycles + 1):
    cycle_dir = root / f"cycle{cycle}"
    if cycle == 1:
        trace_dir = first_dir  # the base student's traces: notebook 10 already made them
    else:
        trace_dir = cycle_dir / "traces"
        job = dataclasses.replace(base_job, method=f"{method}-cycle{cycle}", student=current)
        start = time.perf_counter()
        pair = load_pair(teacher, current, dtype=dtype)
        run_trace_job(pair, problems, job, trace_dir, restrict_to=restrict_dir, force=force, progress=True)
        del pair
        print(f"cycle {cycle}: traces in {time.perf_counter() - start:.0f} s")
    stats = trace_run_stats(trace_dir)
    dataset = trace_dir / "dataset.jsonl"
    composition = check_trainable(dataset, f"cycle {cycle}", require_kept=require_kept_traces)  # 0 kept: an error
    n_examples = composition["training_examples"]
    print(f"cycle {cycle}: training set {composition['full_examples']} full + {composition['prefix_examples']} "
          f"prefix = {n_examples} examples")
    model_dir = cycle_dir / "model"
    if force and model_dir.exists():
        shutil.rmtree(model_dir)
    cfg = load_yaml_config(TrainConfig, {**training, "model": current, "output_dir": str(model_dir)})
    start = time.perf_counter()
    final = train(cfg, dataset)
    carry_steering(current, final)  # the dry run's stand-ins stay steered after fine-tuning (real models: no-op)
    summary = json.loads((model_dir / "train_summary.json").read_text())
    print(f"cycle {cycle}: {n_examples} examples, loss {summary.get('train_loss')}, "
          f"{time.perf_counter() - start:.0f} s -> {final}")
    rows.append({"cycle": cycle, "student": current, **stats, "examples": n_examples,
                 "train_loss": summary.get("train_loss"), "model": str(final)})
    current = str(final)

final_name = f"{method}-{cycles}step"
(root / "manifest.json").write_text(json.dumps({
    "profile": profile, "method": method, "cycles": cycles, "training": training,
    "models": {final_name: {"final": current, "method": method, "cycles": cycles},
               **{f"{method}-cycle{r['cycle']}": {"final": r["model"], "method": method, "cycles": r["cycle"]}
                  for r in rows}},
    "rows": rows}, indent=2))
print(f"{final_name}: {current}")
pd.DataFrame(rows)[["cycle", "solved", "problems", "fallback_rate", "avg_tokens", "examples"]]
