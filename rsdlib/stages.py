"""The stage notebooks' one call each where a stage may fan out over GPUs: trace generation (notebook
10) and evaluation (notebook 40).

These functions sit above the library they orchestrate: they read a notebook's parameters, run
``rsdlib.traces`` / ``rsdlib.evaluate`` in this process, or hand the work to ``torchrun`` ranks through
``rsdlib.launch`` when ``workers`` > 1, and write the stage's summary files. Keeping them here (not in
traces.py / evaluate.py) keeps the import graph one-way: launch imports traces and evaluate, this
module imports launch, and nothing below imports this module.
"""

from __future__ import annotations

import time

from rsdlib import launch, paths, reference
from rsdlib.config import config_to_dict
from rsdlib.evalproc import evaluate_isolated, isolate_models
from rsdlib.evaluate import (
    EVAL_NOTEBOOK,
    check_eval_params,
    evaluate,
    model_eval_config,
    model_stamp,
    score_row,
    write_grading,
)
from rsdlib.models import load_pair, model_location
from rsdlib.prompts import prompt_ids, prompt_style
from rsdlib.store import RunConflictError, check_writable, read_json, write_json_atomic
from rsdlib.traces import (
    TRACES_NOTEBOOK,
    check_trace_params,
    context_warning,
    method_job_config,
    run_trace_job,
    trace_problems,
    trace_run_stats,
    write_reference_run,
)


def run_trace_stage(params: dict) -> dict[str, dict[str, dict]]:
    """Notebook 10: every method of the main pair (the teacher first, the others on the problems it solved
    when ``restrict_to_teacher_solved``), the reference traces, the extra pairs' methods, and
    ``traces/manifest.json``. Returns {pair run: {method: trace_run_stats row}}."""
    check_trace_params(params)
    profile, methods, force = params["profile"], params["methods"], params["force"]
    trace_root = check_writable(paths.results_path(profile, "traces"), "notebook 10's traces")
    problems = trace_problems(params)
    print(f"{len(problems)} {params['benchmark']} problems ({params['pick']}, split {params['split']}); "
          f"methods: {', '.join(methods)}")
    pairs = {"main": (params["teacher"], params["student"])}
    workers = launch.workers_for(params["workers"])
    print(f"{workers} process(es) per method{' (torchrun ranks)' if workers > 1 else ''}")
    params_file = None

    def run_method(pair, run: str, method: str, restrict_dir=None) -> dict:
        cfg = method_job_config(params, method, *pairs[run])
        out = paths.results_path(profile, "traces", run, method)  # keys checked: never outside results/<profile>
        start = time.perf_counter()
        try:
            run_trace_job(pair, problems, cfg, out, restrict_to=restrict_dir, force=force, progress=True)
        except RunConflictError as err:
            raise RunConflictError(f"{err}\nThe parameters changed since this run was made: rerun with force: true "
                                   f"(rsdlib reproduce --force) to regenerate it.") from None
        return method_stats(run, method, time.perf_counter() - start)

    def method_stats(run: str, method: str, seconds: float) -> dict:
        stats = {"method": method, **trace_run_stats(trace_root / run / method)}
        print(f"{run}/{method}: solved {stats['solved']}/{stats['problems']}, {stats['samples']} samples; "
              f"training set {stats['solved']} full + {stats['prefix_examples']} prefix = "
              f"{stats['training_examples']} examples ({stats['prefix_only_problems']} prefix-only problems), "
              f"{seconds:.0f} s")
        return stats

    def launch_pair(run: str, names: list[str], restrict_to=None) -> dict[str, dict]:
        """workers > 1: the pair's methods in one torchrun launch (the ranks load the pair once); each rank
        generates its share of a method's (problem, sample) units, rank 0 merges them."""
        start = time.perf_counter()
        hashes = [method_job_config(params, m, *pairs[run]).hash() for m in names]
        launch.pair_traces_with_torchrun(params_file, names, trace_root, workers, pair=run, restrict_to=restrict_to,
                                         force=force, expect_hashes=hashes)
        seconds = (time.perf_counter() - start) / len(names)
        print(f"{run}: {len(names)} method(s) in one launch of {workers} ranks, {seconds * len(names):.0f} s")
        return {m: method_stats(run, m, seconds) for m in names}

    if workers > 1:  # the ranks load the models; this kernel needs only the student's tokenizer
        for spec in {params["teacher"], params["student"], *(m for e in params["extra_pairs"].values()
                                                             for m in (e["teacher"], e["student"]))}:
            model_location(spec)  # tiny / stand-in folders made once here, not by every rank at once
        params_file = launch.save_params(TRACES_NOTEBOOK, params, trace_root / "launch_params.yaml")
        pair = launch.TokenizerOnly(launch.student_tokenizer(params["student"]))
    else:
        pair = load_pair(params["teacher"], params["student"], dtype=params["dtype"], device=params["device"])
        print(f"pair {pair.name}: student-only ids {len(pair.bridge.student_only)}")
        job = method_job_config(params, "teacher", *pairs["main"])  # the prompt and budget every method shares
        warning = context_warning({p.id: len(prompt_ids(pair.student_tokenizer, p, job.prompt)) for p in problems},
                                  getattr(pair.student.config, "max_position_embeddings", None),
                                  job.decoding.max_new_tokens)
        if warning:
            print(f"WARNING: {warning}")
    restrict_dir = trace_root / "main" / "teacher" if params["restrict_to_teacher_solved"] else None
    if workers > 1:  # the teacher first: the others read which problems it solved
        summaries = {"main": launch_pair("main", ["teacher", *(m for m in methods if m != "teacher")])}
    else:
        summaries = {"main": {"teacher": run_method(pair, "main", "teacher")}}
        for method in methods:
            if method != "teacher":
                summaries["main"][method] = run_method(pair, "main", method, restrict_dir)
    if params["reference"]:
        out = paths.results_path(profile, "traces", "main", "reference")
        summaries["main"]["reference"] = write_reference_run(params, pair.student_tokenizer, problems, out)
    del pair
    for run, extra in params["extra_pairs"].items():  # Tables 4 and 6: traces tailored to another student
        pairs[run] = (extra["teacher"], extra["student"])
        own_restrict, summaries[run] = restrict_dir, {}
        own_teacher = extra["teacher"] != params["teacher"] and restrict_dir is not None  # the teacher-solved
        others = [m for m in extra["methods"] if m != "teacher"]  # set is this teacher's own (R1-Distill's)
        if own_teacher:
            own_restrict = trace_root / run / "teacher"
        if workers > 1:
            if own_teacher:
                summaries[run].update(launch_pair(run, ["teacher"], "none"))
            summaries[run].update(launch_pair(run, others, own_restrict or "none"))
            continue
        other = load_pair(*pairs[run], dtype=params["dtype"], device=params["device"])
        if own_teacher:
            summaries[run]["teacher"] = run_method(other, run, "teacher")
        summaries[run].update({m: run_method(other, run, m, own_restrict) for m in others})
        del other
    transfers, transferred = params.get("transfers") or {}, {}
    if transfers:  # Table 4's Transferred and s1K-1.1 rows: pair main's training sets as text, for other students
        from transformers import AutoTokenizer

        from rsdlib.transfer import write_transfer_run

        main_tok = AutoTokenizer.from_pretrained(model_location(params["student"]))
        by_id, style = {p.id: p for p in problems}, prompt_style(params["prompt"])
        for run, spec in transfers.items():
            pairs[run] = ("transferred from main", spec["student"])
            target = AutoTokenizer.from_pretrained(model_location(spec["student"]))
            transferred[run] = {m: write_transfer_run(trace_root / "main" / m, trace_root / run / m, main_tok, target,
                                                      by_id, style, target=spec["student"], source=f"main/{m}")
                                for m in spec["methods"]}
            counts = ", ".join(f"{m} {row['training_examples']} examples" for m, row in transferred[run].items())
            print(f"{run}: {counts} re-tokenized for {spec['student']}")
    manifest = {
        "profile": profile, "benchmark": params["benchmark"], "source": params["source"],
        "problems": [p.id for p in problems],
        "pairs": {run: {"teacher": pairs[run][0], "student": pairs[run][1]} for run in [*summaries, *transferred]},
        "methods": {run: list(s) for run, s in summaries.items()}, "method_specs": methods,
        # re-tokenized training sets (no decoding, no samples): trained by notebook 30, not scored as traces
        "transfers": {run: list(s) for run, s in transferred.items()},
        "reference": params["reference"], "restrict_to_teacher_solved": params["restrict_to_teacher_solved"],
        "decoding": params["decoding"], "job": params["job"], "prompt": config_to_dict(prompt_style(params["prompt"])),
        "world_size": workers,
    }
    write_json_atomic(trace_root / "manifest.json", manifest)
    return summaries


def run_eval_stage(params: dict) -> dict[str, dict]:
    """Notebook 40: evaluate every model (a model retrained since its last evaluation is redone), then
    ``eval/summary.json``; returns {model: its row (accuracy in % per benchmark, Average, ...)}."""
    profile, force = params["profile"], params["force"]
    results = paths.results_dir(profile)
    evaluation, cfg, plan = check_eval_params(params)
    check_writable(results / "eval", "notebook 40's evaluations")
    print(f"benchmarks {cfg.benchmarks}; samples {[cfg.samples_for(b) for b in cfg.benchmarks]}; "
          f"max tokens {[cfg.max_tokens_for(b) for b in cfg.benchmarks]}")
    for name, where in plan.items():
        print(f"  {name}: {where or 'not trained (no examples): skipped'}")
    workers = launch.workers_for(params["workers"])
    print(f"{workers} process(es) per model{' (torchrun ranks)' if workers > 1 else ''}")
    todo = {}  # name -> (folder or spec, its config, its stamp, stale)
    for name, where in plan.items():
        if where is None:
            continue
        out = paths.results_path(profile, "eval", name)  # a model key names the folder: checked
        stamp = model_stamp(where)
        if (out / "model_stamp.json").is_file():
            stale = read_json((out / "model_stamp.json")) != stamp
        else:  # results of unknown provenance
            stale = (out / "config.json").is_file()
        if stale:
            print(f"{name}: the model changed since its last evaluation: redoing it")
        todo[name] = (where, model_eval_config(params, cfg, name), stamp, stale)
    launched = {}
    if workers > 1 and todo:  # one launch for every model: each rank evaluates its share of each model's units
        params_file = launch.save_params(EVAL_NOTEBOOK, params, results / "eval" / "launch_params.yaml")
        start = time.perf_counter()
        launched = launch.models_with_torchrun(params_file, list(todo), results / "eval", workers, cfg.benchmarks,
                                               force=[n for n, t in todo.items() if force or t[3]],
                                               expect_hashes=[t[1].hash() for t in todo.values()])
        print(f"{len(todo)} model(s) in one launch of {workers} ranks, {time.perf_counter() - start:.0f} s")
    scores = {}
    for name, (where, model_cfg, stamp, stale) in todo.items():
        out = results / "eval" / name
        if name in launched:
            summaries = launched[name]
        elif isolate_models(model_cfg):  # vLLM: one process per model, so each engine's GPU memory is freed
            summaries = evaluate_isolated(where, model_cfg, out, force=force or stale)
        else:
            summaries = evaluate(where, model_cfg, out, force=force or stale)
        write_json_atomic(out / "model_stamp.json", stamp, indent=None)
        scores[name] = score_row(summaries, cfg.benchmarks)
    doc = {"profile": profile, "benchmarks": list(cfg.benchmarks), "config": evaluation, "models": scores,
           "paper_metrics": reference.METRICS, "world_size": workers}
    (results / "eval").mkdir(parents=True, exist_ok=True)
    write_json_atomic(results / "eval" / "summary.json", doc)
    write_grading(results / "eval", "graded", {"answer_format": cfg.answer_format})  # every model graded alike
    return scores
