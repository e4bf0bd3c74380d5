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
# # 10 · Generate the training traces of every method
#
# **Paper:** Algorithm 1 (RSD) and the baselines of Section 4.1: teacher-generated, self-distill
# (student-generated), SKD-inspired (student proposes, teacher approves at 1%) and RSD at each
# threshold, all by rejection sampling (Section 3.1) with UPFT prefixes for unsolved problems
# (Section 3.3). As in the paper's "/234", the teacher runs first and the other methods are restricted
# to the problems it solved. A "reference" method stores pre-existing traces (the paper's s1K-1.1;
# offline, the benchmark's own worked solutions stand in for them). Tables 2 and 6 and Figures 2, 3,
# 5-7 read what this writes.
#
# **Reads:** the benchmark problems (`benchmark`, from the copy shipped in rsdlib or, with `source: hub`,
# the hub; trace problems are the `split_by_hash` half never used for evaluation when `split: trace`),
# the model pair.
#
# **Writes:** `results/<profile>/traces/<pair>/<method>/` with `config.json`, `samples.jsonl`,
# `dataset.jsonl`, `summary.json` (rsdlib.traces), and `results/<profile>/traces/manifest.json`.
# A rerun with the same parameters skips finished samples; `force: true` redoes them.
#
# **Time:** smoke about 20 s; demo (embedded 1.5B/0.5B pair, 2 CPU cores, bf16) about 15 min (864 s measured);
# paper (s1.1-7B + Qwen3-0.6B, 1,000 s1K problems x 16 samples x up to 7k new tokens, 7 methods):
# GPU-days with the lockstep HF decoder (not measured here).

# %%
import json
import time

import pandas as pd

from rsdlib import launch, paths
from rsdlib.config import config_to_dict
from rsdlib.data import SOURCES
from rsdlib.decoding import DecodingConfig
from rsdlib.prompts import end_of_turn_ids, prompt_ids
from rsdlib.models import load_pair
from rsdlib.prompts import prompt_style
from rsdlib.data import select_problems
from rsdlib.traces import trace_run_stats
from rsdlib.traces import RunConflictError, TraceJobConfig, append_jsonl, pair_reference, run_trace_job

# %% tags=["parameters"]
profile: str = "demo"  # results/<profile> and figures/<profile>
teacher: str = "embedded:teacher"  # teacher model: embedded:teacher, tiny:teacher, a folder, a .gguf or a hub id
student: str = "embedded:student"  # student model (same kinds of spec)
dtype: str = "auto"  # auto (bf16 on GPUs and bf16-capable CPUs, else fp16 / fp32), float32, bfloat16, float16
device: str = "auto"  # auto, cpu, cuda, cuda:1
benchmark: str = "math500"  # problems to generate traces for (paper: s1k)
source: str = "shipped"  # benchmark copy: shipped (pinned in rsdlib, sha256-checked; DATA.md) | hub (the hub dataset the paper used)
n_problems: int = 6  # how many problems; 0 means all
pick: str = "easiest"  # first (file order) | easiest (lowest MATH500 level)
split: str = "trace"  # trace: the hash half kept apart from evaluation | all
split_fraction: float = 0.5  # share of the benchmark in the trace half
split_salt: str = "rsdlib-demo"  # salt of the hash split (the evaluation notebook uses the same)
skip_diagrams: bool = True  # leave out problems drawn with Asymptote code
decoding: dict = {"temperature": 0.7, "top_p": 1.0, "max_new_tokens": 256}  # DecodingConfig keys shared by all methods
job: dict = {"samples_per_problem": 4, "prefix_tokens": 64, "batch_size": 8}  # TraceJobConfig keys shared by all methods
prompt: dict = {"style": "user-instruction", "extra_instruction": "Reason in words and equations only; do not write code.", "shots": ["FORMAT_SHOT"]}  # a named style of rsdlib.prompts.PROMPT_STYLES (the demo: Qwen math instruction in the user turn) and PromptStyle keys; a shot may name a constant of rsdlib.prompts (FORMAT_SHOT shows the embedded pair where the think delimiter goes)
methods: dict = {"teacher": {"mode": "teacher"}, "self-distill": {"mode": "student"}, "self-distill-ce": {"mode": "student", "samples_per_problem": 16}, "skd": {"mode": "skd", "threshold": 0.01}, "rsd-p10": {"mode": "rsd", "threshold": 0.1}, "rsd-p1": {"mode": "rsd", "threshold": 0.01}}  # method -> mode, threshold and any other DecodingConfig/TraceJobConfig key; self-distill-ce: the compute-equivalent run of Table 3, 16 attempts for (1.5B / 0.5B + 1) x 4 samples
restrict_to_teacher_solved: bool = True  # other methods only see problems the teacher solved (the paper's /234)
reference: str = "math500_solutions"  # pre-existing traces: s1k-1.1 (paper, hub) | math500_solutions (offline stand-in) | "" (none)
extra_pairs: dict = {}  # run name -> {"teacher", "student", "methods": [names]}: Table 4/6 tailored pairs
force: bool = False  # redo the traces even if finished runs with the same config exist
workers: int = 1  # processes per method: above 1, torchrun --nproc-per-node workers (one pair per GPU, rsdlib.distributed); 0: one per GPU

# %%
MODES = ("rsd", "skd", "teacher", "student")
if "teacher" not in methods or methods["teacher"].get("mode") != "teacher":
    raise ValueError("methods must include 'teacher' with mode 'teacher' (the other methods are restricted to its solved problems)")
for name, spec in methods.items():
    if spec.get("mode") not in MODES:
        raise ValueError(f"method {name!r}: mode must be one of {MODES}, got {spec.get('mode')!r}")
if source not in SOURCES:
    raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
if benchmark.lower().startswith("gpqa"):
    raise ValueError("traces are generated for s1K / MATH500 problems; GPQA Diamond is evaluation-only (and must stay unpublished)")
if reference not in ("", "s1k-1.1", "standin:s1k-1.1", "math500_solutions"):
    raise ValueError(f"reference must be '', 's1k-1.1', 'standin:s1k-1.1' or 'math500_solutions', got {reference!r}")
decoding_fields = set(DecodingConfig.__dataclass_fields__)
job_fields = set(TraceJobConfig.__dataclass_fields__) - {"decoding", "prompt", "method", "teacher", "student"}


def job_config(method: str, spec: dict, teacher_name: str, student_name: str) -> TraceJobConfig:
    """The TraceJobConfig of one method: shared decoding/job keys, then the method's own keys."""
    unknown = set(spec) - decoding_fields - job_fields
    if unknown:
        raise ValueError(f"method {method!r}: unknown key(s) {sorted(unknown)}; "
                         f"DecodingConfig: {sorted(decoding_fields)}; TraceJobConfig: {sorted(job_fields)}")
    dec = {**decoding, **{k: v for k, v in spec.items() if k in decoding_fields}}
    jb = {**job, **{k: v for k, v in spec.items() if k in job_fields}}
    return TraceJobConfig(method=method, teacher=teacher_name, student=student_name,
                          decoding=DecodingConfig(**dec), prompt=style, **jb)


style = prompt_style(prompt)
for name, spec in methods.items():  # validate every config before the first model loads
    try:
        job_config(name, spec, teacher, student)
    except (ValueError, TypeError) as err:
        raise ValueError(f"methods[{name!r}] with decoding/job (parameters of 10_generate_traces, "
                         f"params/{profile}/10_generate_traces.yaml unless overridden): {err}") from None
for run, extra in extra_pairs.items():
    missing = {"teacher", "student", "methods"} - set(extra)
    if missing or not set(extra["methods"]) <= set(methods):
        raise ValueError(f"extra_pairs[{run!r}] needs teacher, student and methods among {sorted(methods)}")

trace_root = paths.results_dir(profile) / "traces"
trace_root.mkdir(parents=True, exist_ok=True)
problems = select_problems(benchmark, n_problems, pick=pick, split=split, split_fraction=split_fraction, split_salt=split_salt,
                           require_gold=False, skip_diagrams=skip_diagrams, source=source)  # the trace job counts gold-less ones
print(f"{len(problems)} {benchmark} problems ({pick}, split {split}); methods: {', '.join(methods)}")

# %% [markdown]
# ## The main pair: teacher first, then every other method on the problems the teacher solved
# The teacher-only baseline is prompted like every other method (Figure 7's prompt; the authors' code
# used one prompt for all), as the paper's teacher was when it solved 234 of the 1,000 s1K problems.
# s1.1-7B ends its thinking in s1's native format (`<|im_start|>answer`): `prompt.think_close_aliases`
# maps it to the student's `</think>` in the stored trace, so it is graded and trained on like the others.
# A teacher that solves nothing stops here with the count (EmptyTrainingSetError), never a silent skip.
# Training sets (the hybrid recipe, `job.prefix_scope: all`): full traces of the solved problems +
# prefixes for every other problem (prefix-only generations for those the teacher did not solve);
# the paper's RSD-1% set is 180 + 820 = 1,000.

# %%
def run_method(pair, run: str, method: str, spec: dict, problems, restrict_dir=None) -> dict:
    cfg = job_config(method, spec, teacher_spec[run], student_spec[run])
    out = trace_root / run / method
    start = time.perf_counter()
    try:
        if workers > 1:  # each rank generates its share of the (problem, sample) units; rank 0 merges them
            summary = launch.traces_with_torchrun(params_file, method, out, workers, pair=run, restrict_to=restrict_dir,
                                                  force=force, expect_hash=cfg.hash())
        else:
            summary = run_trace_job(pair, problems, cfg, out, restrict_to=restrict_dir, force=force, progress=True)
    except RunConflictError as err:
        raise RunConflictError(f"{err}\nThe parameters changed since this run was made: rerun with force: true "
                               f"(rsdlib reproduce --force) to regenerate it.") from None
    stats = {"method": method, **trace_run_stats(out)}
    print(f"{run}/{method}: solved {stats['solved']}/{stats['problems']}, {stats['samples']} samples; "
          f"training set {stats['solved']} full + {stats['prefix_examples']} prefix = {stats['training_examples']} "
          f"examples ({stats['prefix_only_problems']} prefix-only problems), {time.perf_counter() - start:.0f} s")
    return stats


teacher_spec, student_spec = {"main": teacher}, {"main": student}
workers = launch.workers_for(workers)
if workers > 1:  # the ranks load the models; this kernel needs only the student's tokenizer
    params_file = launch.save_params("10_generate_traces", globals(), trace_root / "launch_params.yaml")
    pair = launch.TokenizerOnly(launch.student_tokenizer(student))
else:
    pair = load_pair(teacher, student, dtype=dtype, device=device)
    print(f"pair {pair.name}: student-only ids {len(pair.bridge.student_only)}")
summaries = {"main": {}}
summaries["main"]["teacher"] = run_method(pair, "main", "teacher", methods["teacher"], problems)
restrict_dir = trace_root / "main" / "teacher" if restrict_to_teacher_solved else None
for method, spec in methods.items():
    if method != "teacher":
        summaries["main"][method] = run_method(pair, "main", method, spec, problems, restrict_dir)

# %% [markdown]
# ## Pre-existing traces (the "+ s1K-1.1" row)
# The paper's s1K-1.1 traces (DeepSeek-R1) need the hub; offline, the benchmark's worked solutions
# are the stand-in: text the student did not write, wrapped as thinking + answer.

# %%
def reference_records(tok, problems):
    """(problem, completion text) of the pre-existing traces, in the student's chat format."""
    close = style.think_close
    if reference in ("s1k-1.1", "standin:s1k-1.1"):
        from rsdlib.data import load_benchmark

        local = None
        if reference.startswith("standin:"):  # the dry run: s1K's own solutions in s1K-1.1's columns
            from rsdlib.standins import write_standin_s1k11

            local = write_standin_s1k11(paths.results_dir(profile) / "standins" / "data").parent
        rows = load_benchmark("s1k-1.1", local_dir=local)  # the paper's 1,000 R1 traces
        return pair_reference(rows, problems, close)
    out = []
    for p in problems:
        text = p.meta.get("solution", "")  # MATH500 and s1K problems carry their worked solution
        if text:
            out.append((p, f"{text.strip()}\n{close}\n\nThe final answer is $\\boxed{{{p.gold}}}$."))
    return out


if reference:
    tok = pair.student_tokenizer
    eot = end_of_turn_ids(tok)[0]
    out = trace_root / "main" / "reference"
    out.mkdir(parents=True, exist_ok=True)
    records = reference_records(tok, problems)
    for name in ("samples.jsonl", "dataset.jsonl"):
        (out / name).unlink(missing_ok=True)
    for p, text in records:
        completion = list(tok(text, add_special_tokens=False)["input_ids"]) + [eot]
        rec = {"problem_id": p.id, "sample_index": 0, "prompt_ids": prompt_ids(tok, p, style),
               "token_ids": completion, "status": "correct", "kind": "full", "source": "reference"}
        append_jsonl(out / "samples.jsonl", rec)
        append_jsonl(out / "dataset.jsonl", {"id": f"{p.id}#0", "problem_id": p.id, "source": "reference",
                                             "sample_index": 0, "prompt_ids": rec["prompt_ids"],
                                             "completion_ids": completion, "kind": "full"})
    (out / "config.json").write_text(json.dumps({"reference": reference, "problems": [p.id for p, _ in records]}, indent=2))
    summaries["main"]["reference"] = {"method": "reference", **trace_run_stats(out)}
    (out / "summary.json").write_text(json.dumps(summaries["main"]["reference"], indent=2))
    print(f"reference ({reference}): {len(records)} traces, mean {summaries['main']['reference']['avg_tokens'] or 0:.0f} tokens")
del pair

# %% [markdown]
# ## Other pairs (Tables 4 and 6: traces tailored to another student)

# %%
for run, extra in extra_pairs.items():
    teacher_spec[run], student_spec[run] = extra["teacher"], extra["student"]
    other = load_pair(extra["teacher"], extra["student"], dtype=dtype, device=device) if workers == 1 else None
    summaries[run] = {}
    for method in extra["methods"]:
        summaries[run][method] = run_method(other, run, method, methods[method], problems, restrict_dir)
    del other

# %%
manifest = {
    "profile": profile, "benchmark": benchmark, "source": source, "problems": [p.id for p in problems],
    "pairs": {run: {"teacher": teacher_spec[run], "student": student_spec[run]} for run in summaries},
    "methods": {run: list(s) for run, s in summaries.items()}, "method_specs": methods,
    "reference": reference, "restrict_to_teacher_solved": restrict_to_teacher_solved,
    "decoding": decoding, "job": job, "prompt": config_to_dict(style),
}
(trace_root / "manifest.json").write_text(json.dumps(manifest, indent=2))
table = pd.DataFrame([{"pair": run, **s} for run, rows in summaries.items() for s in rows.values()])
table
