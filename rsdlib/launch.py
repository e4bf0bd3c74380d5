"""Command lines of the two long stages, alone or under a launcher, and the notebooks' torchrun call (issue 13).

    python -m rsdlib.traces --profile demo --method rsd-p1 [--out DIR]
    python -m rsdlib.evaluate --params params/paper/40_evaluate.yaml --model rsd-p1 [--out DIR]
    torchrun --standalone --nproc-per-node 8 -m rsdlib.traces ...      # the same job on 8 GPUs

``--params`` is a stage notebook's parameter file (``params/<profile>/10_generate_traces.yaml`` or
``40_evaluate.yaml``), ``--profile`` a profile whose own file is read (none for the demo: the
notebook's defaults): the notebook's declared defaults, then the file's values, checked as
``rsdlib reproduce`` checks them (unknown keys and wrong types refused). The job is built from them
as notebook 10 / 40 builds it and run by the same functions (``rsdlib.traces.run_trace_job``,
``rsdlib.evaluate.evaluate``); under torchrun / srun each rank does its share (``rsdlib.distributed``).
Notebooks 10 and 40 with ``workers > 1`` write their parameters to a file, run the stage through
``torchrun --standalone --nproc-per-node <workers>`` (``run_with_torchrun``) with the hash of the
config they built (``--expect-hash``: the command refuses to run another config), and read the
merged result.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Sequence

from rsdlib import distributed, paths
from rsdlib.store import read_json, write_json_atomic

TRACES_NOTEBOOK, EVAL_NOTEBOOK = "10_generate_traces", "40_evaluate"


def stage_params(notebook: str, path: str | Path | None = None, profile: str | None = None) -> dict:
    """The notebook's defaults overlaid with a parameter file's values (checked); ``profile`` filled in.

    Without ``path``: the profile's own file (``params/<profile>/<notebook>.yaml``; none for the demo,
    whose values are the notebook's defaults), as ``rsdlib reproduce`` runs it. With ``path``: the
    profile is ``profile``, else the file's ``profile`` key, else its folder's name when that is a
    profile (``params/<profile>/...``), else "demo".
    """

    from rsdlib.reproduce import (
        PROFILES,
        ParameterError,
        check_parameters,
        notebook_parameters,
        read_params_yaml,
        resolved_params,
    )

    if path is None:
        return resolved_params(profile or "demo", notebook)
    path = Path(path)
    values = read_params_yaml(path)  # a dangling link or /dev/null is refused
    if not isinstance(values, dict):
        raise ParameterError(f"{path}: expected a mapping of parameter names to values")
    declared = notebook_parameters(notebook)
    check_parameters(notebook, values, declared, source=str(path))
    params = {name: p.default for name, p in declared.items()}
    params.update(values)
    if profile:
        params["profile"] = profile
    elif "profile" not in values:
        params["profile"] = path.parent.name if path.parent.name in PROFILES else "demo"
    return params


def notebook_values(notebook: str, namespace: dict) -> dict:
    """The parameters ``notebook`` declares, as they are in ``namespace`` (a notebook's globals)."""
    from rsdlib.reproduce import notebook_parameters

    return {name: namespace[name] for name in notebook_parameters(notebook) if name in namespace}


def save_params(notebook: str, namespace: dict, path: str | Path) -> Path:
    """Write the parameters ``notebook`` declares, as they are in ``namespace`` (a notebook's globals)."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    values = notebook_values(notebook, namespace)
    path.write_text(yaml.safe_dump(values, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def run_with_torchrun(module: str, args: Sequence[str], workers: int, *, echo=print) -> None:
    """``torchrun --standalone --nproc-per-node <workers> -m <module> <args>`` (a free port; one machine), the
    ranks seeing every GPU of the stage (``rsdlib.distributed.run_ranks``).

    Raises RuntimeError with the end of its output when any rank fails.
    """
    distributed.run_ranks(module, args, workers, echo=echo)


def _expect(cfg, expected: str | None) -> None:
    if isinstance(expected, list):
        expected = expected[0] if expected else None
    if expected and cfg.hash() != expected:
        raise SystemExit(f"error: this command built a config with hash {cfg.hash()}, the caller expected {expected}: "
                         "the notebook and rsdlib.launch build the job differently (update one of them)")


# ----------------------------------------------------------------------------------------------
# Trace generation: python -m rsdlib.traces
# ----------------------------------------------------------------------------------------------
def _stage_parser(module: str, notebook: str, description: str, own: dict[str, dict]) -> argparse.ArgumentParser:
    """The arguments both stage command lines share (where the parameters come from, the expected hash), then
    the stage's ``own`` ({flag: add_argument keywords})."""
    p = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    p.add_argument("--params", help=f"a parameter file of notebook {notebook} (default: the profile's, "
                   f"params/<profile>/{notebook}.yaml)")
    p.add_argument("--profile",
                   help="results/<profile>; with no --params, also the profile's parameters (default: demo)")
    p.add_argument("--expect-hash", nargs="+", help=f"refuse to run unless the jobs' config hashes are these, one per "
                   f"job (notebook {notebook} passes them)")
    for flag, kw in own.items():
        p.add_argument(flag, **kw)
    return p


def _start(notebook: str, ns: argparse.Namespace) -> tuple["distributed.World", dict]:
    """This process's place among the ranks (process group joined) and the stage's parameters."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # CUDA checks through NVML: no context before a GPU
    world = distributed.World.from_env()
    distributed.init(world)
    return world, stage_params(notebook, ns.params, ns.profile)


def trace_main(argv: Sequence[str] | None = None) -> int:
    from rsdlib.models import load_pair
    from rsdlib.traces import method_job_config, run_trace_job, trace_problems

    p = _stage_parser("rsdlib.traces", TRACES_NOTEBOOK, "Generate methods' traces (notebook 10's jobs), one after "
                      "the other with the pair loaded once; under torchrun / srun each rank does its share.", {
                          "--method": {"nargs": "+", "help": "methods of the file's `methods`, run in this order "
                                       "(required unless --job)"},
                          "--job": {"help": "a job file instead (notebook 35's cycles: the trace-job config, models "
                                    "and problem ids; rsdlib.multistep.run_cycle_traces writes it)"},
                          "--out": {"help": "run folder of a single method (default: "
                                    "results/<profile>/traces/<pair>/<method>)"},
                          "--pair": {"default": "main", "help": "main, or a run of the file's extra_pairs"},
                          "--restrict-to": {"help": "only the problems this run folder solved; 'none' for all "
                                            "(default: the main teacher's folder when restrict_to_teacher_solved "
                                            "and the method is not teacher)"},
                          "--force": {"action": "store_true", "help": "redo the run"}})
    ns = p.parse_args(argv)
    if ns.job:
        return _trace_job_file(ns)
    if not ns.method:
        p.error("--method is required (or --job)")
    if ns.out and len(ns.method) > 1:
        p.error("--out names the run folder of one method; several methods go to results/<profile>/traces/<pair>/")
    if ns.expect_hash and len(ns.expect_hash) != len(ns.method):
        p.error(f"--expect-hash: {len(ns.expect_hash)} hash(es) for {len(ns.method)} method(s)")
    world, params = _start(TRACES_NOTEBOOK, ns)
    if ns.pair == "main":
        teacher, student = params["teacher"], params["student"]
    elif ns.pair in params["extra_pairs"]:
        teacher, student = params["extra_pairs"][ns.pair]["teacher"], params["extra_pairs"][ns.pair]["student"]
    else:
        p.error(f"--pair {ns.pair!r}: not main nor a run of extra_pairs ({', '.join(params['extra_pairs'])})")
    configs = [method_job_config(params, method, teacher, student) for method in ns.method]
    for cfg, expected in zip(configs, ns.expect_hash or [None] * len(configs)):
        _expect(cfg, expected)
    trace_root = paths.results_dir(params["profile"]) / "traces"
    problems = trace_problems(params)
    pair = load_pair(teacher, student, dtype=params["dtype"], device=distributed.device_for(world, params["device"]))
    for method, cfg in zip(ns.method, configs):  # in order: the teacher's run is merged before a method reads it
        out = Path(ns.out) if ns.out else paths.results_path(params["profile"], "traces", ns.pair, method)
        if ns.restrict_to:
            restrict = None if ns.restrict_to == "none" else Path(ns.restrict_to)
        else:
            restricted = params["restrict_to_teacher_solved"] and method != "teacher"
            restrict = trace_root / "main" / "teacher" if restricted else None
        summary = run_trace_job(pair, problems, cfg, out, restrict_to=restrict, force=ns.force,
                                progress=world.is_main)
        if world.is_main:
            print(json.dumps(summary))
    return 0


def _trace_job_file(ns: argparse.Namespace) -> int:
    """``python -m rsdlib.traces --job FILE --out DIR``: the job a notebook-35 cycle wrote, on this rank."""
    from rsdlib.config import load_yaml_config
    from rsdlib.data import load_benchmark
    from rsdlib.models import load_pair
    from rsdlib.traces import TraceJobConfig, run_trace_job

    if not ns.out:
        raise SystemExit("error: --job needs --out (the cycle's trace folder)")
    job = read_json(Path(ns.job))
    world = distributed.World.from_env()
    distributed.init(world)
    cfg = load_yaml_config(TraceJobConfig, job["config"])
    _expect(cfg, ns.expect_hash or job.get("expect_hash"))
    wanted = set(job["problem_ids"])
    problems = [p for p in load_benchmark(job["benchmark"], source=job["source"]) if p.id in wanted]
    pair = load_pair(job["teacher"], job["student"], dtype=job["dtype"], device=distributed.device_for(world, "auto"))
    restrict = Path(job["restrict_to"]) if job.get("restrict_to") else None
    summary = run_trace_job(pair, problems, cfg, Path(ns.out), restrict_to=restrict, force=ns.force or job["force"],
                            progress=world.is_main)
    if world.is_main:
        print(json.dumps(summary))
    return 0


def traces_with_torchrun(params_file: Path, method: str, out: Path, workers: int, *, pair: str = "main",
                         restrict_to: Path | None = None, force: bool = False, expect_hash: str | None = None) -> dict:
    """Notebook 10 with ``workers > 1``: the method's job through torchrun; returns the merged summary."""
    args = ["--params", params_file, "--method", method, "--out", out, "--pair", pair,
            "--restrict-to", restrict_to or "none"]
    args += ["--force"] * force + (["--expect-hash", expect_hash] if expect_hash else [])
    run_with_torchrun("rsdlib.traces", args, workers)
    return read_json((Path(out) / "summary.json"))


def pair_traces_with_torchrun(params_file: Path, methods: Sequence[str], trace_root: Path, workers: int, *,
                              pair: str = "main", restrict_to: str | Path | None = None, force: bool = False,
                              expect_hashes: Sequence[str] = ()) -> dict:
    """Notebook 10 with ``workers > 1``: every method of one pair in ONE torchrun launch (the ranks load the pair
    once), in order; ``restrict_to`` (a folder or "none") for all of them, or by default as ``python -m
    rsdlib.traces`` restricts each (the main teacher's solved problems when ``restrict_to_teacher_solved``, the
    teacher itself not); returns {method: summary}."""
    args = ["--params", params_file, "--method", *methods, "--pair", pair]
    args += ["--restrict-to", restrict_to] if restrict_to is not None else []
    args += ["--force"] * force + (["--expect-hash", *expect_hashes] if expect_hashes else [])
    run_with_torchrun("rsdlib.traces", args, workers)
    return {m: read_json(Path(trace_root) / pair / m / "summary.json") for m in methods}


# ----------------------------------------------------------------------------------------------
# Evaluation: python -m rsdlib.evaluate
# ----------------------------------------------------------------------------------------------
def eval_config(params: dict, name: str):
    """Notebook 40's EvalConfig for model ``name``: the traces' prompt unless `evaluation` sets one."""
    from rsdlib.evaluate import model_eval_config, stage_eval_config

    return model_eval_config(params, stage_eval_config(params, need_traces=False)[1], name)


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    from rsdlib.evaluate import evaluate, model_stamp, resolve_model

    p = _stage_parser("rsdlib.evaluate", EVAL_NOTEBOOK, "Evaluate models (notebook 40's job), one after the other; "
                      "under torchrun / srun each rank does its share of the samples.", {
                          "--model": {"required": True, "nargs": "+",
                                      "help": "base, a trained method, an extra model, or a model spec (several: in "
                                      "this order)"},
                          "--out": {"help": "evaluation folder of a single model (default: "
                                    "results/<profile>/eval/<model>)"},
                          "--force": {"action": "store_true", "help": "delete the folders' results first"},
                          "--force-model": {"action": "append", "default": [],
                                            "help": "delete this model's results first (repeatable)"}})
    ns = p.parse_args(argv)
    if ns.out and len(ns.model) > 1:
        p.error("--out names the folder of one model; several models go to results/<profile>/eval/<model>")
    if ns.expect_hash and len(ns.expect_hash) != len(ns.model):
        p.error(f"--expect-hash: {len(ns.expect_hash)} hash(es) for {len(ns.model)} model(s)")
    world, params = _start(EVAL_NOTEBOOK, ns)
    configs = [eval_config(params, name) for name in ns.model]
    for cfg, expected in zip(configs, ns.expect_hash or [None] * len(configs)):
        _expect(cfg, expected)
    for name, cfg in zip(ns.model, configs):
        # a vLLM engine runs in a spawned process that sees only this rank's GPU (rsdlib.vllmproc)
        where = resolve_model(params["profile"], name, params["extra_models"], strict=False)
        out = Path(ns.out) if ns.out else paths.results_path(params["profile"], "eval", name)
        summaries = evaluate(where, cfg, out, force=ns.force or name in ns.force_model, progress=world.is_main)
        if world.is_main:  # the stamp notebook 40 checks: a hand-run evaluation is not redone by the notebook
            write_json_atomic(out / "model_stamp.json", model_stamp(where), indent=None)
            print(json.dumps({b: {k: s[k] for k in ("score", "n_samples", "ranks")} for b, s in summaries.items()}))
    return 0


def evaluate_with_torchrun(params_file: Path, model: str, out: Path, workers: int, benchmarks: Sequence[str], *,
                           force: bool = False, expect_hash: str | None = None) -> dict:
    """Notebook 40 with ``workers > 1``: one model's evaluation through torchrun; returns {benchmark: summary}."""
    args = ["--params", params_file, "--model", model, "--out", out]
    args += ["--force"] * force + (["--expect-hash", expect_hash] if expect_hash else [])
    run_with_torchrun("rsdlib.evaluate", args, workers)
    return {b: read_json((Path(out) / b / "summary.json")) for b in benchmarks}


# ----------------------------------------------------------------------------------------------
# Notebook 10 with workers > 1 loads no model in its kernel (the ranks do)
# ----------------------------------------------------------------------------------------------
class TokenizerOnly:
    """Stands for the model pair where the kernel needs only the student's tokenizer (the reference traces)."""

    def __init__(self, student_tokenizer):
        self.student_tokenizer = student_tokenizer


def student_tokenizer(student: str):
    """The tokenizer of a model spec without loading its weights (a .gguf file is loaded whole)."""
    from rsdlib.models import model_location
    from rsdlib.train import model_source

    source = model_source(model_location(student))
    if str(source).endswith(".gguf"):
        from rsdlib.models import load_model

        return load_model(source, device="cpu")[1]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source)


def workers_for(workers: int) -> int:
    """Processes for a stage notebook's ``workers``: as given, or 0 = one per device
    (``rsdlib.distributed.workers_for``: the driver's GPUs, or ``RSDLIB_CPU_DEVICES`` CPU devices; 1 without any)."""
    return distributed.workers_for(workers)


def models_with_torchrun(params_file: Path, models: Sequence[str], eval_root: Path, workers: int,
                         benchmarks: Sequence[str], *, force: Sequence[str] = (),
                         expect_hashes: Sequence[str] = ()) -> dict[str, dict]:
    """Notebook 40 with ``workers > 1``: every model's evaluation in ONE torchrun launch, in order (``force``: the
    models whose results are deleted first); returns {model: {benchmark: summary}}."""
    args = ["--params", params_file, "--model", *models]
    for name in force:
        args += ["--force-model", name]
    args += ["--expect-hash", *expect_hashes] if expect_hashes else []
    run_with_torchrun("rsdlib.evaluate", args, workers)
    return {m: {b: read_json(Path(eval_root) / m / b / "summary.json") for b in benchmarks}
            for m in models}
