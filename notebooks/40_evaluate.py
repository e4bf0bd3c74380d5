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
# 1-2 min per model on CPU; paper (avg@64 on the AIMEs, avg@8 on GPQA, 500 MATH problems, 8-16k
# tokens) hours per model on one GPU with vLLM (not measured here).

# %%
import dataclasses
import json
from pathlib import Path

import pandas as pd

from rsdlib import launch, paths, reference
from rsdlib.config import load_yaml_config
from rsdlib.evalproc import evaluate_isolated, isolate_models
from rsdlib.evaluate import EvalConfig, evaluate
from rsdlib.models import model_location

# %% tags=["parameters"]
profile: str = "demo"  # results/<profile>
models: list = ["base", "reference", "teacher", "self-distill", "self-distill-ce", "skd", "rsd-p10", "rsd-p1", "rsd-p1-3step"]  # "base" is the untrained student of pair main; the others were trained on that method's traces
extra_models: dict = {}  # name -> model spec or "<pair>-<method>" of notebook 30, for Tables 3-5
evaluation: dict = {"benchmarks": ["aime24", "aime25", "gpqa_diamond", "math500"], "samples": {"aime24": 1, "aime25": 1, "gpqa_diamond": 1, "math500": 1}, "limit": {"aime24": 1, "aime25": 1, "gpqa_diamond": 2}, "math500_easiest": 6, "split_fraction": 0.5, "split_salt": "rsdlib-demo", "split_part": "b", "max_tokens": {"aime24": 192, "aime25": 192, "gpqa_diamond": 192, "math500": 256}, "think_budget": {"gpqa_diamond": 160}, "temperature": 0.7, "top_p": 0.95, "batch_size": 8}  # EvalConfig keys; here 1 AIME problem of each year and 2 GPQA at 192 tokens (they only exercise the path), and the 6 easiest MATH500 problems of the hash half trace generation never used (split_part b of the split of notebook 10) at 256
force: bool = False  # redo the evaluation even if finished samples exist
workers: int = 1  # processes per model: above 1, torchrun --nproc-per-node workers (one model per GPU, rsdlib.distributed); 0: one per GPU
answer_from: dict = {}  # model name -> auto | after_thinking | whole (where answers are read; unlisted: evaluation's answer_from, default auto)

# %%
results = paths.results_dir(profile)
traces_manifest = json.loads(paths.input_file(profile, "traces", "manifest.json").read_text())
# the students are asked exactly as during trace generation unless `evaluation` sets its own prompt
if evaluation.get("backend") == "auto":  # vLLM where it is installed and a GPU is visible, else rsdlib's HF decoder
    import importlib.util

    import torch

    evaluation = {**evaluation, "backend": "vllm" if importlib.util.find_spec("vllm") and torch.cuda.is_available() else "hf"}
    print(f"backend auto -> {evaluation['backend']}")
cfg = load_yaml_config(EvalConfig, {"prompt": traces_manifest["prompt"], **evaluation})  # unknown keys refused
models_path = results / "models" / "manifest.json"
trained = json.loads(models_path.read_text())["models"] if models_path.is_file() else {}
multistep_path = results / "multistep" / "manifest.json"  # notebook 35: <method>-<n>step models
if multistep_path.is_file():
    trained.update(json.loads(multistep_path.read_text())["models"])


def resolve(name: str) -> str | None:
    """Model folder/spec of a model name: base, a method of pair main, <pair>-<method>, or a spec."""
    if name == "base":
        return model_location(traces_manifest["pairs"]["main"]["student"])
    for key in (f"main-{name}", name):
        if key in trained:
            return trained[key]["final"]
    spec = extra_models.get(name)
    if spec is None:
        raise ValueError(f"unknown model {name!r}: not 'base', not trained by notebook 30 ({sorted(trained)}), "
                         f"not in extra_models")
    return trained[spec]["final"] if spec in trained else model_location(spec)


plan = {name: resolve(name) for name in [*models, *extra_models]}
unknown = sorted(set(answer_from) - set(plan))
if unknown:
    raise ValueError(f"answer_from: unknown model name(s) {unknown}; models: {sorted(plan)}")
print(f"benchmarks {cfg.benchmarks}; samples {[cfg.samples_for(b) for b in cfg.benchmarks]}; "
      f"max tokens {[cfg.max_tokens_for(b) for b in cfg.benchmarks]}")
for name, where in plan.items():
    print(f"  {name}: {where or 'not trained (no examples): skipped'}")

# %%
NAMES = {"aime24": "AIME24", "aime25": "AIME25", "gpqa_diamond": "GPQA Diamond", "math500": "MATH500"}
def model_stamp(where: str) -> dict:
    """What identifies the weights behind ``where``: a retrained model in the same folder must be re-evaluated."""
    folder = Path(where)
    if not folder.is_dir():
        return {"spec": where}  # a hub id or embedded: spec
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".json"))
    return {"spec": where, "files": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files}}


workers = launch.workers_for(workers)
scores = {}
for name, where in plan.items():
    if where is None:
        continue
    out = results / "eval" / name
    stamp = model_stamp(where)
    if (out / "model_stamp.json").is_file():
        stale = json.loads((out / "model_stamp.json").read_text()) != stamp
    else:  # results of unknown provenance
        stale = (out / "config.json").is_file()
    if stale:
        print(f"{name}: the model changed since its last evaluation: redoing it")
    model_cfg = dataclasses.replace(cfg, answer_from=answer_from.get(name, cfg.answer_from))  # validated again
    if workers > 1:  # each rank evaluates its share of the (problem, sample) units; rank 0 merges them
        params_file = launch.save_params("40_evaluate", globals(), results / "eval" / "launch_params.yaml")
        summaries = launch.evaluate_with_torchrun(params_file, name, out, workers, cfg.benchmarks, force=force or stale,
                                                  expect_hash=model_cfg.hash())
    elif isolate_models(model_cfg):  # vLLM: one process per model, so each engine's GPU memory is freed (rsdlib.evalproc)
        summaries = evaluate_isolated(where, model_cfg, out, force=force or stale)
    else:
        summaries = evaluate(where, model_cfg, out, force=force or stale)
    (out / "model_stamp.json").write_text(json.dumps(stamp))
    row = {NAMES.get(b, b): 100 * s["score"] for b, s in summaries.items()}
    row["Average"] = sum(row.values()) / len(row) if len(row) == len(cfg.benchmarks) else None
    row["no answer (%)"] = 100 * sum(s["no_answer_rate"] * s["n_samples"] for s in summaries.values()) / \
        max(1, sum(s["n_samples"] for s in summaries.values()))
    row["problems"] = {b: s["n_problems"] for b, s in summaries.items()}
    row["metric"] = {b: s["paper_metric"] for b, s in summaries.items()}
    row["answers_found"] = {b: s["answers_found"] for b, s in summaries.items()}  # boxed / stated / last_expression / none
    scores[name] = row
doc = {"profile": profile, "benchmarks": list(cfg.benchmarks), "config": evaluation, "models": scores,
       "paper_metrics": reference.METRICS}
(results / "eval").mkdir(parents=True, exist_ok=True)
(results / "eval" / "summary.json").write_text(json.dumps(doc, indent=2))
found = pd.DataFrame({(k, NAMES.get(b, b)): {f: round(100 * v, 1) for f, v in per.items()}
                      for k, r in scores.items() for b, per in r["answers_found"].items()}).T
print("how answers were found (% of samples):")
print(found.to_string())
pd.DataFrame({k: {c: v for c, v in r.items() if c not in ("problems", "metric", "answers_found")}
              for k, r in scores.items()}).T
