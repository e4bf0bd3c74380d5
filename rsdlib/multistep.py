"""Notebook 35's stage: multi-step RSD (Section 5.4, Appendix E, Table 5).

In each cycle RSD traces are generated with the *current* student (notebook 10's problems, prompt and
trace-job config of ``method``, only the student changes), the current student is trained on them, and
the trained model becomes the next cycle's student. Cycle 1's student is the base student, so cycle 1
reuses notebook 10's traces. Writes ``results/<profile>/multistep/cycle<c>/traces/`` (cycles 2, 3, ...),
``cycle<c>/model/`` and ``multistep/manifest.json``, which names the model after the last cycle
``<method>-<cycles>step`` (and each cycle's ``<method>-cycle<c>``) for the evaluation notebook.

With ``workers`` > 1 (0: one per device, ``rsdlib.distributed.workers_for``) both halves of a cycle run as
torchrun ranks: the traces through ``python -m rsdlib.traces --job <cycle>/traces/job_request.json`` (each
rank its share of the units, merged as one process writes them) and the training as DDP
(``rsdlib.train.train_launched``), with the effective batch of ``training``.
"""

from __future__ import annotations

import dataclasses
import shutil
import time

from rsdlib import paths
from rsdlib.config import load_yaml_config
from rsdlib.store import read_json, write_json_atomic


def check_multistep_params(params: dict) -> dict:
    """Refuse bad parameters before any work; returns notebook 10's trace manifest."""
    from rsdlib.train import TrainConfig

    manifest = read_json(paths.input_file(params["profile"], "traces", "manifest.json"))
    method, training = params["method"], params["training"]
    paths.check_name(method, "method")  # names folders (traces/main/<method>) and models
    if method not in manifest["methods"].get("main", []):
        raise ValueError(f"method {method!r} has no traces of pair main; "
                         f"notebook 10 made {manifest['methods']['main']}")
    if params["cycles"] < 1:
        raise ValueError("cycles must be at least 1")
    for bad in ("model", "output_dir"):
        if bad in training:
            raise ValueError(f"training.{bad} is set by this notebook (the current student / multistep/cycle<c>/model)")
    if training.get("lora") and not training.get("merge_lora", True):
        raise ValueError("training.lora needs merge_lora: true here: each cycle's model is the next cycle's student")
    load_yaml_config(TrainConfig, {**training, "model": "check"})  # unknown keys and ranges refused before any work
    return manifest


def run_multistep(params: dict) -> list[dict]:
    """Every cycle (traces, then training), then ``multistep/manifest.json``; returns one row per cycle."""
    from rsdlib.data import load_benchmark
    from rsdlib.distributed import workers_for
    from rsdlib.models import model_identity, model_location
    from rsdlib.standins import carry_steering
    from rsdlib.traces import TraceJobConfig, check_trainable, trace_run_stats
    from rsdlib.train import TrainConfig, train_launched

    manifest = check_multistep_params(params)
    profile, method, cycles, training, force = (params[k] for k in ("profile", "method", "cycles", "training", "force"))
    results = paths.results_dir(profile)
    first_dir = results / "traces" / "main" / method
    stored = read_json((first_dir / "config.json"))
    base_job = load_yaml_config(TraceJobConfig, stored["config"])
    if base_job.decoding.mode not in ("rsd", "skd"):
        raise ValueError(f"method {method!r} is a {base_job.decoding.mode!r} run; multi-step RSD needs an rsd "
                         "(or skd) method")
    # the problems of notebook 10's run: attempted (teacher-solved when restricted) + prefix-only (the hybrid recipe)
    wanted = set(stored["problems"]) | set(stored.get("prefix_only_problems", []))
    problems = [p for p in load_benchmark(manifest["benchmark"], source=manifest.get("source", "shipped"))
                if p.id in wanted]
    restrict_dir = results / "traces" / "main" / "teacher" if manifest.get("restrict_to_teacher_solved") else None
    teacher = manifest["pairs"]["main"]["teacher"]
    root = results / "multistep"
    root.mkdir(parents=True, exist_ok=True)
    workers = workers_for(params.get("workers", 1))
    print(f"{cycles} cycle(s) of {method} (threshold {base_job.decoding.threshold}) on {len(problems)} problems; "
          f"{training.get('epochs')} epoch(s) per cycle; {workers} process(es)")
    rows = []
    current = model_location(manifest["pairs"]["main"]["student"])
    for cycle in range(1, cycles + 1):
        cycle_dir = root / f"cycle{cycle}"
        if cycle == 1:
            trace_dir = first_dir  # the base student's traces: notebook 10 already made them
        else:
            trace_dir = cycle_dir / "traces"
            # the student by its content, never by its folder: a retrained cycle-(c-1) model is another student
            job = dataclasses.replace(base_job, method=f"{method}-cycle{cycle}", student=model_identity(current))
            stale = _made_by_another_job(trace_dir, job)
            if stale:  # these traces (and the model trained on them) come from another student or config
                print(f"cycle {cycle}: {stale}: regenerating its traces and retraining its model")
                shutil.rmtree(paths.check_inside(cycle_dir / "model", results, "multi-step model folder"),
                              ignore_errors=True)
            start = time.perf_counter()
            run_cycle_traces(teacher, current, params["dtype"], problems, job, trace_dir, restrict_dir,
                             force or bool(stale), workers,
                             benchmark=manifest["benchmark"], source=manifest.get("source", "shipped"))
            print(f"cycle {cycle}: traces in {time.perf_counter() - start:.0f} s")
        stats = trace_run_stats(trace_dir)
        dataset = trace_dir / "dataset.jsonl"
        composition = check_trainable(dataset, f"cycle {cycle}", require_kept=params["require_kept_traces"])
        n_examples = composition["training_examples"]
        print(f"cycle {cycle}: training set {composition['full_examples']} full + {composition['prefix_examples']} "
              f"prefix = {n_examples} examples")
        model_dir = cycle_dir / "model"
        if force and model_dir.exists():
            shutil.rmtree(paths.check_inside(model_dir, results, "multi-step model folder"))
        cfg = load_yaml_config(TrainConfig, {**training, "model": current, "output_dir": str(model_dir)})
        start = time.perf_counter()
        final = train_launched(cfg, dataset, workers)
        carry_steering(current, final)  # the dry run's stand-ins stay steered after fine-tuning (real models: no-op)
        summary = read_json((model_dir / "train_summary.json"))
        print(f"cycle {cycle}: {n_examples} examples, loss {summary.get('train_loss')}, "
              f"{time.perf_counter() - start:.0f} s -> {final}")
        rows.append({"cycle": cycle, "student": paths.portable(current, results), **stats, "examples": n_examples,
                     "train_loss": summary.get("train_loss"), "model": paths.portable(final, results),
                     "world_size": summary.get("world_size")})
        current = str(final)
    final_name = f"{method}-{cycles}step"
    write_json_atomic(root / "manifest.json", {
        "profile": profile, "method": method, "cycles": cycles, "training": training, "world_size": workers,
        "models": {final_name: {"final": paths.portable(current, results), "method": method, "cycles": cycles},
                   **{f"{method}-cycle{r['cycle']}": {"final": r["model"], "method": method, "cycles": r["cycle"]}
                      for r in rows}},
        "rows": rows})
    print(f"{final_name}: {current}")
    return rows


def _made_by_another_job(trace_dir, job) -> str:
    """Why a cycle's trace folder is stale ("" when it is this job's, or empty): its stored config hash differs,
    e.g. because the previous cycle's model was retrained (the job's ``student`` is that model's content)."""
    path = trace_dir / "config.json"
    if not path.is_file():
        return ""
    stored = read_json(path)
    if stored.get("hash") == job.hash():
        return ""
    if stored.get("config", {}).get("student") != job.student:
        return "its student (the previous cycle's model) changed"
    return "its trace config changed"


def run_cycle_traces(teacher: str, student: str, dtype: str, problems: list, job, out, restrict_dir, force: bool,
                     workers: int, *, benchmark: str = "", source: str = "shipped") -> None:
    """One cycle's traces: ``run_trace_job`` in this process, or as ``workers`` torchrun ranks through the job
    file ``<out>/job_request.json`` (``python -m rsdlib.traces --job FILE``: the same job, problems and folder)."""
    from rsdlib.config import config_to_dict

    if workers <= 1:
        from rsdlib.models import load_pair
        from rsdlib.traces import run_trace_job

        pair = load_pair(teacher, student, dtype=dtype)
        run_trace_job(pair, problems, job, out, restrict_to=restrict_dir, force=force, progress=True)
        return
    from rsdlib.distributed import run_ranks
    from rsdlib.models import model_location

    model_location(teacher)  # a stand-in folder made once here, not by every rank at once
    out.mkdir(parents=True, exist_ok=True)
    request = out / "job_request.json"
    write_json_atomic(request, {
        "teacher": teacher, "student": student, "dtype": dtype, "benchmark": benchmark,
        "source": source, "problem_ids": [p.id for p in problems], "config": config_to_dict(job),
        "restrict_to": str(restrict_dir) if restrict_dir else None, "force": force, "expect_hash": job.hash()},
        indent=1)
    run_ranks("rsdlib.traces", ["--job", request, "--out", out], workers)
