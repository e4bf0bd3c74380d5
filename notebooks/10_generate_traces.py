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
# **Time:** smoke about 20 s; demo (embedded 1.5B/0.5B pair, 2 CPU cores, bf16) about 14 min (845 s measured);
# paper (s1.1-7B + Qwen3-0.6B, 1,000 s1K problems x 16 samples x up to 7k new tokens, 7 methods):
# GPU-days with the lockstep HF decoder (not measured here).

# %%
import pandas as pd

from rsdlib.launch import notebook_values
from rsdlib.stages import run_trace_stage
from rsdlib.traces import check_trace_params

# %% tags=["parameters"]
profile: str = "demo"  # results/<profile> and figures/<profile>
teacher: str = "embedded:teacher"  # teacher model: embedded:teacher, tiny:teacher, a folder, a .gguf or a hub id
student: str = "embedded:student"  # student model (same kinds of spec)
dtype: str = "auto"  # auto (bf16 on GPUs and bf16-capable CPUs, else fp16 / fp32), float32, bfloat16, float16
device: str = "auto"  # auto, cpu, cuda, cuda:1
benchmark: str = "math500"  # problems to generate traces for (paper: s1k)
source: str = "shipped"  # benchmark copy: shipped (pinned in rsdlib, sha256-checked; DATA.md) | hub (the paper's)
n_problems: int = 6  # how many problems; 0 means all
pick: str = "easiest"  # first (file order) | easiest (lowest MATH500 level)
split: str = "trace"  # trace: the hash half kept apart from evaluation | all
split_fraction: float = 0.5  # share of the benchmark in the trace half
split_salt: str = "rsdlib-demo"  # salt of the hash split (the evaluation notebook uses the same)
skip_diagrams: bool = True  # leave out problems drawn with Asymptote code
decoding: dict = {"temperature": 0.7, "top_p": 0.95, "max_new_tokens": 256}  # DecodingConfig keys of all methods
job: dict = {"samples_per_problem": 2, "prefix_tokens": 64, "batch_size": 16}  # TraceJobConfig keys of all methods
prompt: dict = {
    # a named style of rsdlib.prompts.PROMPT_STYLES (the demo: Qwen math instruction in the user turn), then
    # PromptStyle keys; a shot may name a constant of rsdlib.prompts (FORMAT_SHOT shows the embedded pair
    # where the think delimiter goes)
    "style": "user-instruction", "extra_instruction": "Reason in words and equations only; do not write code.",
    "shots": ["FORMAT_SHOT"],
}  # prompt style and PromptStyle keys (see above)
methods: dict = {
    # method -> mode, threshold and any other DecodingConfig/TraceJobConfig key; self-distill-ce: the
    # compute-equivalent run of Table 3, 8 attempts for (1.5B / 0.5B + 1) x 2 samples
    "teacher": {"mode": "teacher"}, "self-distill": {"mode": "student"},
    "self-distill-ce": {"mode": "student", "samples_per_problem": 8}, "skd": {"mode": "skd", "threshold": 0.01},
    "rsd-p1": {"mode": "rsd", "threshold": 0.01},
}  # method -> mode, threshold and DecodingConfig/TraceJobConfig keys
restrict_to_teacher_solved: bool = True  # other methods only see problems the teacher solved (the paper's /234)
reference: str = "math500_solutions"  # pre-existing traces: s1k-1.1 (paper) | math500_solutions (offline) | "" (none)
extra_pairs: dict = {}  # run name -> {"teacher", "student", "methods": [names]}: Table 4/6 tailored pairs
force: bool = False  # redo the traces even if finished runs with the same config exist
workers: int = 1  # processes per method: above 1, torchrun (one pair per GPU, rsdlib.distributed); 0: one per GPU

# %%
params = notebook_values("10_generate_traces", globals())
check_trace_params(params)  # every method's config, before the first model loads

# %% [markdown]
# ## Every method's traces
# The main pair first: the teacher, then every other method on the problems the teacher solved. The
# teacher-only baseline is prompted like every other method (Figure 7's prompt; the authors' code
# used one prompt for all), as the paper's teacher was when it solved 234 of the 1,000 s1K problems.
# s1.1-7B ends its thinking in s1's native format (`<|im_start|>answer`): `prompt.think_close_aliases`
# maps it to the student's `</think>` in the stored trace, so it is graded and trained on like the others.
# A teacher that solves nothing stops here with the count (EmptyTrainingSetError), never a silent skip.
# Training sets (the hybrid recipe, `job.prefix_scope: all`): full traces of the solved problems +
# prefixes for every other problem (prefix-only generations for those the teacher did not solve);
# the paper's RSD-1% set is 180 + 820 = 1,000. A problem without a trusted gold (`rsdlib.grading.gold_trust`:
# proofs, partial answers) cannot be graded: it is unsolved and gets a prefix, so all problems are accounted
# for. Which correct sample is kept: the authors' rule per mode (`rsdlib.traces.KEEP_BY_MODE`: shortest for
# RSD and SKD, first for the teacher and self-distill). Then the pre-existing traces (the "+ s1K-1.1" row: the
# paper's s1K-1.1 traces need the hub; offline, the benchmark's worked solutions are the stand-in, text
# the student did not write), then the other pairs (Tables 4 and 6: traces tailored to another student).

# %%
summaries = run_trace_stage(params)
pd.DataFrame([{"pair": run, **s} for run, rows in summaries.items() for s in rows.values()])
