"""Evaluation on AIME24, AIME25, GPQA Diamond and MATH500 (paper, Section 4 and Appendix B).

Protocol (Appendix B): avg@64 on the AIMEs, avg@8 on GPQA Diamond, pass@1 on MATH500; an 8k-token
budget (16k for GPQA Diamond); on GPQA, a sample that has not closed its thinking after 15k tokens
gets the end-of-thinking delimiter appended and generates its answer in the rest of the budget.
All of these are fields of ``EvalConfig`` (the demo uses small values). Budgets count GENERATED
tokens (the delimiter included), not the prompt.

``evaluate(model_or_path, cfg, out_dir)`` runs every benchmark of ``cfg`` and writes, per benchmark::

    <out_dir>/config.json               the config, its hash and the model; a rerun with another is refused
    <out_dir>/<benchmark>/problems.json the problem ids evaluated (after the subset filters)
    <out_dir>/<benchmark>/samples.jsonl one row per (problem, sample), appended (fsynced) as it finishes
    <out_dir>/<benchmark>/pending.jsonl samples whose thinking pass is done and whose answer pass is not
    <out_dir>/<benchmark>/summary.json  avg@k, pass@1, pass@k, maj@k, no-answer / forced / truncated
                                        rates, mean output length, library versions and the full config

A rerun skips finished rows (and the thinking pass of pending ones): every sample's seed depends
only on (base_seed, problem id, sample index), so an interrupted run ends as an uninterrupted one.
``force=True`` deletes a folder's results first. Under torchrun / srun (``rsdlib.distributed``) each
rank loads the model on its own device and generates its share of the (problem, sample) units into
``<benchmark>/shards/rank<R>-of-<W>/``; rank 0 merges them into ``samples.jsonl`` and writes the
summary (equal to a single process's)::

    torchrun --standalone --nproc-per-node 8 -m rsdlib.evaluate --params params/paper/40_evaluate.yaml --model rsd-p1

 GPQA rows hold the option order and the gold
letter, never the question or option text. A model's response can quote them, so a GPQA row keeps
its response only in protected form (``response_protected``: zlib + a keystream derived from the
GPQA data password, base64; ``reveal_response(row)`` gives the text back), its answer only as the
option letter, and a non-letter vote only as a hash. Like the password zip of the data, this keeps
the text out of plain-text storage and search, not away from someone who reads this code.

Budget forcing (``generate_with_budget``): pass 1 samples up to ``think_budget`` tokens, stopping at
an end-of-turn id. A sample that hit the budget continues in pass 2 from ``prompt + pass-1 tokens``
plus, when its thinking is still open, the delimiter's ids (``forced``); pass 2 has the remaining
``max_tokens - tokens so far``. Both backends run the same two passes on the same token ids:

- ``hf``: ``rsdlib.decoding.Decoder`` in "student" mode (batched, KV-cached, continuous batching);
- ``vllm``: ``vllm.LLM.generate`` on the prompt token ids with one explicit ``SamplingParams`` (and
  seed) per sample, so the model's generation_config.json defaults (top_k, repetition penalty) do
  not apply; optional, GPU machines only. vLLM's per-request seeds do not reproduce the HF
  sampler's streams: the two backends give equally distributed, not identical, samples.

Estimators (field notes, section 6; ``rsdlib.metrics``): avg@k = mean over problems of correct / k;
pass@k unbiased; maj@k = the majority answer's correctness, votes grouping answers equal after
normalising spaces and LaTeX wrappers (``rsdlib.grading.answer_key``: integers by value, separate
numbers never joined; GPQA by the option chosen, since letters are shuffled per sample).

Grading (``rsdlib.grading``): ``answer_format`` "standard" (math-verify's extraction: boxed, then
stated, then the last expression; GPQA letters by a priority of forms) or "boxed" (strict);
``answer_from`` "after_thinking" (a response that never closes its thinking is "no answer"),
"whole" (a model that does not think), or "auto" (per model: after the thinking when the prompt
opens one or the tokenizer has the delimiter as a token, else the whole response). Neither changes
a sample, so neither is part of the config hash: rows record how they were graded (``found``:
boxed / stated / last_expression / none, ``answer_format``, ``answer_from``, ``grading_version``),
rows graded otherwise are re-graded from their stored response when the benchmark is summarised,
and ``regrade(folder)`` re-grades a stored evaluation folder without a model. Summaries count how
answers were found (``answers_found``), so a model that stops boxing shows.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from rsdlib import data as data_mod
from rsdlib import distributed
from rsdlib.config import check_number, config_hash, config_to_dict, load_yaml_config
from rsdlib.data import easiest, load_benchmark, shuffle_choices, split_by_hash
from rsdlib.decoding import MAX_NEW_TOKENS, Decoder, DecodingConfig, derive_seed
from rsdlib.grading import (
    ANSWER_FORMATS,
    ANSWER_FROM,
    CHOICE_LETTERS,
    FOUND,
    GRADING_VERSION,
    answer_key,
    choice_letter,
    grade_many,
    resolve_answer_from,
)
from rsdlib.metrics import avg_at_k, maj_at_k, mean_pass_at_k
from rsdlib.prompts import PromptStyle, end_of_turn_ids, prompt_ids
from rsdlib.store import (
    JsonFileError,
    RunConflictError,
    append_jsonl,
    claim_folder,
    read_json,
    read_jsonl_resumable,
    run_lock,
    unique_samples,
    write_json_atomic,
    write_jsonl_atomic,
)

__all__ = [
    "EvalConfig",
    "BackendUnavailableError",
    "RunConflictError",
    "evaluate",
    "generate_with_budget",
    "summarize_rows",
    "regrade",
    "regrade_rows",
    "check_grading",
    "MixedGradingError",
    "load_eval_model",
    "library_versions",
    "PAPER_SAMPLES",
    "PAPER_MAX_TOKENS",
    "PAPER_THINK_BUDGET",
]

BACKENDS = ("hf", "vllm")
PAPER_SAMPLES = {"aime24": 64, "aime25": 64, "gpqa_diamond": 8, "math500": 1}  # avg@64, avg@8, pass@1
PAPER_MAX_TOKENS = {"aime24": 8192, "aime25": 8192, "gpqa_diamond": 16384, "math500": 8192}
PAPER_THINK_BUDGET = {"gpqa_diamond": 15000}  # force the end of thinking at 15k tokens on GPQA only
DEFAULT_MAX_TOKENS = 8192  # benchmarks missing from ``max_tokens``
MAX_SAMPLES = 10_000  # ceiling of ``samples`` per problem (paper: at most 64, Table 1's AIME)
VLLM_CHUNK = 1024  # prompts per llm.generate call (rows are written when a call returns)
HASH_FREE_FIELDS = (  # do not change any sample
    "benchmarks", "batch_size", "grade_timeout", "data_dir", "source", "answer_format", "answer_from")


class BackendUnavailableError(RuntimeError):
    """The requested generation backend is not installed or cannot run here."""


@dataclass
class EvalConfig:
    """One evaluation protocol; saved next to every result it produced."""

    benchmarks: tuple[str, ...] = ("aime24", "aime25", "gpqa_diamond", "math500")  # names known to rsdlib.data
    samples: dict[str, int] = field(default_factory=dict)  # samples per problem; unlisted: PAPER_SAMPLES, else 1
    # generated-token budget; unlisted: PAPER_MAX_TOKENS, else 8192
    max_tokens: dict[str, int] = field(default_factory=dict)
    # force the delimiter after this many tokens; unlisted: PAPER_THINK_BUDGET, else none
    think_budget: dict[str, int] = field(default_factory=dict)
    temperature: float = 0.7  # sampling temperature (not stated in the paper; its traces use 0.7); 0 = greedy
    top_p: float = 0.95  # nucleus filter (authors' early code: 0.95)
    prompt: PromptStyle = field(default_factory=PromptStyle)  # system prompt, instructions, think delimiters
    force_text: str = ""  # text appended when forcing; "" = "\n" + prompt.think_close + "\n\n"
    # keep the first N problems of each benchmark (after the filters below); a dict sets N per benchmark
    # (unlisted: all)
    limit: int | dict[str, int] | None = None
    math500_easiest: int | None = None  # MATH500: keep the N lowest-level problems (file order within a level)
    split_fraction: float | None = None  # hash split (rsdlib.data.split_by_hash) to keep apart from trace problems
    split_salt: str = ""  # salt of the hash split
    split_part: str = "b"  # which part to evaluate: "a" (hash below split_fraction) or "b" (the others)
    backend: str = "hf"  # hf (rsdlib Decoder, CPU/GPU) | vllm (optional, GPU)
    batch_size: int = 16  # hf: decoder rows at once (results do not depend on it)
    base_seed: int = 0  # seeds per (problem, sample) derive from it; also salts the GPQA option shuffle
    dtype: str = "auto"  # auto (bf16 on GPUs and bf16-capable CPUs, else fp16 / fp32) | float32 | bfloat16 | float16
    device: str = "auto"  # hf: auto | cpu | cuda[:i]
    grade_timeout: float = 10.0  # seconds per math-verify extraction + comparison
    answer_format: str = "standard"  # standard (math-verify's extraction; GPQA letter forms) | boxed (only \boxed{})
    # where answers are read: after_thinking | whole (a model that does not think) | auto
    # (rsdlib.grading.resolve_answer_from)
    answer_from: str = "auto"
    source: str = "shipped"  # benchmark copy: shipped (pinned in rsdlib, sha256-checked; DATA.md) | hub
    data_dir: str | None = None  # folder of local benchmark files; wins over source (default: $RSDLIB_DATA_DIR)
    vllm_args: dict[str, Any] = field(default_factory=dict)  # extra vllm.LLM kwargs (gpu_memory_utilization, ...)

    def __post_init__(self) -> None:
        if isinstance(self.prompt, dict):
            self.prompt = PromptStyle(**self.prompt)
        if isinstance(self.benchmarks, str):
            self.benchmarks = (self.benchmarks,)
        self.benchmarks = tuple(self.benchmarks)
        if not self.benchmarks:
            raise ValueError("benchmarks must name at least one benchmark")
        for name in ("samples", "max_tokens", "think_budget"):
            table = dict(getattr(self, name) or {})
            unknown = sorted(set(table) - set(data_mod.BENCHMARKS))
            if unknown:
                raise ValueError(f"EvalConfig.{name}: unknown benchmark key(s) {unknown}; "
                                 f"known: {', '.join(data_mod.BENCHMARKS)}")
            ceiling = MAX_NEW_TOKENS if name != "samples" else MAX_SAMPLES
            bad = {k: v for k, v in table.items() if not isinstance(v, int) or isinstance(v, bool) or not
                   1 <= v <= ceiling}
            if bad:
                raise ValueError(f"EvalConfig.{name}: values must be integers in [1, {ceiling:,}], got {bad}")
            setattr(self, name, table)
        check_number("EvalConfig", "temperature", self.temperature, minimum=0)  # 0 = greedy
        check_number("EvalConfig", "top_p", self.top_p, minimum=0, maximum=1, exclusive_minimum=True)
        limits = self.limit.values() if isinstance(self.limit, dict) else [self.limit]
        if any(n is not None and (not isinstance(n, int) or n < 1) for n in limits):
            raise ValueError(f"limit must be >= 1, None, or a dict benchmark -> N >= 1; got {self.limit}")
        if self.math500_easiest is not None and self.math500_easiest < 1:
            raise ValueError(f"math500_easiest must be >= 1 or None, got {self.math500_easiest}")
        if self.split_fraction is not None and not 0.0 <= self.split_fraction <= 1.0:
            raise ValueError(f"split_fraction must be in [0, 1] or None, got {self.split_fraction}")
        if self.split_part not in ("a", "b"):
            raise ValueError(f"split_part must be 'a' or 'b', got {self.split_part!r}")
        if self.source not in data_mod.SOURCES:
            raise ValueError(f"source must be one of {data_mod.SOURCES}, got {self.source!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.grade_timeout <= 0:
            raise ValueError(f"grade_timeout must be > 0, got {self.grade_timeout}")
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {self.answer_format!r}")
        if self.answer_from not in ANSWER_FROM:
            raise ValueError(f"answer_from must be one of {ANSWER_FROM}, got {self.answer_from!r}")

    # per-benchmark settings: the explicit entry, else the paper's value
    def samples_for(self, benchmark: str) -> int:
        return self.samples.get(benchmark, PAPER_SAMPLES.get(benchmark, 1))

    def limit_for(self, benchmark: str) -> int | None:
        return self.limit.get(benchmark) if isinstance(self.limit, dict) else self.limit

    def max_tokens_for(self, benchmark: str) -> int:
        return self.max_tokens.get(benchmark, PAPER_MAX_TOKENS.get(benchmark, DEFAULT_MAX_TOKENS))

    def think_budget_for(self, benchmark: str) -> int | None:
        budget = self.think_budget.get(benchmark, PAPER_THINK_BUDGET.get(benchmark))
        return budget if budget is not None and budget < self.max_tokens_for(benchmark) else None

    @property
    def forced_delimiter(self) -> str:
        return self.force_text or f"\n{self.prompt.think_close}\n\n"

    @classmethod
    def from_yaml(cls, source, **overrides) -> "EvalConfig":
        return load_yaml_config(cls, source, **overrides)

    def hash(self) -> str:
        return config_hash(self, exclude=HASH_FREE_FIELDS)


# ----------------------------------------------------------------------------------------------
# Problems
# ----------------------------------------------------------------------------------------------
def eval_problems(name: str, cfg: EvalConfig) -> tuple[str, list]:
    """(canonical benchmark name, problems) after the split, easiest and limit filters, in that order.

    Unknown names (ValueError) and missing datasets (DatasetUnavailableError) raise from rsdlib.data.
    """
    problems = load_benchmark(name, source=cfg.source, local_dir=cfg.data_dir, seed=cfg.base_seed)
    canonical = problems[0].source if problems else name
    if cfg.split_fraction is not None:
        part_a, part_b = split_by_hash(problems, cfg.split_fraction, cfg.split_salt)
        problems = part_a if cfg.split_part == "a" else part_b
    if cfg.math500_easiest is not None and canonical == "math500":
        problems = easiest(problems, cfg.math500_easiest)
    limit = cfg.limit_for(canonical)
    if limit is not None:
        problems = problems[:limit]
    return canonical, problems


GPQA_PASSWORD = b"deserted-untie-orchid"  # the GPQA data's zip password; keys the response keystream
PROTECTED_FORMAT = "zlib+sha256-ctr-xor+b64:v1"


def _keystream_xor(data: bytes) -> bytes:
    import hashlib

    out = bytearray(len(data))
    for block in range(0, len(data), 32):
        key = hashlib.sha256(GPQA_PASSWORD + block.to_bytes(8, "little")).digest()
        for j, byte in enumerate(data[block:block + 32]):
            out[block + j] = byte ^ key[j]
    return bytes(out)


def protect_text(text: str) -> str:
    """Text kept out of plain-text storage (GPQA responses): reversible with ``reveal_text``."""
    import base64
    import zlib

    return base64.b64encode(_keystream_xor(zlib.compress(text.encode("utf-8")))).decode("ascii")


def reveal_text(blob: str) -> str:
    import base64
    import zlib

    return zlib.decompress(_keystream_xor(base64.b64decode(blob))).decode("utf-8")


def reveal_response(row: dict) -> str:
    """The response text of a sample row, plain or protected (GPQA)."""
    return reveal_text(row["response_protected"]) if "response_protected" in row else row["response"]


def _protect_row(row: dict) -> dict:
    """A private (GPQA) row without question or option text: response protected, answer a letter, vote hashed."""
    import hashlib

    text, answer = row.pop("response"), row["answer"]
    row["response_protected"], row["response_format"] = protect_text(text), PROTECTED_FORMAT
    row["answer"] = choice_letter(answer) if answer is not None else None  # "C: 124°" keeps only "C"
    vote = row.get("vote")
    if vote is not None and not re.fullmatch(r"option\d+", vote):  # a free-text vote: its hash still groups equal ones
        row["vote"] = "text:" + hashlib.sha256(vote.encode("utf-8")).hexdigest()[:16]
    return row


def _option_order(shuffled) -> list[int]:
    """Position i of a shuffled GPQA problem shows canonical option order[i] (0 = the correct one)."""
    canonical = list(shuffled.meta["answer_options"])
    used: set[int] = set()
    order = []
    for opt in shuffled.options:
        j = next(j for j, c in enumerate(canonical) if c == opt and j not in used)
        used.add(j)
        order.append(j)
    return order


def vote_key(answer: str | None, kind: str, option_order: Sequence[int] | None = None) -> str | None:
    """What a sample votes for in maj@k: the option chosen (choice), else ``rsdlib.grading.answer_key``.

    Separate numbers are never joined: "1,2", "3, 4" and "1 2" do not vote with 12 or 34.
    """
    if answer is None:
        return None
    if kind == "choice":
        letter = choice_letter(answer)
        if letter is None or option_order is None or CHOICE_LETTERS.index(letter) >= len(option_order):
            return answer_key(answer, kind)
        return f"option{option_order[CHOICE_LETTERS.index(letter)]}"
    return answer_key(answer, kind)


# ----------------------------------------------------------------------------------------------
# Generation backends: generate(prompts, seeds, max_new_tokens, on_finish(i, token_ids, finish_reason))
# ----------------------------------------------------------------------------------------------
GenerateFn = Callable[[Sequence[Sequence[int]], Sequence[int], int, Callable[[int, list, str], None]], None]


def hf_backend(model, tokenizer, cfg: EvalConfig, stop_ids: Sequence[int]) -> GenerateFn:
    """The batched HF path: rsdlib's Decoder sampling from one model (mode "student")."""
    from rsdlib.bridge import VocabBridge
    from rsdlib.models import logit_rows

    rows = logit_rows(model)
    bridge = VocabBridge.from_tokenizers(tokenizer, tokenizer, rows, rows)  # masks padded logit rows

    def generate(prompts, seeds, max_new_tokens, on_finish):
        dec_cfg = DecodingConfig(mode="student", temperature=cfg.temperature, top_p=cfg.top_p,
                                 max_new_tokens=max_new_tokens, stop_ids=tuple(stop_ids))
        decoder = Decoder(None, model, bridge, dec_cfg)
        decoder.generate([list(p) for p in prompts], list(seeds), batch_size=cfg.batch_size,
                         on_finish=lambda i, tr: on_finish(i, list(tr.token_ids), tr.finish_reason))

    return generate


def _require_vllm() -> None:
    """vLLM must be installed; it is looked for, not imported: only the engine's own process imports it."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise BackendUnavailableError(
            "backend 'vllm' was asked for but vLLM is not installed (it is an optional dependency for CUDA "
            "machines: `pip install vllm`). Use backend='hf' (rsdlib's batched decoder, CPU or GPU) instead.")


def vllm_backend(source: str, cfg: EvalConfig, stop_ids: Sequence[int], progress: bool,
                 world: distributed.World | None = None) -> GenerateFn:
    """vLLM on a local folder or hub id: prompt token ids in, one SamplingParams (seed) per sample.

    The engine runs in a spawned process that sees only this rank's GPU and is no part of the torchrun
    group (``rsdlib.vllmproc``); ``generate.close()`` stops it.
    """
    from rsdlib.vllmproc import EngineProcess

    _require_vllm()
    engine = EngineProcess({"model": source, "tokenizer": source, "dtype": cfg.dtype, "seed": cfg.base_seed,
                            **dict(cfg.vllm_args)}, world)

    def generate(prompts, seeds, max_new_tokens, on_finish):
        for start in range(0, len(prompts), VLLM_CHUNK):
            chunk = range(start, min(start + VLLM_CHUNK, len(prompts)))
            params = [{"n": 1, "temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": max_new_tokens,
                       "seed": int(seeds[i]), "stop_token_ids": list(stop_ids), "skip_special_tokens": False}
                      for i in chunk]
            requests = [{"prompt_token_ids": [int(t) for t in prompts[i]]} for i in chunk]
            for i, (token_ids, finish) in zip(chunk, engine.generate(requests, params, progress)):
                on_finish(i, token_ids, "length" if finish == "length" else "stop")

    generate.close = engine.close
    return generate


# ----------------------------------------------------------------------------------------------
# Budget forcing: two passes on token ids
# ----------------------------------------------------------------------------------------------
@dataclass
class SampleJob:
    """One (problem, sample) to generate."""

    key: tuple[str, int]  # (problem id, sample index)
    prompt_ids: list[int]
    seed: int  # pass 1 (thinking)
    answer_seed: int  # pass 2 (answer after the budget)


def generate_with_budget(
    generate: GenerateFn,
    jobs: Sequence[SampleJob],
    *,
    max_tokens: int,
    think_budget: int | None,
    delimiter_ids: Sequence[int],
    thinking_closed: Callable[[list[int]], bool],
    on_done: Callable[[SampleJob, list[int], str, bool, bool], None],
    on_pending: Callable[[SampleJob, list[int], bool], None] | None = None,
    resumed: dict[tuple[str, int], tuple[list[int], bool]] | None = None,
) -> None:
    """Generate every job within ``max_tokens``, forcing the end of thinking after ``think_budget``.

    ``on_done(job, output_ids, finish_reason, forced, continued)`` gets the whole output (pass 1,
    the delimiter when forced, pass 2). ``on_pending(job, ids_so_far, forced)`` is called when a
    sample needs an answer pass (to store it); ``resumed`` maps keys to such stored (ids, forced),
    whose thinking pass is then skipped.
    """
    resumed = dict(resumed or {})
    first_budget = think_budget if think_budget is not None and think_budget < max_tokens else max_tokens
    second: list[tuple[SampleJob, list[int], bool]] = [(j, *resumed[j.key]) for j in jobs if j.key in resumed]
    first = [j for j in jobs if j.key not in resumed]

    def after_first(i: int, ids: list[int], finish: str) -> None:
        job = first[i]
        if finish == "stop" or first_budget >= max_tokens:
            on_done(job, ids, finish, False, False)
            return
        forced = not thinking_closed(ids)
        so_far = ids + (list(delimiter_ids) if forced else [])
        if len(so_far) >= max_tokens:  # no room left for an answer
            on_done(job, so_far, "length", forced, False)
            return
        if on_pending is not None:
            on_pending(job, so_far, forced)
        second.append((job, so_far, forced))

    if first:
        generate([j.prompt_ids for j in first], [j.seed for j in first], first_budget, after_first)
    by_room: dict[int, list[tuple[SampleJob, list[int], bool]]] = {}
    for item in second:
        by_room.setdefault(max_tokens - len(item[1]), []).append(item)
    for room, items in sorted(by_room.items()):
        def after_second(i: int, ids: list[int], finish: str, items=items) -> None:
            job, so_far, forced = items[i]
            on_done(job, so_far + ids, finish, forced, True)

        generate([j.prompt_ids + so_far for j, so_far, _ in items], [j.answer_seed for j, _, _ in items], room,
                 after_second)


# ----------------------------------------------------------------------------------------------
# Summaries
# ----------------------------------------------------------------------------------------------
def summarize_rows(rows: Sequence[dict], samples_per_problem: int, paper_samples: int | None = None) -> dict:
    """The estimators of one benchmark from its sample rows (each problem needs samples 0..n-1).

    ``score`` is the paper's metric: avg@k over the first k = min(n, ``paper_samples``) samples of each
    problem (``paper_metric``; the paper's pass@1 on MATH500 is sample 0 alone); ``avg_at_k`` uses all n
    samples. With n above the paper's k (MATH500 avg@4 in the paper profile, issue 30), both are reported:
    pass@1 on one sample has a standard error (~2 points on 500 problems) above the gaps between methods.

    Row fields used: problem_id, sample_index, status ("correct" | "wrong" | "no_answer"), vote
    (str or None), forced (bool), finish_reason, n_tokens, timed_out and found (optional).
    ``answers_found``: the fraction of samples whose answer was found boxed / stated / as the last
    expression / not at all (``rsdlib.grading.FOUND``; "unknown" for rows graded before it existed).
    """
    n = samples_per_problem
    by_problem: dict[str, dict[int, dict]] = {}
    for r in rows:
        slot = by_problem.setdefault(r["problem_id"], {})
        if r["sample_index"] in slot:
            raise ValueError(f"duplicate row for problem {r['problem_id']} sample {r['sample_index']}")
        slot[r["sample_index"]] = r
    if not by_problem:
        raise ValueError("summarize_rows: no rows")
    for pid, slot in by_problem.items():
        if sorted(slot) != list(range(n)):
            raise ValueError(f"problem {pid} has samples {sorted(slot)[:10]}, expected 0..{n - 1}")
    ordered = [[slot[k] for k in range(n)] for slot in by_problem.values()]
    flat = [r for row in ordered for r in row]
    correct = [[r["status"] == "correct" for r in row] for row in ordered]
    votes = [[r.get("vote") for r in row] for row in ordered]
    k = min(n, paper_samples or n)  # the paper's samples per problem, at most those generated
    return {
        "n_problems": len(ordered),
        "samples_per_problem": n,
        "n_samples": len(flat),
        "paper_metric": f"avg@{k}" if k > 1 else "pass@1",
        "paper_samples": k,
        "score": avg_at_k([row[:k] for row in correct], k),
        "avg_at_k": avg_at_k(correct, n),
        "pass_at_1": mean_pass_at_k(correct, 1),
        "pass_at_k": mean_pass_at_k(correct, n),
        "maj_at_k": maj_at_k(votes, correct=correct, k=n),
        "correct_samples": sum(map(sum, correct)),
        "no_answer_rate": sum(r["status"] == "no_answer" for r in flat) / len(flat),
        "forced_rate": sum(bool(r.get("forced")) for r in flat) / len(flat),
        "truncated_rate": sum(r.get("finish_reason") == "length" for r in flat) / len(flat),
        "timed_out": sum(bool(r.get("timed_out")) for r in flat),
        "mean_output_tokens": sum(r["n_tokens"] for r in flat) / len(flat),
        "answers_found": _found_rates(flat),
    }


def _found_rates(rows: Sequence[dict]) -> dict[str, float]:
    counts = {f: sum(r.get("found") == f for r in rows) for f in FOUND}
    unknown = len(rows) - sum(counts.values())
    if unknown:
        counts["unknown"] = unknown
    return {f: c / len(rows) for f, c in counts.items()}


# ----------------------------------------------------------------------------------------------
# Re-grading stored rows (a new extraction, another answer_format / answer_from)
# ----------------------------------------------------------------------------------------------
def _reading(cfg: EvalConfig, tokenizer=None) -> dict[str, str]:
    """How this model's answers are read: answer_format and the resolved answer_from."""
    return {"answer_format": cfg.answer_format,
            "answer_from": resolve_answer_from(cfg.answer_from, think_open=cfg.prompt.think_open,
                                               think_close=cfg.prompt.think_close, tokenizer=tokenizer)}


def regrade_rows(rows: list[dict], *, answer_format: str = "standard", answer_from: str = "after_thinking",
                 delim: str | None = "</think>", timeout: float | None = 10.0, force: bool = False) -> int:
    """Re-grade, in place, the rows graded another way (or every row: ``force``); returns how many changed.

    A row is re-graded from its stored ``response`` when its ``answer_format``, ``answer_from`` or
    ``grading_version`` differ from these; its status, answer, found, vote, closed_thinking and
    timed_out are replaced. Rows without a stored response keep their grades; a protected (GPQA) response
    is read back for grading and its row protected again.
    """
    if answer_from == "auto":
        raise ValueError("regrade_rows: resolve answer_from='auto' for the model first "
                         "(rsdlib.grading.resolve_answer_from)")
    stale = [r for r in rows if (r.get("response") is not None or "response_protected" in r) and (force or (
        r.get("answer_format"), r.get("answer_from"), r.get("grading_version"))
        != (answer_format, answer_from, GRADING_VERSION))]
    if not stale:
        return 0
    graded = grade_many([(reveal_response(r), r["gold"], r["kind"]) for r in stale], timeout=timeout, delim=delim,
                        answer_format=answer_format, answer_from=answer_from)
    for r, g in zip(stale, graded):
        r.update(status=g["status"], answer=g["answer"], found=g["found"], closed_thinking=g["closed_thinking"],
                 timed_out=g.get("timed_out", False), answer_format=answer_format, answer_from=answer_from,
                 grading_version=GRADING_VERSION,
                 vote=vote_key(g["answer"], r["kind"], r.get("option_order")))
        if "response_protected" in r:  # a private (GPQA) row: its new answer and vote protected as when written
            r["response"] = reveal_response(r)
            _protect_row(r)
    return len(stale)


def _stored_config(folder: Path) -> EvalConfig:
    """The EvalConfig stored in an evaluation folder's config.json (keys this version lacks are ignored)."""
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not an evaluation folder (no config.json)")
    stored = read_json(path).get("config", {})
    known = set(EvalConfig.__dataclass_fields__)
    return EvalConfig(**{k: v for k, v in stored.items() if k in known})


GRADING_FILE = "grading.json"  # in each model folder and in the folder of them: how its grades were made


class MixedGradingError(RuntimeError):
    """Evaluation folders graded in different ways (or a regrade cut midway): their numbers must not be mixed."""


def write_grading(folder: Path, state: str, reading: dict, **extra) -> None:
    """``folder/grading.json``: ``state`` ("regrading" while a regrade rewrites the folder, "graded" once every
    file derived from the grades agrees) and the reading (answer_format, answer_from, grading_version)."""
    write_json_atomic(folder / GRADING_FILE, {"state": state, **reading, "grading_version": GRADING_VERSION,
                                              **extra}, end="\n")


def check_grading(eval_dir: Path, models: Sequence[str] | None = None) -> dict:
    """Refuse an evaluation folder whose grades cannot be read together; returns {"answer_format", "grading_version"}.

    ``eval_dir``: ``results/<profile>/eval`` (a folder of model folders); ``models``: the model folders read
    (default: all). A regrade cut midway (a
    ``grading.json`` still saying "regrading", there or in a model folder) and model folders whose
    benchmarks were graded with different answer formats or grading versions raise ``MixedGradingError``
    naming them and the command that makes them agree. (``answer_from`` may differ per model by design:
    notebook 40's ``answer_from`` parameter.)
    """
    eval_dir = Path(eval_dir)
    folders = sorted(p for p in eval_dir.iterdir() if p.is_dir()) if eval_dir.is_dir() else []
    if models is not None:
        folders = [p for p in folders if p.name in set(models)]
    cut = [p for p in [eval_dir, *folders] if (p / GRADING_FILE).is_file()
           and read_json(p / GRADING_FILE).get("state") == "regrading"]
    if cut:
        record = read_json(cut[0] / GRADING_FILE)
        how = " ".join(f"--{k.replace('_', '-')} {record[k]}" for k in ("answer_format", "answer_from")
                       if record.get(f"{k}_asked"))
        raise MixedGradingError(
            f"{cut[0]}: an interrupted `rsdlib regrade` left these grades half rewritten ({GRADING_FILE} says "
            f"'regrading'); finish it with `rsdlib regrade {cut[0]}{' ' + how if how else ''}` (or rerun "
            "notebook 40 with force: true) before reading them")
    modes: dict[tuple, list[str]] = {}
    for summary in sorted(q for p in folders for q in p.glob("*/summary.json")):
        data = read_json(summary)
        key = (data.get("answer_format", "boxed (before grading version 2)"), data.get("grading_version", 1))
        modes.setdefault(key, []).append(f"{summary.parent.parent.name}/{summary.parent.name}")
    if len(modes) > 1:
        listed = "; ".join(f"{', '.join(where[:4])}{' ...' if len(where) > 4 else ''}: answer_format {fmt}, "
                           f"grading version {ver}" for (fmt, ver), where in modes.items())
        raise MixedGradingError(
            f"{eval_dir}: evaluations graded in different ways ({listed}); regrade them all the same way, "
            f"e.g. `rsdlib regrade {eval_dir} --answer-format <boxed|standard>`")
    fmt, ver = next(iter(modes), (None, None))
    return {"answer_format": fmt, "grading_version": ver}


def regrade(folder, *, answer_format: str | None = None, answer_from: str | None = None,
            timeout: float | None = None, tokenizer=None) -> dict:
    """Re-grade a stored evaluation folder (or a folder of them) with the current extraction; no model needed.

    ``folder``: an ``evaluate`` output folder (config.json + <benchmark>/samples.jsonl), or a folder
    whose subfolders are (``results/<profile>/eval``). ``answer_format`` / ``answer_from`` default to
    the stored config's; ``answer_from="auto"`` needs the model's ``tokenizer`` only when the prompt
    opens no thinking section. Every row with a stored response is re-graded, and every file derived from
    the grades is rewritten: each benchmark's samples.jsonl and summary.json, and, for a folder of model
    folders, the rows of its ``summary.json`` (notebook 40's, which Figures 1 and 4 read). Each folder's
    ``grading.json`` says "regrading" until all of that is written, then "graded" with the reading used:
    a regrade cut by a kill is refused by the readers (``check_grading``) and finished by running it again.
    Returns, per model folder and benchmark: the score before and after, ``moved`` (counts of
    "old -> new" status changes) and ``answers_found``.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        subs = sorted(p for p in folder.iterdir() if (p / "config.json").is_file()) if folder.is_dir() else []
        if not subs:
            raise FileNotFoundError(f"{folder}: neither an evaluation folder (config.json) nor a folder of them")
        asked = {"answer_format": answer_format, "answer_from": answer_from}
        reading = {k: v for k, v in asked.items() if v is not None}
        write_grading(folder, "regrading", reading, **{f"{k}_asked": v is not None for k, v in asked.items()})
        report = {p.name: regrade(p, answer_format=answer_format, answer_from=answer_from, timeout=timeout,
                                  tokenizer=tokenizer) for p in subs}
        _rewrite_stage_summary(folder)
        write_grading(folder, "graded", reading)
        return report
    cfg = _stored_config(folder)
    if answer_format is not None:
        cfg.answer_format = answer_format
    if answer_from is not None:
        cfg.answer_from = answer_from
    cfg.__post_init__()
    reading = _reading(cfg, tokenizer)
    asked = {"answer_format_asked": answer_format is not None, "answer_from_asked": answer_from is not None}
    write_grading(folder, "regrading", reading, **asked)
    report = {}
    for bench_dir in sorted(p for p in folder.iterdir() if (p / "samples.jsonl").is_file()):
        with run_lock(bench_dir):
            samples_path = bench_dir / "samples.jsonl"
            rows = unique_samples(read_jsonl_resumable(samples_path))
            before = [r["status"] for r in rows]
            regrade_rows(rows, **reading, delim=cfg.prompt.think_close,
                         timeout=cfg.grade_timeout if timeout is None else timeout, force=True)
            write_jsonl_atomic(samples_path, rows)
            moved: dict[str, int] = {}
            for old, r in zip(before, rows):
                if old != r["status"]:
                    moved[f"{old} -> {r['status']}"] = moved.get(f"{old} -> {r['status']}", 0) + 1
            entry = {"rows": len(rows), "moved": moved, "answers_found": _found_rates(rows) if rows else {}}
            summary_path = bench_dir / "summary.json"
            if summary_path.is_file():
                summary = read_json(summary_path)
                entry["score_before"] = summary.get("score")
                try:
                    summary.update(summarize_rows(rows, summary["samples_per_problem"],
                                                  PAPER_SAMPLES.get(bench_dir.name)))
                except ValueError as err:  # an unfinished benchmark: no summary to update
                    entry["error"] = str(err)
                else:
                    summary.update(reading, grading_version=GRADING_VERSION)
                    write_json_atomic(summary_path, summary, end="\n")
                    entry["score_after"] = summary["score"]
            report[bench_dir.name] = entry
    write_grading(folder, "graded", reading)
    return report


def _rewrite_stage_summary(eval_dir: Path) -> None:
    """Notebook 40's ``eval/summary.json`` again from its models' benchmark summaries (after a regrade)."""
    path = eval_dir / "summary.json"
    if not path.is_file():
        return
    doc = read_json(path)
    for name, row in doc.get("models", {}).items():
        benches = {b: eval_dir / name / b / "summary.json" for b in doc.get("benchmarks", [])}
        if all(p.is_file() for p in benches.values()):
            doc["models"][name] = score_row({b: read_json(p) for b, p in benches.items()},
                                            doc["benchmarks"])
    write_json_atomic(path, doc)


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries that decide the samples (None where absent)."""
    import platform

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "transformers", "vllm", "rsdlib", "math-verify"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------
def _adapter_dir(name_or_path) -> Path | None:
    path = Path(str(name_or_path)).expanduser()
    return path if path.is_dir() and (path / "adapter_config.json").is_file() else None


def load_eval_model(name_or_path, *, dtype: str = "auto", device: str = "auto", base_model: str | None = None):
    """(model, tokenizer) of anything ``rsdlib.models.load_model`` reads, or of a LoRA adapter folder.

    An adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) is applied to its
    base model (``base_model``, else the one named in its config) and merged; its tokenizer is used
    when the folder has one. Pickled ``adapter_model.bin`` files are refused.
    """
    from rsdlib.models import ModelNotFoundError, load_model

    adapter = _adapter_dir(name_or_path)
    if adapter is None:
        return load_model(name_or_path, dtype=dtype, device=device)
    if not (adapter / "adapter_model.safetensors").is_file():
        raise ModelNotFoundError(f"the LoRA adapter folder {adapter} has no adapter_model.safetensors "
                                 "(rsdlib never loads pickled adapter_model.bin files)")
    base = base_model or read_json((adapter / "adapter_config.json")).get("base_model_name_or_path")
    if not base:
        raise ModelNotFoundError(f"the LoRA adapter {adapter} names no base model: pass base_model=...")
    model, tokenizer = load_model(base, dtype=dtype, device=device)
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.eval()
    if (adapter / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(adapter)
    return model, tokenizer


def _vllm_source(name_or_path, out_dir: Path, cfg: EvalConfig) -> str:
    """A folder or hub id vLLM can load: embedded models prepared, adapters merged into out_dir."""
    from rsdlib import embedded
    from rsdlib.models import EMBEDDED_PREFIX

    name = str(name_or_path)
    if name.startswith(EMBEDDED_PREFIX):
        return str(embedded.prepare(embedded.EMBEDDED[name[len(EMBEDDED_PREFIX):]]))
    adapter = _adapter_dir(name)
    if adapter is None:
        return str(Path(name).expanduser()) if Path(name).expanduser().exists() else name
    merged = out_dir / "merged_model"
    if not (merged / "config.json").is_file():
        model, tokenizer = load_eval_model(adapter, dtype=cfg.dtype, device="cpu")
        tmp = out_dir / "merged_model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, merged)
    return str(merged)


def _model_label(model_or_path) -> str:
    if isinstance(model_or_path, (str, Path)):
        path = Path(str(model_or_path)).expanduser()
        return str(path.resolve()) if path.exists() else str(model_or_path)
    return str(getattr(model_or_path, "name_or_path", "") or getattr(model_or_path.config, "_name_or_path", "")
               or type(model_or_path).__name__)


# ----------------------------------------------------------------------------------------------
# The job
# ----------------------------------------------------------------------------------------------
def _claim_folder(out_dir: Path, cfg: EvalConfig, model: str) -> None:
    from rsdlib.models import model_identity

    mine = {"hash": cfg.hash(), "model": model, "model_id": model_identity(model), "backend": cfg.backend,
            "config": config_to_dict(cfg)}

    def conflict(theirs: dict) -> str | None:
        same_model = (theirs["model_id"] == mine["model_id"] if "model_id" in theirs  # by content, not folder
                      else theirs.get("model") == model)
        if theirs.get("hash") == mine["hash"] and same_model:
            return None
        what = ("config" if theirs.get("hash") != mine["hash"]
                else f"model ({theirs.get('model')!r} there, {model!r} now)")
        return (f"{out_dir} holds an evaluation with a different {what} (stored hash {theirs.get('hash')}, this run "
                f"{mine['hash']}). Use another folder, or pass force=True to delete its results and redo them.")

    claim_folder(out_dir, mine, conflict, end="\n")


def _check_problems(bench_dir: Path, problem_ids: list[str]) -> None:
    path = bench_dir / "problems.json"
    if path.exists():
        stored = read_json(path)
        if stored != problem_ids:
            raise RunConflictError(f"{bench_dir} was evaluated on another problem list ({len(stored)} problems there, "
                                   f"{len(problem_ids)} now): the dataset changed. Use another folder or force=True.")
        return
    write_json_atomic(path, problem_ids, end="\n")


def evaluate(model_or_path, cfg: EvalConfig, out_dir, *, tokenizer=None, progress: bool = True,
             force: bool = False, base_model: str | None = None) -> dict:
    """Evaluate a model on every benchmark of ``cfg``; returns {benchmark: summary}.

    ``model_or_path``: a loaded HF model (then ``tokenizer`` is required; hf backend only), or
    anything ``load_eval_model`` reads (hub id, folder, .gguf, ``embedded:student``, LoRA adapter
    folder; ``base_model`` overrides an adapter's base). ``force`` deletes the folder's previous
    results first. Rows of finished samples are kept across reruns (see the module docstring).
    """
    out_dir = Path(out_dir)
    problems_by_bench = [eval_problems(name, cfg) for name in cfg.benchmarks]  # fail before loading a model
    empty = [name for name, problems in problems_by_bench if not problems]
    if empty:
        raise ValueError(f"no problems selected for {', '.join(empty)} (split_fraction {cfg.split_fraction}, "
                         f"split_part {cfg.split_part!r}, limit {cfg.limit}, math500_easiest {cfg.math500_easiest}); "
                         "nothing to evaluate")
    world = distributed.World.from_env()
    distributed.init(world)
    if force and out_dir.exists() and world.is_main:
        (out_dir / "config.json").unlink(missing_ok=True)
        for name, _ in problems_by_bench:
            shutil.rmtree(out_dir / name, ignore_errors=True)
    label = _model_label(model_or_path)
    if cfg.backend == "vllm":
        _require_vllm()
        if not isinstance(model_or_path, (str, Path)):
            raise BackendUnavailableError("backend 'vllm' needs a model path or hub id, not a loaded model object")
    distributed.Shards(out_dir, world).main_first(lambda: _claim_folder(out_dir, cfg, label))

    model = None
    if not isinstance(model_or_path, (str, Path)):
        if tokenizer is None:
            raise ValueError("evaluate: pass tokenizer=... with a loaded model")
        model = model_or_path
    elif cfg.backend == "hf":
        device = distributed.device_for(world, cfg.device)
        model, loaded_tok = load_eval_model(model_or_path, dtype=cfg.dtype, device=device,
                                            base_model=base_model)
        tokenizer = tokenizer or loaded_tok
    if cfg.backend == "vllm":
        source = _vllm_source(model_or_path, out_dir, cfg)
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(source)
    stop_ids = end_of_turn_ids(tokenizer)
    generate = (hf_backend(model, tokenizer, cfg, stop_ids) if cfg.backend == "hf"
                else vllm_backend(source, cfg, stop_ids, progress, world))

    summaries = {}
    try:
        for name, problems in problems_by_bench:
            with distributed.Shards(out_dir / name, world).locked(run_lock) as shards:  # one job per benchmark folder
                summaries[name] = _evaluate_benchmark(name, problems, cfg, out_dir, tokenizer, generate, label,
                                                      progress, shards)
    finally:
        getattr(generate, "close", lambda: None)()  # the vLLM engine's process
    if world.is_main:  # every benchmark summarised with this reading (rows graded otherwise were re-graded)
        write_grading(out_dir, "graded", _reading(cfg, tokenizer))
    return summaries


def _evaluate_benchmark(name, problems, cfg: EvalConfig, out_dir: Path, tokenizer, generate, label, progress,
                        shards: distributed.Shards) -> dict:
    bench_dir = out_dir / name
    bench_dir.mkdir(parents=True, exist_ok=True)
    shards.main_first(lambda: _check_problems(bench_dir, [p.id for p in problems]))
    samples_path, pending_path = shards.path("samples.jsonl"), shards.path("pending.jsonl")  # this rank's files
    n = cfg.samples_for(name)
    chash = cfg.hash()
    done = shards.read("samples.jsonl")  # merged file and every shard; each writer repairs only its own
    done_keys = {(r["problem_id"], r["sample_index"]) for r in done}
    resumed = {(r["problem_id"], r["sample_index"]): (r["ids"], r["forced"]) for r in shards.read("pending.jsonl")}
    close = cfg.prompt.think_close
    delimiter_ids = list(tokenizer(cfg.forced_delimiter, add_special_tokens=False)["input_ids"])
    reading = _reading(cfg, tokenizer)

    jobs, variants = [], {}
    for p in problems:
        for k in range(n):
            if (p.id, k) in done_keys:
                continue
            variant = shuffle_choices(p, k, seed=cfg.base_seed) if p.kind == "choice" else p
            variants[(p.id, k)] = variant
            jobs.append(SampleJob((p.id, k), prompt_ids(tokenizer, variant, cfg.prompt),
                                  derive_seed(cfg.base_seed, p.id, k), derive_seed(cfg.base_seed, p.id + "/answer", k)))
    jobs = shards.take(jobs)  # this rank's share (all of them for one process)

    bar = tqdm(total=len(problems) * n, initial=len(done_keys), desc=name, unit="sample", mininterval=5,
               disable=not progress)
    n_correct = [sum(r["status"] == "correct" for r in done)]

    def on_done(job: SampleJob, ids: list[int], finish: str, forced: bool, continued: bool) -> None:
        variant = variants[job.key]
        text = tokenizer.decode(ids, skip_special_tokens=False)
        graded = grade_many([(text, variant.gold, variant.kind)], timeout=cfg.grade_timeout, delim=close,
                            answer_format=reading["answer_format"], answer_from=reading["answer_from"])[0]
        order = _option_order(variant) if variant.kind == "choice" else None
        row = {
            "benchmark": name, "problem_id": job.key[0], "sample_index": job.key[1], "config_hash": chash,
            "seed": job.seed, "answer_seed": job.answer_seed if continued else None,
            "prompt_tokens": len(job.prompt_ids), "n_tokens": len(ids), "finish_reason": finish,
            "forced": forced, "continued": continued, "closed_thinking": graded["closed_thinking"],
            "status": graded["status"], "answer": graded["answer"],
            "vote": vote_key(graded["answer"], variant.kind, order),
            "gold": variant.gold, "kind": variant.kind, "timed_out": graded.get("timed_out", False),
            "found": graded["found"], **reading, "grading_version": GRADING_VERSION, "response": text,
        }
        if order is not None:
            row["option_order"] = order  # canonical option shown at each letter; 0 = the correct one
        if variant.private:
            _protect_row(row)
        append_jsonl(samples_path, row)
        done.append(row)
        n_correct[0] += row["status"] == "correct"
        bar.update(1)
        bar.set_postfix(correct=f"{n_correct[0] / len(done):.1%}", refresh=False)

    def on_pending(job: SampleJob, ids: list[int], forced: bool) -> None:
        append_jsonl(pending_path, {"problem_id": job.key[0], "sample_index": job.key[1], "ids": ids, "forced": forced})

    if jobs:
        generate_with_budget(
            generate, jobs, max_tokens=cfg.max_tokens_for(name), think_budget=cfg.think_budget_for(name),
            delimiter_ids=delimiter_ids,
            thinking_closed=lambda ids: close in tokenizer.decode(ids, skip_special_tokens=False),
            on_done=on_done, on_pending=on_pending, resumed=resumed,
        )
    bar.close()
    pending_path.unlink(missing_ok=True)
    ranks = shards.rank_stats()
    done = shards.merge("samples.jsonl", order=[p.id for p in problems], extra=["pending.jsonl"])  # None off rank 0
    if done is None:
        return shards.result([bench_dir / "summary.json"])[0]
    (bench_dir / "pending.jsonl").unlink(missing_ok=True)  # left by an interrupted single process
    order = {p.id: i for i, p in enumerate(problems)}  # one order whatever the ranks (float sums)
    done.sort(key=lambda r: (order.get(r["problem_id"], len(order)), r["problem_id"], r["sample_index"]))
    if regrade_rows(done, **reading, delim=close, timeout=cfg.grade_timeout):  # rows graded another way before
        write_jsonl_atomic(bench_dir / "samples.jsonl", done)

    summary = {"benchmark": name, "model": label, "backend": cfg.backend,
               **summarize_rows(done, n, PAPER_SAMPLES.get(name)), **reading,
               "grading_version": GRADING_VERSION,
               "max_tokens": cfg.max_tokens_for(name), "think_budget": cfg.think_budget_for(name),
               "temperature": cfg.temperature, "top_p": cfg.top_p, "config_hash": chash,
               "versions": library_versions(), "config": config_to_dict(cfg), "ranks": ranks}
    write_json_atomic(bench_dir / "summary.json", summary, end="\n")
    return shards.result([bench_dir / "summary.json"])[0]


# ----------------------------------------------------------------------------------------------
# `rsdlib regrade FOLDER`
# ----------------------------------------------------------------------------------------------
def run_regrade(args) -> int:
    """CLI: re-grade stored evaluation folders and print what moved, per model and benchmark."""
    import sys

    try:
        report = regrade(args.folder, answer_format=args.answer_format, answer_from=args.answer_from,
                         timeout=args.timeout)
    except (FileNotFoundError, ValueError) as err:
        print(f"rsdlib regrade: error: {err}", file=sys.stderr)
        return 1
    if report and all("rows" in v for v in report.values()):  # one model folder
        report = {Path(args.folder).name: report}
    for model, benches in report.items():
        for bench, entry in benches.items():
            before, after = entry.get("score_before"), entry.get("score_after")
            score = (f"{100 * before:.1f}% -> {100 * after:.1f}%" if before is not None and after is not None
                     else "no summary (unfinished)")
            found = ", ".join(f"{k} {100 * v:.0f}%" for k, v in entry["answers_found"].items() if v)
            moved = ", ".join(f"{k}: {v}" for k, v in entry["moved"].items()) or "none"
            print(f"{model}/{bench}: {score}; {entry['rows']} rows; moved {moved}; answers found {found}")
    return 0



# ----------------------------------------------------------------------------------------------
# Notebook 40's stage: the base student and every trained student, from the notebook's parameters
# ----------------------------------------------------------------------------------------------
EVAL_NOTEBOOK = "40_evaluate"
TABLE_NAMES = {"aime24": "AIME24", "aime25": "AIME25", "gpqa_diamond": "GPQA Diamond", "math500": "MATH500"}


def _manifest_models(path: Path) -> dict:
    """{name: entry} of notebook 30's / 35's manifest, each ``final`` folder resolved (stored relative to the
    results folder, so a moved or copied results folder evaluates its own models)."""
    from rsdlib.paths import resolve_stored

    models = read_json(path).get("models", {}) if path.is_file() else {}
    return {name: {**entry, "final": resolve_stored(entry.get("final"), path.parent.parent)}
            for name, entry in models.items()}


def resolve_model(profile: str, name: str, extra_models: dict, *, strict: bool = True) -> str:
    """Model folder/spec of a name: base (the untrained student of pair main), a method trained on pair
    main's traces, ``<pair>-<method>``, a model of notebook 35, an extra model; else, unless ``strict``,
    the name itself as a model spec (tiny:, embedded:, a folder, a hub id)."""
    from rsdlib import paths
    from rsdlib.models import model_location

    results = paths.results_dir(profile)
    trained = _manifest_models(results / "models" / "manifest.json")
    trained.update(_manifest_models(results / "multistep" / "manifest.json"))  # notebook 35: <method>-<n>step
    if name == "base":
        manifest = read_json(paths.input_file(profile, "traces", "manifest.json"))
        return model_location(manifest["pairs"]["main"]["student"])
    for key in (f"main-{name}", name):
        if key in trained:
            return trained[key]["final"]
    spec = extra_models.get(name, None if strict else name)
    if spec is None:
        raise ValueError(f"unknown model {name!r}: not 'base', not trained by notebook 30 ({sorted(trained)}), "
                         f"not in extra_models")
    return trained[spec]["final"] if spec in trained else model_location(spec)


def stage_eval_config(params: dict, *, need_traces: bool = True) -> tuple[dict, EvalConfig]:
    """(``evaluation`` with backend auto resolved, its EvalConfig): the students are asked exactly as during
    trace generation unless ``evaluation`` sets its own prompt; unknown keys refused. Without notebook 10's
    manifest: an error naming it, or (``need_traces`` false) the EvalConfig's own prompt."""
    from rsdlib import paths

    evaluation = params["evaluation"]
    traces_manifest = {}
    if need_traces or (paths.results_dir(params["profile"]) / "traces" / "manifest.json").is_file():
        traces_manifest = read_json(paths.input_file(params["profile"], "traces", "manifest.json"))
    if evaluation.get("backend") == "auto":  # vLLM where it is installed and a GPU is visible, else rsdlib's HF decoder
        import importlib.util

        import torch

        backend = "vllm" if importlib.util.find_spec("vllm") and torch.cuda.is_available() else "hf"
        evaluation = {**evaluation, "backend": backend}
        print(f"backend auto -> {evaluation['backend']}")
    prompt = {"prompt": traces_manifest["prompt"]} if "prompt" in traces_manifest else {}
    return evaluation, load_yaml_config(EvalConfig, {**prompt, **evaluation})


def model_eval_config(params: dict, cfg: EvalConfig, name: str) -> EvalConfig:
    """Model ``name``'s EvalConfig: where its answers are read (``answer_from``), validated again."""
    import dataclasses

    return dataclasses.replace(cfg, answer_from=params["answer_from"].get(name, cfg.answer_from))


def check_eval_params(params: dict) -> tuple[dict, EvalConfig, dict[str, str]]:
    """Refuse bad parameters before any model loads; returns ``stage_eval_config`` and {model name: folder
    or spec}."""
    from rsdlib import paths as paths_mod
    from rsdlib.paths import check_name

    for name in params["models"]:  # each names a folder results/<profile>/eval/<name>
        check_name(name, "models entry")
    for name in params["extra_models"]:
        check_name(name, "extra_models key")
    try:
        evaluation, cfg = stage_eval_config(params)
    except JsonFileError:
        raise
    except ValueError as err:
        raise ValueError(f"{paths_mod.params_source(params['profile'], EVAL_NOTEBOOK)}: evaluation: {err}") from None
    plan = {name: resolve_model(params["profile"], name, params["extra_models"])
            for name in [*params["models"], *params["extra_models"]]}
    unknown = sorted(set(params["answer_from"]) - set(plan))
    if unknown:
        raise ValueError(f"answer_from: unknown model name(s) {unknown}; models: {sorted(plan)}")
    return evaluation, cfg, plan


def model_stamp(where: str) -> dict:
    """What identifies the weights behind ``where``: a retrained model in the same folder must be re-evaluated,
    a moved or copied one must not (``rsdlib.models.model_identity``: a folder by its content sha256)."""
    from rsdlib.models import model_identity

    return {"model": model_identity(where)}


def score_row(summaries: dict, benchmarks: Sequence[str]) -> dict:
    row = {TABLE_NAMES.get(b, b): 100 * s["score"] for b, s in summaries.items()}
    row["Average"] = sum(row.values()) / len(row) if len(row) == len(benchmarks) else None
    for b, s in summaries.items():  # avg@n beside the paper's metric where more samples were drawn (MATH500)
        if s["samples_per_problem"] > s.get("paper_samples", s["samples_per_problem"]):
            row[f"{TABLE_NAMES.get(b, b)} avg@{s['samples_per_problem']}"] = 100 * s["avg_at_k"]
    row["no answer (%)"] = 100 * sum(s["no_answer_rate"] * s["n_samples"] for s in summaries.values()) / \
        max(1, sum(s["n_samples"] for s in summaries.values()))
    row["problems"] = {b: s["n_problems"] for b, s in summaries.items()}
    row["metric"] = {b: s["paper_metric"] for b, s in summaries.items()}
    row["answers_found"] = {b: s["answers_found"] for b, s in summaries.items()}  # boxed / stated / last_expr. / none
    return row


def answers_found_table(scores: dict):
    """How answers were found (% of samples), per model and benchmark: boxed / stated / last expression / none."""
    import pandas as pd

    return pd.DataFrame({(k, TABLE_NAMES.get(b, b)): {f: round(100 * v, 1) for f, v in per.items()}
                         for k, r in scores.items() for b, per in r["answers_found"].items()}).T

if __name__ == "__main__":
    from rsdlib.launch import evaluate_main

    raise SystemExit(evaluate_main())
