"""The trace-generation job: rejection sampling with any decoder mode, plus UPFT prefixes (Sections 3.1-3.3, 4.1).

For each problem, ``samples_per_problem`` samples go through the decoder (rsd, skd, teacher or
student), batched across samples and problems. A sample is KEPT when it closes its thinking exactly
once, ends its turn (emits an end-of-turn id), has a fallback rate <= ``max_fallback_rate`` and is
correct; one kept sample per problem (``keep``: shortest, first or random; by default the authors'
rule for the mode, ``KEEP_BY_MODE``) becomes a full training example. A problem with no kept sample
contributes a PREFIX example: the first ``prefix_tokens`` tokens of one of its samples, without any
end-of-turn token (training supervises only the prefix). A problem without a trusted gold
(``rsdlib.grading.gold_trust``) cannot be graded: it is unsolved, never attempted, and gets a prefix.

Training-set composition (the hybrid recipe, Sections 3.3 and 4.2): the paper trains RSD-1% on
1,000 examples, "only 180 are complete reasoning traces, while the remainder consists of 128 token
prefixes": every s1K problem gives an example. So with ``restrict_to`` (the teacher's run: the
paper's "/234") a method ATTEMPTS only the problems the teacher solved (16 samples each; the
"solved x/234" of Table 2), and with ``prefix_scope: all`` (the default) every other problem gets a
PREFIX-ONLY generation by the same method (one sample of ``prefix_tokens`` tokens, never graded),
whose tokens become its prefix example. Every generated method (teacher, self-distill, SKD, RSD) is
treated alike; the teacher attempts all problems, so its unsolved ones get prefixes of its own
samples. ``prefix_scope: attempted`` keeps examples to the attempted problems. The composition
(full / prefix / total) is in ``summary.json`` and ``rsdlib.traces.trace_run_stats``.

A teacher that ends its thinking in its own format (s1.1-7B: ``<|im_start|>answer``, s1's layout)
has that marker mapped to the student's ``think_close`` (``PromptStyle.think_close_aliases``,
``map_think_close``) in the stored trace, so grading and training see the student's delimiter.

Storage (one folder per run)::

    config.json     the job config, its hash and the problem ids; a rerun with another config is refused
    samples.jsonl   every sample, kept or not, appended (and fsynced) as soon as it finishes, with its
                    per-token record, seed, grade and the config hash
    dataset.jsonl   the training examples (format: rsdlib.train), written when every sample is done
    summary.json    the run's row of Tables 2 and 6

Interrupting the job (even kill -9) and rerunning it resumes: a torn last line is cut off (by the
writer only; readers never modify the files, and a bad line elsewhere is an error naming it), finished
samples are skipped, and the final dataset equals that of an uninterrupted run (every sample's seed
depends only on (base_seed, problem id, sample index)).

Under torchrun / srun (``rsdlib.distributed``) each rank generates its share of the (problem, sample)
units into its own shard, ``shards/rank<R>-of-<W>/samples.jsonl``; rank 0 merges them into
``samples.jsonl`` and writes the dataset and summary, which equal a single process's (the summary
adds ``ranks``: units and wall seconds per rank). On the command line::

    python -m rsdlib.traces --profile demo --method rsd-p1 --out DIR
    torchrun --standalone --nproc-per-node 8 -m rsdlib.traces --params ... --method rsd-p1 --out DIR
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from tqdm.auto import tqdm

from rsdlib import distributed, store
from rsdlib.config import check_number, config_hash, config_to_dict, load_yaml_config
from rsdlib.decoding import CACHE_KINDS, MODES, Decoder, DecodingConfig, derive_seed
from rsdlib.grading import ANSWER_FORMATS, gold_trust, grade_many
from rsdlib.metrics import summarize_dataset
from rsdlib.prompts import PromptStyle, encode_parts, end_of_turn_ids, prompt_ids, teacher_prompt_ids, turn_end_id

KEEP_RULES = ("shortest", "first", "random")
# The keep rule of each decoding mode when a method names none (issue 30). The paper says only "selecting a
# correct one"; the authors' code kept the SHORTEST correct trace in its RSD filter and stopped at the
# FIRST correct sample in its teacher-only baseline (field notes, section 1). SKD-inspired runs the RSD
# pipeline with roles swapped: shortest, like RSD. Self-distill (student-only sampling, the teacher-only
# baseline's twin) keeps the first correct sample: with 203 attempts (Table 3's compute-equivalent run)
# the shortest of 203 would be a much stronger length filter than RSD's shortest of 16.
KEEP_BY_MODE = {"rsd": "shortest", "skd": "shortest", "teacher": "first", "student": "first"}
PREFIX_RULES = ("first", "longest", "random")
PREFIX_SCOPES = ("all", "attempted")


class EmptyTrainingSetError(RuntimeError):
    """A trace run that must feed a training stage has nothing to train on (loud, never a silent skip)."""


@dataclass
class TraceJobConfig:
    """One trace generator of Table 1 (e.g. RSD at 1%, teacher-generated, self-distill)."""

    method: str = "rsd"  # run name, used in tables and as the folder name
    teacher: str = ""  # teacher model name (recorded; part of the config hash)
    student: str = ""  # student model name (recorded; part of the config hash)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)  # mode, temperature, threshold...
    prompt: PromptStyle = field(default_factory=PromptStyle)  # system prompt, instructions, delimiters
    samples_per_problem: int = 16  # rejection-sampling attempts per problem (paper: 16)
    max_fallback_rate: float = 0.5  # a kept sample falls back on at most this share of tokens (authors: 50%)
    keep: str = ""  # which correct sample becomes the example: shortest | first | random; "" = KEEP_BY_MODE
    prefix_tokens: int = 128  # length of the UPFT prefix for unsolved problems (paper: 128); 0 = none
    prefix_sample: str = "first"  # which sample gives the prefix: first | longest | random
    # all: problems outside restrict_to get a prefix-only generation (paper: 180 + 820) | attempted
    prefix_scope: str = "all"
    base_seed: int = 0  # seeds are derived per (problem id, sample index) from this
    batch_size: int = 16  # decoder rows at once (not part of the hash: results do not depend on it)
    max_cache_gib: float | None = None  # KV-cache budget (GiB): fewer rows if batch_size would exceed it (not hashed)
    # the lockstep decoder's KV cache (not hashed: same tokens): dynamic (grown by chunks, trimmed as rows leave)
    # | static (fixed buffers, rsdlib.engine.StaticState); compile_decoder: torch.compile the static step's
    # forwards (CUDA graphs on CUDA; compiling takes a minute or more per model and batch shape)
    decode_cache: str = "dynamic"
    compile_decoder: bool = False
    grade_timeout: float = 10.0  # seconds per math-verify comparison
    answer_format: str = "boxed"  # how a sample's answer is read: boxed (the authors' filter: a \\boxed{} after the
    # end of thinking, as the prompt asks; training traces then teach boxing) | standard (rsdlib.grading's reading)

    def __post_init__(self) -> None:
        if isinstance(self.decoding, dict):
            self.decoding = DecodingConfig(**self.decoding)
        if isinstance(self.prompt, dict):
            self.prompt = PromptStyle(**self.prompt)
        if not isinstance(self.decoding, DecodingConfig):
            raise ValueError(f"TraceJobConfig.decoding must be a mapping of DecodingConfig keys, got {self.decoding!r}")
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(f"TraceJobConfig.answer_format must be one of {ANSWER_FORMATS}, "
                             f"got {self.answer_format!r}")
        check_number("TraceJobConfig", "samples_per_problem", self.samples_per_problem, minimum=1, integer=True)
        check_number("TraceJobConfig", "max_fallback_rate", self.max_fallback_rate, minimum=0, maximum=1)
        check_number("TraceJobConfig", "prefix_tokens", self.prefix_tokens, minimum=0, integer=True)
        check_number("TraceJobConfig", "base_seed", self.base_seed, integer=True)
        check_number("TraceJobConfig", "batch_size", self.batch_size, minimum=1, integer=True)
        if self.keep == "":
            self.keep = KEEP_BY_MODE[self.decoding.mode]
        if self.keep not in KEEP_RULES:
            raise ValueError(f"keep must be one of {KEEP_RULES}, got {self.keep!r}")
        if self.prefix_sample not in PREFIX_RULES:
            raise ValueError(f"prefix_sample must be one of {PREFIX_RULES}, got {self.prefix_sample!r}")
        if self.prefix_tokens < 0:
            raise ValueError("prefix_tokens must be >= 0")
        if self.max_cache_gib is not None and not self.max_cache_gib > 0:
            raise ValueError("max_cache_gib must be > 0 (or null: no limit but free CUDA memory), "
                             f"got {self.max_cache_gib}")
        if self.decode_cache not in CACHE_KINDS:
            raise ValueError(f"TraceJobConfig.decode_cache must be one of {CACHE_KINDS}, got {self.decode_cache!r}")
        if not isinstance(self.compile_decoder, bool):
            raise ValueError(f"TraceJobConfig.compile_decoder must be true or false, got {self.compile_decoder!r}")
        if self.prefix_scope not in PREFIX_SCOPES:
            raise ValueError(f"prefix_scope must be one of {PREFIX_SCOPES}, got {self.prefix_scope!r}")

    @property
    def decoder_options(self) -> dict:
        """``Decoder`` keyword arguments of this job (the KV cache and compilation; tokens do not depend on them)."""
        return {"cache": self.decode_cache, "compile": self.compile_decoder}

    @classmethod
    def from_yaml(cls, source, **overrides) -> "TraceJobConfig":
        return load_yaml_config(cls, source, **overrides)

    def hash(self) -> str:
        data = config_to_dict(self)
        data.pop("batch_size", None)
        data.pop("max_cache_gib", None)
        data.pop("decode_cache", None)
        data.pop("compile_decoder", None)
        if not data["prompt"].get("think_close_aliases"):  # unset: the hash of the runs made before it existed
            data["prompt"].pop("think_close_aliases", None)
        return config_hash(data)


# ----------------------------------------------------------------------------------------------
# A trace run's folder (the append-only store itself: rsdlib.store)
# ----------------------------------------------------------------------------------------------


def _claim_folder(out_dir: Path, cfg: TraceJobConfig, problem_ids: list[str], prefix_ids: list[str] = (),
                  ungradable_ids: list[str] = (), denominator: int | None = None) -> None:
    """Write config.json, or check that the folder's run has the same config and problems.

    ``problems``: the problems attempted; ``prefix_only_problems``: those given a prefix-only generation;
    ``ungradable_problems``: those without a trusted gold (rsdlib.grading.gold_trust); ``solved_denominator``:
    Table 2's "/N" (every problem for an unrestricted run, the attempted ones otherwise).
    """
    mine = {"hash": cfg.hash(), "config": config_to_dict(cfg), "problems": problem_ids,
            "prefix_only_problems": list(prefix_ids), "ungradable_problems": list(ungradable_ids),
            "solved_denominator": len(problem_ids) if denominator is None else denominator}

    def conflict(theirs: dict) -> str | None:
        if theirs.get("hash") != mine["hash"]:
            what = f"config (stored hash {theirs.get('hash')}, this run {mine['hash']})"
        elif theirs.get("problems") != problem_ids:
            stored = theirs.get("problems") or []
            what = (f"problem list ({len(stored)} problems stored, {len(problem_ids)} in this run, "
                    f"{len(set(stored) ^ set(problem_ids))} differing ids)")
        elif theirs.get("prefix_only_problems", []) != list(prefix_ids):
            stored = theirs.get("prefix_only_problems", [])
            what = (f"list of prefix-only problems ({len(stored)} stored, {len(prefix_ids)} in this run, "
                    f"{len(set(stored) ^ set(prefix_ids))} differing ids)")
        else:
            return None
        return (f"{out_dir} holds a trace run with a different {what}. Use another folder, or delete it "
                "(or pass force=True) to redo it.")

    store.claim_folder(out_dir, mine, conflict)


# ----------------------------------------------------------------------------------------------
# Selection: kept samples, full and prefix examples
# ----------------------------------------------------------------------------------------------
def map_think_close(trace, tokenizer, style) -> str | None:
    """Replace a native end of thinking (``style.think_close_aliases``) by ``style.think_close``, in place.

    s1.1-7B ends its thinking with ``<|im_start|>answer`` (s1's layout) and never writes ``</think>``;
    its trace is stored, graded and trained on with the student's delimiter instead (the s1 authors'
    conversion of s1K-1.1 for Qwen3). Only the first alias occurrence before any ``think_close`` is
    mapped; the new tokens get NaN probabilities, no fallback and the source of the replaced tokens.
    Returns the alias mapped, or None.
    """
    ids = list(trace.token_ids)
    close = list(tokenizer(style.think_close, add_special_tokens=False)["input_ids"])
    for alias in style.think_close_aliases:
        pattern = list(tokenizer(alias, add_special_tokens=False)["input_ids"])
        n = len(pattern)
        for i in range(len(ids) - n + 1):
            if ids[i:i + n] == pattern:
                if any(ids[j:j + len(close)] == close for j in range(i)):
                    break  # the trace already closed its thinking the student's way
                nan = float("nan")
                trace.token_ids[i:i + n] = close
                for name, value in (("teacher_prob", nan), ("student_prob", nan), ("student_prob_raw", nan),
                                    ("student_entropy", nan), ("fallback", False)):
                    getattr(trace, name)[i:i + n] = [value] * len(close)
                trace.source[i:i + n] = [trace.source[i]] * len(close)
                return alias
    return None


def is_kept(sample: dict, cfg: TraceJobConfig | float) -> bool:
    """The paper's filter: one closed thinking, an end of turn, fallback <= limit, correct.

    "Ends its turn" means the last token is the turn-end token (``<|im_end|>`` for Qwen), the one
    training supervises; another stop id (e.g. ``<|endoftext|>``) ends the sample but is not kept.
    ``cfg``: the job config, or its ``max_fallback_rate``.
    """
    limit = cfg if isinstance(cfg, (int, float)) else cfg.max_fallback_rate
    return (
        not sample.get("prefix_only")
        and sample["think_closes"] == 1
        and sample["ended_turn"]
        and sample["fallback_rate"] <= limit
        and sample["status"] == "correct"
    )


def choose_kept(kept: Sequence[dict], rule: str, rng: random.Random | None = None) -> dict:
    """The kept sample of one problem that becomes its full example (``kept`` in sample order).

    first: the lowest sample index (the authors' teacher-only baseline stopped at its first correct
    sample); shortest: the fewest tokens, ties to the lower index (the authors' RSD filter, field notes
    section 1); random: ``rng``'s choice.
    """
    if rule == "first":
        return kept[0]
    if rule == "shortest":
        return min(kept, key=lambda s: (len(s["token_ids"]), s["sample_index"]))
    return rng.choice(kept)


def kept_lengths_by_rule(samples: Sequence[dict], max_fallback_rate: float) -> dict:
    """Mean kept-trace length (tokens) under the "first" and the "shortest" rule, from the same samples.

    Table 6 under both rules without new generation: per problem with a kept sample, the first kept
    sample's length and the shortest one's. Returns {"first": mean, "shortest": mean, "problems": n}.
    """
    by_problem: dict[str, list[dict]] = {}
    for s in sorted(samples, key=lambda s: (s["problem_id"], s["sample_index"])):
        if is_kept(s, max_fallback_rate):
            by_problem.setdefault(s["problem_id"], []).append(s)
    out: dict = {"problems": len(by_problem)}
    for rule in ("first", "shortest"):
        lengths = [len(choose_kept(kept, rule)["token_ids"]) for kept in by_problem.values()]
        out[rule] = sum(lengths) / len(lengths) if lengths else None
    return out


def _rng(cfg: TraceJobConfig, problem_id: str, what: str) -> random.Random:
    return random.Random(derive_seed(cfg.base_seed, f"{what}:{problem_id}", 0))


def select_examples(samples: Sequence[dict], cfg: TraceJobConfig, stop_ids: Sequence[int]) -> list[dict]:
    """Training examples (rsdlib.train format) from one problem's samples, in sample order."""
    samples = sorted(samples, key=lambda s: s["sample_index"])
    if not samples:
        return []
    pid = samples[0]["problem_id"]
    kept = [s for s in samples if is_kept(s, cfg)]
    base = {"problem_id": pid, "source": cfg.method, "prompt_ids": samples[0]["prompt_ids"]}
    if kept:
        chosen = choose_kept(kept, cfg.keep, _rng(cfg, pid, "keep") if cfg.keep == "random" else None)
        return [{"id": f"{pid}#{chosen['sample_index']}", **base, "sample_index": chosen["sample_index"],
                 "completion_ids": chosen["token_ids"], "kind": "full"}]
    if cfg.prefix_tokens == 0:
        return []
    if cfg.prefix_sample == "first":
        chosen = samples[0]
    elif cfg.prefix_sample == "longest":
        chosen = max(samples, key=lambda s: (len(s["token_ids"]), -s["sample_index"]))
    else:
        chosen = _rng(cfg, pid, "prefix").choice(samples)
    tokens = [t for t in chosen["token_ids"] if t not in set(stop_ids)][: cfg.prefix_tokens]
    if not tokens:
        return []
    return [{"id": f"{pid}#{chosen['sample_index']}/prefix", **base, "sample_index": chosen["sample_index"],
             "completion_ids": tokens, "kind": "prefix"}]


def summarize_run(samples: Sequence[dict], examples: Sequence[dict], cfg: TraceJobConfig, n_problems: int,
                  sub_threshold: float = 0.01) -> dict:
    """The run's row of Table 2 (solved, fallback rate, sub-1% tokens) and Table 6 (token counts).

    The dataset traces are the kept (full) examples, the paper's training data; fallback rate and
    the sub-threshold share are pooled over their tokens (rsdlib.metrics.summarize_dataset), with
    the raw (T = 1) student probability.
    """
    prefix_only = [s for s in samples if s.get("prefix_only")]
    samples = [s for s in samples if not s.get("prefix_only")]
    chosen = {(e["problem_id"], e["sample_index"]) for e in examples if e["kind"] == "full"}
    records = [{**s, "kept": (s["problem_id"], s["sample_index"]) in chosen} for s in samples]
    row = summarize_dataset(records, name=cfg.method, n_problems=n_problems, threshold=sub_threshold,
                            fallback_applicable=cfg.decoding.mode in ("rsd", "skd"))
    statuses = [s["status"] for s in samples]
    row.update({
        "method": cfg.method,
        "mode": cfg.decoding.mode,
        "decoding_threshold": cfg.decoding.threshold if cfg.decoding.mode in ("rsd", "skd") else None,
        "prefix_examples": sum(e["kind"] == "prefix" for e in examples),
        **training_composition(examples),
        "prefix_only_samples": len(prefix_only),
        "samples": len(samples),
        "correct_samples": statuses.count("correct"),
        "no_answer_samples": statuses.count("no_answer"),
        "avg_sample_tokens": sum(len(s["token_ids"]) for s in samples) / len(samples) if samples else None,
    })
    return row


def training_composition(examples: Sequence[dict]) -> dict:
    """{"full_examples", "prefix_examples", "training_examples"} of a dataset (the paper's 180 + 820 = 1,000)."""
    full = sum(e["kind"] == "full" for e in examples)
    prefix = sum(e["kind"] == "prefix" for e in examples)
    return {"full_examples": full, "prefix_examples": prefix, "training_examples": len(examples)}


def check_trainable(dataset_path: str | Path, name: str, *, require_kept: bool = True) -> dict:
    """The composition of a dataset about to be trained on; EmptyTrainingSetError when it has 0 kept traces.

    A student trained on prefixes only (or on nothing, so the "trained" model is the base model) is
    not the paper's experiment: it stops the training stage with the count instead of a silent skip.
    ``require_kept=False`` (the smoke profile's random models) accepts prefixes only, never an empty set.
    """
    path = Path(dataset_path)
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no dataset {path} (run the trace notebook first)")
    examples = store.read_jsonl_resumable(path)
    composition = training_composition(examples)
    if composition["full_examples"] == 0 and (require_kept or not examples):
        raise EmptyTrainingSetError(
            f"{name}: 0 kept (full) traces in {path} ({composition['prefix_examples']} prefix examples): nothing "
            f"solved, so there is nothing to train on. Read that run's samples.jsonl (statuses, think_closes) first.")
    return composition


# ----------------------------------------------------------------------------------------------
# The job
# ----------------------------------------------------------------------------------------------
def run_trace_job(pair, problems, cfg: TraceJobConfig, out_dir, *, progress: bool = True,
                  restrict_to: str | Path | None = None, force: bool = False) -> dict:
    """Generate, grade and select traces for ``problems`` with ``pair`` (a rsdlib.models.ModelPair).

    ``restrict_to``: the folder of another run (the teacher's, as the paper's "/234"): only the
    problems it solved are attempted. Problems without a trusted gold answer (rsdlib.grading.gold_trust:
    none, or a partial one) are never attempted: they are unsolved, get a prefix-only generation
    (``prefix_scope: all``) and are counted (``ungradable_problems``); so all problems are accounted for.
    Returns the summary (also written to ``summary.json``). Only one process may write a run folder
    at a time (RunConflictError otherwise); under a launcher, each rank does its share into its own
    shard (``rsdlib.distributed``) and every rank returns the merged summary.
    """
    out_dir = Path(out_dir)
    if not problems:
        raise ValueError(f"run_trace_job: no problems given for {out_dir} (an empty selection: check the "
                         "benchmark, n_problems and split_fraction); refusing to write an empty run")
    with distributed.Shards(out_dir).locked(store.run_lock) as shards:  # one process: run_lock(out_dir)
        return _run_trace_job(pair, problems, cfg, out_dir, progress=progress, restrict_to=restrict_to, force=force,
                              shards=shards)


def _run_trace_job(pair, problems, cfg: TraceJobConfig, out_dir: Path, *, progress: bool,
                   restrict_to, force: bool, shards: distributed.Shards) -> dict:
    if force and out_dir.exists() and shards.is_main:
        for name in ("config.json", "samples.jsonl", "dataset.jsonl", "summary.json"):
            (out_dir / name).unlink(missing_ok=True)
        shards.clear()
    every_problem = list(problems)
    no_gold = [p for p in problems if not p.gold]
    ungradable = [p for p in problems if not gold_trust(p)[0]]  # no gold, or one rsdlib.grading does not trust
    problems = [p for p in problems if gold_trust(p)[0]]
    unattempted = list(ungradable)  # an ungradable problem is an unsolved one: it gets a prefix, never an attempt
    if restrict_to is not None:
        solved = solved_problem_ids(restrict_to)
        if not solved:
            raise EmptyTrainingSetError(
                f"{cfg.method}: the run it is restricted to ({restrict_to}) solved 0 of its problems, so this method "
                f"would attempt nothing. Check that run's samples.jsonl (a teacher graded 'no_answer' everywhere "
                f"usually ends its thinking in its own format: set prompt.think_close_aliases, e.g. "
                f"['<|im_start|>answer'] for s1.1-7B), or set restrict_to_teacher_solved: false.")
        unattempted = [p for p in every_problem if p.id not in solved or not gold_trust(p)[0]]
        problems = [p for p in problems if p.id in solved]
    # the hybrid recipe: every problem not attempted gets one prefix-only generation (in problem order)
    prefix_only = unattempted if cfg.prefix_scope == "all" and cfg.prefix_tokens > 0 else []
    # Table 2's denominator: every problem for an unrestricted run (the paper's 234/1000), else the attempted
    denominator = len(problems) if restrict_to is not None else len(every_problem)
    tok = pair.student_tokenizer
    stop_ids = cfg.decoding.stop_ids or end_of_turn_ids(tok)
    turn_end = turn_end_id(tok)
    dec_cfg = DecodingConfig(**{**cfg.decoding.to_dict(), "stop_ids": tuple(stop_ids),
                                "record_both": cfg.decoding.record_both or cfg.decoding.mode == "teacher"})
    shards.main_first(lambda: _claim_folder(out_dir, cfg, [p.id for p in problems], [p.id for p in prefix_only],
                                            [p.id for p in ungradable], denominator))
    samples_path = shards.path("samples.jsonl")  # this rank's file (samples.jsonl for one process)
    done = shards.read("samples.jsonl")  # merged file and every shard; each writer repairs only its own
    done_keys = {(s["problem_id"], s["sample_index"]) for s in done}
    started = time.perf_counter()

    prompts = {p.id: prompt_ids(tok, p, cfg.prompt) for p in problems}
    t_tok = getattr(pair, "teacher_tokenizer", None)  # a teacher of another template gets its own prompt
    t_prompts = {p.id: teacher_prompt_ids(t_tok, tok, p, cfg.prompt) for p in problems + prefix_only}
    own = (lambda items: [t_prompts[p.id] for p in items]  # noqa: E731
           if t_tok is not None and any(v is not None for v in t_prompts.values()) else None)
    todo = [(p, k) for p in problems for k in range(cfg.samples_per_problem) if (p.id, k) not in done_keys]
    todo = shards.take(todo)  # this rank's share (all of it for one process)
    remaining = {p.id: 0 for p in problems}
    for p, _ in todo:
        remaining[p.id] += 1
    counts = {"solved": len({s["problem_id"] for s in done if is_kept(s, cfg)}), "tokens": 0, "fallback": 0}
    bar = tqdm(total=len(problems), initial=sum(v == 0 for v in remaining.values()), desc=cfg.method,
               unit="problem", mininterval=5, disable=not progress)
    solved_now = {s["problem_id"] for s in done if is_kept(s, cfg)}

    def on_finish(i, trace):
        problem, k = todo[i]
        mapped = map_think_close(trace, tok, cfg.prompt) if cfg.prompt.think_close_aliases else None
        text = tok.decode(trace.token_ids, skip_special_tokens=False)
        graded = grade_many([(text, problem.gold, problem.kind)], timeout=cfg.grade_timeout,
                            delim=cfg.prompt.think_close, answer_format=cfg.answer_format)[0]
        record = {
            "problem_id": problem.id, "sample_index": k, "config_hash": cfg.hash(), "text": text,
            "status": graded["status"], "answer": graded["answer"],
            "think_closes": text.count(cfg.prompt.think_close),
            "ended_turn": bool(trace.token_ids) and trace.token_ids[-1] == turn_end,
            "fallback_rate": trace.fallback_rate, "n_tokens": len(trace.token_ids), **trace.to_dict(),
            "think_close_mapped_from": mapped,
        }
        store.append_jsonl(samples_path, record)
        done.append(record)
        counts["tokens"] += len(trace.token_ids)
        counts["fallback"] += sum(trace.fallback)
        if is_kept(record, cfg) and problem.id not in solved_now:
            solved_now.add(problem.id)
        remaining[problem.id] -= 1
        if remaining[problem.id] == 0:
            bar.update(1)
        bar.set_postfix(solved=len(solved_now), fallback=f"{counts['fallback'] / max(counts['tokens'], 1):.1%}",
                        refresh=False)

    if todo:
        decoder = Decoder(pair.teacher if dec_cfg.needs_teacher else None,
                          pair.student if dec_cfg.needs_student else None, pair.bridge, dec_cfg, **cfg.decoder_options)
        seeds = [derive_seed(cfg.base_seed, p.id, k) for p, k in todo]
        decoder.generate([prompts[p.id] for p, _ in todo], seeds, batch_size=cfg.batch_size, on_finish=on_finish,
                         max_cache_gib=cfg.max_cache_gib,
                         teacher_prompts=own([p for p, _ in todo]) if dec_cfg.needs_teacher else None)
    bar.close()

    # the hybrid recipe: problems outside restrict_to get one prefix-only generation by this method
    prefix_todo = shards.take([p for p in prefix_only if (p.id, 0) not in done_keys])  # this rank's share
    if prefix_todo:
        pre_cfg = DecodingConfig(**{**dec_cfg.to_dict(), "max_new_tokens": cfg.prefix_tokens})
        decoder = Decoder(pair.teacher if pre_cfg.needs_teacher else None,
                          pair.student if pre_cfg.needs_student else None, pair.bridge, pre_cfg, **cfg.decoder_options)

        def on_prefix(i, trace):
            problem = prefix_todo[i]
            record = {"problem_id": problem.id, "sample_index": 0, "config_hash": cfg.hash(), "prefix_only": True,
                      "text": tok.decode(trace.token_ids, skip_special_tokens=False), "status": "not_attempted",
                      "answer": None, "think_closes": 0, "ended_turn": False, "fallback_rate": trace.fallback_rate,
                      "n_tokens": len(trace.token_ids), **trace.to_dict()}
            store.append_jsonl(samples_path, record)
            done.append(record)

        decoder.generate([prompt_ids(tok, p, cfg.prompt) for p in prefix_todo],
                         [derive_seed(cfg.base_seed, f"prefix:{p.id}", 0) for p in prefix_todo],
                         batch_size=cfg.batch_size, on_finish=on_prefix, max_cache_gib=cfg.max_cache_gib,
                         teacher_prompts=own(prefix_todo) if pre_cfg.needs_teacher else None)

    ranks = shards.rank_stats()
    everything = problems + prefix_only
    done = shards.merge("samples.jsonl", order=[p.id for p in everything])  # rank 0: every sample; others: None
    if done is not None:
        order = {p.id: i for i, p in enumerate(everything)}  # sums in one order, whatever the ranks
        done.sort(key=lambda s: (order.get(s["problem_id"], len(order)), s["problem_id"], s["sample_index"]))
        by_problem: dict[str, list[dict]] = {}
        for s in done:
            by_problem.setdefault(s["problem_id"], []).append(s)
        examples = [e for p in everything for e in select_examples(by_problem.get(p.id, []), cfg, stop_ids)]
        store.write_jsonl_atomic(out_dir / "dataset.jsonl", examples)
        summary = summarize_run(done, examples, cfg, denominator)
        summary["prefix_only_problems"] = len(prefix_only)
        summary["problems_without_gold"] = len(no_gold)
        summary["ungradable_problems"] = len(ungradable)  # no gold or an untrusted one: unsolved, given a prefix
        summary["problems_given"] = len(every_problem)  # full + prefix examples add up to this (prefix_scope all)
        summary["config_hash"] = cfg.hash()
        summary["wall_seconds_this_call"] = round(time.perf_counter() - started, 1)
        summary["decoder_batch"] = decoder.stats.get("batch") if todo else None  # rows decoded at once (rank 0), why
        summary["ranks"] = ranks  # units done in this call and wall seconds, per rank
        store.write_json_atomic(out_dir / "summary.json", summary)
    return shards.result([out_dir / "summary.json"])[0]


def solved_problem_ids(run_dir: str | Path) -> set[str]:
    """Problem ids with a full (correct) example in another run's dataset."""
    path = Path(run_dir) / "dataset.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"restrict_to: {path} does not exist (run that trace job first)")
    return {e["problem_id"] for e in store.read_jsonl_resumable(path) if e["kind"] == "full"}


def _question_key(text: str) -> str:
    return " ".join(str(text).split())


def pair_reference(reference_rows, problems, think_close: str = "</think>") -> list[tuple]:
    """(problem, completion text) of pre-existing traces (s1K-1.1), paired with ``problems`` by question text.

    s1K-1.1 and s1K share one id space (``s1k-<index>``) and the pairing checks the question itself,
    so a reference trace lands on the problem id its RSD counterpart has (Figures 5 and 7). The text
    is R1's thinking, the student's end-of-thinking delimiter, then R1's attempt (the s1 authors'
    conversion of s1K-1.1 for Qwen3). Problems with no reference trace are left out.
    """
    return [(p, "".join(text for text, _ in parts)) for p, parts in _paired_reference(reference_rows, problems,
                                                                                       think_close)]


def _paired_reference(reference_rows, problems, think_close: str) -> list[tuple]:
    """``pair_reference`` as (problem, ``rsdlib.prompts.encode_parts`` pieces): R1's text is data."""
    from rsdlib.prompts import reference_parts

    by_question = {_question_key(r.question): r for r in reference_rows}
    out = []
    for p in problems:
        r = by_question.get(_question_key(p.question))
        if r is not None and r.meta.get("trace"):
            out.append((p, reference_parts(r.meta["trace"], str(r.meta.get("attempt", "")), think_close)))
    return out


def trace_run_stats(folder: str | Path) -> dict:
    """Table 2 / Table 6 numbers of one trace folder, computed from its files (not its summary.json).

    Reads ``config.json`` (mode, threshold, the problems attempted), ``dataset.jsonl`` (kept full
    traces and prefixes) and ``samples.jsonl`` (per-token fallback flags). Fallback rate (%) is over
    the tokens of the kept traces, for rsd/skd runs only; a folder of pre-existing traces (no decoding
    config) has mode "reference".
    """
    folder = Path(folder)
    config = store.read_json((folder / "config.json"))
    decoding = (config.get("config") or {}).get("decoding") or {}
    mode = decoding.get("mode", "reference")
    dataset = store.read_jsonl_resumable(folder / "dataset.jsonl")
    all_samples = store.unique_samples(store.read_jsonl_resumable(folder / "samples.jsonl"))  # as counted in a run
    samples = [s for s in all_samples if not s.get("prefix_only")]  # prefix-only generations are not attempts
    by_key = {(s["problem_id"], s["sample_index"]): s for s in samples}
    full = [e for e in dataset if e["kind"] == "full"]
    kept = [by_key.get((e["problem_id"], e["sample_index"]), {}) for e in full]
    tokens = sum(len(e["completion_ids"]) for e in full)
    fallback = sum(sum(bool(x) for x in (s.get("fallback") or [])) for s in kept)
    job = config.get("config") or {}
    by_rule = (kept_lengths_by_rule(samples, job.get("max_fallback_rate", 0.5)) if mode != "reference"
               else {"first": tokens / len(full) if full else None, "shortest": tokens / len(full) if full else None})
    return {
        "mode": mode,
        "threshold": decoding.get("threshold") if mode in ("rsd", "skd") else None,
        "keep": job.get("keep"),  # the rule that chose the kept traces of dataset.jsonl
        # Table 2's "/N": every problem for an unrestricted run (the teacher's /1000), else those attempted
        "problems": config.get("solved_denominator", len(config.get("problems", []))),
        "attempted_problems": len(config.get("problems", [])),
        "ungradable_problems": len(config.get("ungradable_problems", [])),
        "solved": len(full),
        "prefix_examples": sum(e["kind"] == "prefix" for e in dataset),
        "training_examples": len(dataset),  # full + prefix: the paper's RSD-1% set is 180 + 820 = 1,000
        "prefix_only_problems": len(config.get("prefix_only_problems", [])),
        "samples": len(samples),
        "fallback_rate": 100 * fallback / tokens if mode in ("rsd", "skd") and tokens else None,
        "avg_tokens": tokens / len(full) if full else None,
        "avg_sample_tokens": sum(len(s["token_ids"]) for s in samples) / len(samples) if samples else None,
        "avg_tokens_first": by_rule["first"],  # Table 6 under each keep rule, from the same samples
        "avg_tokens_shortest": by_rule["shortest"],
    }


# ----------------------------------------------------------------------------------------------
# Notebook 10's stage: every method's traces, from the notebook's parameters
# ----------------------------------------------------------------------------------------------
TRACE_MODES = MODES  # one list: rsdlib.decoding.MODES
REFERENCES = ("", "s1k-1.1", "standin:s1k-1.1", "math500_solutions")  # pre-existing traces: paper, dry run, offline
TRACES_NOTEBOOK = "10_generate_traces"


def method_job_config(params: dict, method: str, teacher: str, student: str) -> TraceJobConfig:
    """The TraceJobConfig of one method of notebook 10's ``params``: the shared ``decoding`` / ``job`` keys,
    then the method's own keys (any DecodingConfig or TraceJobConfig field)."""
    from rsdlib.prompts import prompt_style

    methods = params["methods"]
    if method not in methods:
        raise ValueError(f"method {method!r}: not a method of the parameters ({', '.join(methods)})")
    spec = methods[method]
    decoding_fields = set(DecodingConfig.__dataclass_fields__)
    job_fields = set(TraceJobConfig.__dataclass_fields__) - {"decoding", "prompt", "method", "teacher", "student"}
    unknown = set(spec) - decoding_fields - job_fields
    if unknown:
        raise ValueError(f"method {method!r}: unknown key(s) {sorted(unknown)}; "
                         f"DecodingConfig: {sorted(decoding_fields)}; TraceJobConfig: {sorted(job_fields)}")
    dec = {**params["decoding"], **{k: v for k, v in spec.items() if k in decoding_fields}}
    job = {**params["job"], **{k: v for k, v in spec.items() if k in job_fields}}
    return TraceJobConfig(method=method, teacher=teacher, student=student, decoding=DecodingConfig(**dec),
                          prompt=prompt_style(params["prompt"]), **job)


def check_trace_params(params: dict) -> None:
    """Refuse notebook 10's parameters before any model loads: modes, source, benchmark, reference, every
    method's job config and the extra pairs."""
    from rsdlib.data import SOURCES
    from rsdlib.paths import check_name, params_source

    where = params_source(params["profile"], TRACES_NOTEBOOK)
    n = params["n_problems"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"{where}: n_problems must be an integer >= 0 (0 = every problem), got {n!r}")
    methods = params["methods"]
    for name in methods:  # keys name folders (results/<profile>/traces/<pair>/<method>): simple names only
        check_name(name, "methods key")
    for run in params["extra_pairs"]:
        check_name(run, "extra_pairs key")
    if "teacher" not in methods or methods["teacher"].get("mode") != "teacher":
        raise ValueError("methods must include 'teacher' with mode 'teacher' "
                         "(the other methods are restricted to its solved problems)")
    for name, spec in methods.items():
        if spec.get("mode") not in TRACE_MODES:
            raise ValueError(f"method {name!r}: mode must be one of {TRACE_MODES}, got {spec.get('mode')!r}")
    if params["source"] not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {params['source']!r}")
    if params["benchmark"].lower().startswith("gpqa"):
        raise ValueError("traces are generated for s1K / MATH500 problems; GPQA Diamond is evaluation-only "
                         "(and must stay unpublished)")
    if params["reference"] not in REFERENCES:
        raise ValueError(f"reference must be '', 's1k-1.1', 'standin:s1k-1.1' or 'math500_solutions', "
                         f"got {params['reference']!r}")
    for name in methods:  # validate every config before the first model loads
        try:
            method_job_config(params, name, params["teacher"], params["student"])
        except (ValueError, TypeError) as err:
            raise ValueError(f"{where}: methods[{name!r}] with decoding/job: {err}") from None
    for run, extra in params["extra_pairs"].items():
        missing = {"teacher", "student", "methods"} - set(extra)
        if missing or not set(extra["methods"]) <= set(methods):
            raise ValueError(f"extra_pairs[{run!r}] needs teacher, student and methods among {sorted(methods)}")
    for run, spec in (params.get("transfers") or {}).items():  # Table 4: main's sets re-tokenized (rsdlib.transfer)
        known = {*methods, "reference"} if params["reference"] else set(methods)
        taken = {"main", *params["extra_pairs"]}
        if set(spec) != {"student", "methods"} or not set(spec["methods"]) <= known or run in taken:
            raise ValueError(f"transfers[{run!r}] needs exactly student and methods among {sorted(known)}, "
                             f"and a run name of its own (not main or an extra pair's)")


def trace_problems(params: dict) -> list:
    """The problems of notebook 10's ``params`` (gold-less ones included: the trace job counts them)."""
    from rsdlib.data import select_problems

    return select_problems(params["benchmark"], params["n_problems"], pick=params["pick"], split=params["split"],
                           split_fraction=params["split_fraction"], split_salt=params["split_salt"],
                           require_gold=False, skip_diagrams=params["skip_diagrams"], source=params["source"])


def reference_records(params: dict, problems) -> list[tuple]:
    """(problem, completion as ``rsdlib.prompts.encode_parts`` pieces) of the pre-existing traces, in the
    student's chat format: s1K-1.1 (the paper, from the hub; the dry run's stand-in) or the problems' own
    worked solutions (offline). The traces' text and the golds are data; the delimiters are rsdlib's."""
    from rsdlib.prompts import prompt_style

    reference, close = params["reference"], prompt_style(params["prompt"]).think_close
    if reference in ("s1k-1.1", "standin:s1k-1.1"):
        from rsdlib.data import load_benchmark

        local = None
        if reference.startswith("standin:"):  # the dry run: s1K's own solutions in s1K-1.1's columns
            from rsdlib import paths
            from rsdlib.standins import write_standin_s1k11

            local = write_standin_s1k11(paths.results_dir(params["profile"]) / "standins" / "data").parent
        rows = load_benchmark("s1k-1.1", local_dir=local)  # the paper's 1,000 R1 traces
        return _paired_reference(rows, problems, close)
    out = []
    for p in problems:
        text = p.meta.get("solution", "")  # MATH500 and s1K problems carry their worked solution
        if text:
            out.append((p, [(text.strip(), True), (f"\n{close}\n\nThe final answer is $\\boxed{{", False),
                            (str(p.gold), True), ("}$.", False)]))
    return out


def reference_prompt_style(params: dict):
    """The prompt the pre-existing traces are stored (and trained, and scored) under: Figure 7, left, for
    s1K-1.1 (``figure7-s1k``), the profile's own prompt for any other reference."""
    from rsdlib.prompts import prompt_style

    if params["reference"] in ("s1k-1.1", "standin:s1k-1.1"):
        return prompt_style({**params["prompt"], "style": "figure7-s1k"})
    return prompt_style(params["prompt"])


def write_reference_run(params: dict, tok, problems, out: Path) -> dict:
    """The "reference" method's folder: pre-existing traces stored as kept samples and full examples.

    s1K-1.1 (the paper's, or the dry run's stand-in) is wrapped in Figure 7's LEFT prompt (style
    ``figure7-s1k``: the plain Qwen system prompt, the bare question), as the figure shows it; the
    profile's own prompt keys (delimiters) stay. Other references keep the profile's prompt.
    """
    style = reference_prompt_style(params)
    eot = end_of_turn_ids(tok)[0]
    out.mkdir(parents=True, exist_ok=True)
    records = reference_records(params, problems)
    for name in ("samples.jsonl", "dataset.jsonl"):
        (out / name).unlink(missing_ok=True)
    for p, parts in records:
        completion = encode_parts(tok, parts) + [eot]  # the trace's text is data, never a control token
        rec = {"problem_id": p.id, "sample_index": 0, "prompt_ids": prompt_ids(tok, p, style),
               "token_ids": completion, "status": "correct", "kind": "full", "source": "reference"}
        store.append_jsonl(out / "samples.jsonl", rec)
        store.append_jsonl(out / "dataset.jsonl", {"id": f"{p.id}#0", "problem_id": p.id, "source": "reference",
                                             "sample_index": 0, "prompt_ids": rec["prompt_ids"],
                                             "completion_ids": completion, "kind": "full"})
    config = {"reference": params["reference"], "problems": [p.id for p, _ in records]}
    store.write_json_atomic(out / "config.json", config)
    stats = {"method": "reference", **trace_run_stats(out)}
    store.write_json_atomic(out / "summary.json", stats)
    print(f"reference ({params['reference']}): {len(records)} traces, mean {stats['avg_tokens'] or 0:.0f} tokens")
    return stats


if __name__ == "__main__":
    from rsdlib.launch import trace_main

    raise SystemExit(trace_main())


def context_warning(prompt_lengths: Mapping[str, int], context: int | None, max_new_tokens: int) -> str | None:
    """Notebook 10's selection-time line about problems longer than the student's context (None: all fit).

    ``prompt_lengths``: {problem id: prompt tokens under the student's template}; ``context``: the student's
    ``max_position_embeddings``. Such problems are still attempted, so the line says what happens to them.
    """
    if not context or not prompt_lengths:
        return None
    longer = sorted(n for n in prompt_lengths.values() if n >= context)
    tight = sum(context - max_new_tokens <= n < context for n in prompt_lengths.values())
    if not longer and not tight:
        return None
    parts = []
    if longer:
        parts.append(
            f"{len(longer)} of {len(prompt_lengths)} problems have a prompt longer than the student's context of "
            f"{context} tokens (longest {longer[-1]}): they are still attempted, but both models then read "
            "positions past their context (unreliable tokens), and training refuses their examples whenever the "
            "prompt alone fills block_size (truncate: true cuts completions only). Leave them out of the data, "
            "or use a student with a longer context")
    if tight:
        parts.append(
            f"{tight} problem(s) fit but leave fewer than max_new_tokens={max_new_tokens} tokens of context: "
            "their traces past the context are unreliable")
    return "; ".join(parts) + "."
