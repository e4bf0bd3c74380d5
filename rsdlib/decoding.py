"""Reverse Speculative Decoding (paper, Section 3.1, Algorithm 1) and its baselines, batched and KV-cached.

One engine drives a teacher and a student in lockstep and emits one token per step per sequence.
The four modes share all their code and differ only in the step rule:

- ``rsd``: the teacher proposes y ~ P_t; kept if P_s(y) >= threshold, else y ~ P_s (Algorithm 1).
- ``skd``: the role swap of the paper's "SKD-inspired" baseline: the student proposes, the teacher
  approves with the same threshold rule, fallback to a teacher sample.
- ``teacher`` / ``student``: plain sampling from one model (teacher-generated / self-distill baselines).

The exact per-step distribution of RSD (field notes, section 5) is

    P(y) = P_t(y) 1[P_s(y) >= tau] + r P_s(y),     r = sum_{z: P_s(z) < tau} P_t(z),

where r is the probability that the step falls back to the student. With ``trials`` teacher draws
before falling back (the authors' early code used 5), a = 1 - r is the per-draw acceptance mass and
P(y) = P_t(y) 1[P_s(y) >= tau] (1 - r^n) / a + r^n P_s(y).

Randomness: every row has its own ``torch.Generator`` seeded per (problem, sample). Each step draws
exactly ``trials + 1`` uniforms per row in every mode (u[0..trials-1] for the proposals, u[trials]
for the fallback) and samples by inverse CDF, so a threshold of 0 reproduces ``teacher`` mode and a
threshold above 1 reproduces ``student`` mode token for token under the same seeds.

Vocabulary: the trace lives in the STUDENT's ids. Teacher logits are masked by the vocabulary bridge
(padded rows, ids the student lacks) and mapped to student ids; a student-only token (e.g. ``</think>``)
enters the teacher's context as its teacher spelling, so each model keeps its own context, positions
and KV cache. In ``skd`` the teacher approves a proposed student-only token by its probability of
writing that spelling (one rolled-back look-ahead forward; the rule is in rsdlib.bridge).

Memory: each model's KV cache grows by CACHE_CHUNK positions (never by doubling), and ``generate``
decodes at most as many rows as fit the free CUDA memory or ``max_cache_gib`` (rsdlib.memory).

Where the parts live: the step maths (mixtures, sampling, ``step_probs``, ``choose_tokens``) in
rsdlib.sampling, re-exported here; the KV cache, per-model state and the one batch scheduler
(``run_batches``: admission, refill, recording, row dropping) in rsdlib.engine; this module holds the
configuration, the ``Trace``, the lockstep step rule (``LockstepRule``) and ``Decoder``; exact
speculative RSD (``draft_tokens`` > 0) is the other step rule, rsdlib.speculative.SpeculativeRule.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from rsdlib.attention import use_for_decoding
from rsdlib.engine import (
    CACHE_CHUNK,
    FLUSH_EVERY,
    Batch,
    ModelState,
    Row,
    StaticState,
    StepRule,
    TokenRecord,
    model_dtype,
    run_batches,
    run_slots,
)
from rsdlib.engine import prefill as prefill_state
from rsdlib.memory import CacheUser, kv_cache_bytes_per_token, plan_batch
from rsdlib.sampling import (  # noqa: F401 (re-exported: ``from rsdlib.decoding import X`` keeps working)
    StepProbs,
    choose_tokens,
    counter_uniforms,
    derive_seed,
    draw_uniforms,
    entropy,
    proposal_mixture,
    propose_and_verify,
    rsd_mixture,
    rsd_sample,
    sample_inverse_cdf,
    skd_mixture,
    spelling_probs,
    step_probs,
    tempered_probs,
    top_p_filter,
)
from rsdlib.speculative import SpeculativeRule

MODES = ("rsd", "skd", "teacher", "student")
# Sane ceiling of a generation budget: 131,072 tokens (2^17), four times the longest context of the paper's
# models (32,768; Section 4.1's evaluation budgets are at most 32,768). A larger value is a typo (1e12).
MAX_NEW_TOKENS = 131_072
log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------
@dataclass
class DecodingConfig:
    """Everything that decides the sampled distribution; recorded with every trace."""

    mode: str = "rsd"  # rsd | skd | teacher | student
    temperature: float = 0.7  # paper: 0.7; 0 = greedy (argmax), teacher/student modes (or threshold_on "raw") only
    top_p: float = 1.0  # nucleus filter applied to both sampled distributions (authors' code and profiles: 0.95)
    threshold: float = 0.01  # p_th: minimum verifier probability of a proposed token
    # Which verifier probability meets the threshold (issue 30). "raw" (default): the model's own
    # probability, softmax of its logits at T = 1 without top-p, as the paper writes it (Algorithm 1 tests
    # P_s(y) with P_s = M_s(.|context); Section 3.2 counts sub-1% tokens under the student's distribution)
    # and as the authors' code did (vLLM returns raw, untempered logprobs by default; field notes s.1).
    # "tempered": the distribution actually sampled from (temperature and top-p applied). Both are exact:
    # P(y) = P_t(y) 1[test(y) >= tau] + r P_s(y), r = sum_{test(z) < tau} P_t(z) (tests/test_issue30.py).
    threshold_on: str = "raw"
    trials: int = 1  # proposer draws before falling back (paper: 1; authors' early code: 5)
    max_new_tokens: int = 1024  # generation budget per sequence
    stop_ids: tuple[int, ...] = ()  # student ids that end a sequence (end-of-turn, eos); kept in the trace
    record_both: bool = False  # teacher/student modes: also run the other model to record its probabilities
    draft_tokens: int = 0  # rsd only: > 0 = exact speculative RSD, the student drafts this many per teacher pass

    def __post_init__(self) -> None:
        from rsdlib.config import check_number

        if self.mode not in MODES:
            raise ValueError(f"unknown decoding mode {self.mode!r}; choose one of {MODES}")
        check_number("DecodingConfig", "temperature", self.temperature, minimum=0)
        check_number("DecodingConfig", "top_p", self.top_p, minimum=0, maximum=1, exclusive_minimum=True)
        # tau in [0, 1] in the paper; tau > 1 is allowed and reproduces student sampling (field notes, section 5)
        check_number("DecodingConfig", "threshold", self.threshold, minimum=0)
        if self.threshold_on not in ("tempered", "raw"):
            raise ValueError(f"threshold_on must be 'tempered' or 'raw', got {self.threshold_on!r}")
        if self.temperature == 0 and self.mode in ("rsd", "skd") and self.threshold_on == "tempered":
            raise ValueError(
                f"DecodingConfig.temperature 0 (greedy) is refused in mode {self.mode!r}: the verifier's tempered "
                "distribution is then one-hot, so every proposal but its argmax falls back (greedy student decoding "
                "with ~100% fallback). Use a temperature > 0 (paper: 0.7), or threshold_on: raw.")
        check_number("DecodingConfig", "trials", self.trials, minimum=1, integer=True)
        check_number("DecodingConfig", "max_new_tokens", self.max_new_tokens, minimum=1, maximum=MAX_NEW_TOKENS,
                     integer=True)
        check_number("DecodingConfig", "draft_tokens", self.draft_tokens, minimum=0, integer=True)
        if not isinstance(self.record_both, bool):
            raise ValueError(f"DecodingConfig.record_both must be true or false, got {self.record_both!r}")
        if self.draft_tokens and self.mode != "rsd":
            raise ValueError(f"draft_tokens (speculative decoding) is implemented for mode 'rsd', not {self.mode!r}")
        self.stop_ids = tuple(int(i) for i in self.stop_ids)

    @property
    def needs_teacher(self) -> bool:
        return self.mode in ("rsd", "skd", "teacher") or self.record_both

    @property
    def needs_student(self) -> bool:
        return self.mode in ("rsd", "skd", "student") or self.record_both

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stop_ids"] = list(self.stop_ids)
        return d


@dataclass
class Trace:
    """One generated sequence with its per-token record (all lists have one entry per emitted token).

    ``teacher_prob`` / ``student_prob`` are the probabilities of the emitted token under the
    distributions actually sampled from (tempered, top-p); ``student_prob_raw`` and
    ``student_entropy`` are from the student's own distribution (T = 1, no top-p), the quantities of
    the paper's Section 3.2. A model that was not run (single-model modes without ``record_both``)
    gets NaN. ``source`` is 0 for a teacher token and 1 for a student token.
    """

    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    source: list[int] = field(default_factory=list)
    teacher_prob: list[float] = field(default_factory=list)
    student_prob: list[float] = field(default_factory=list)
    student_prob_raw: list[float] = field(default_factory=list)
    student_entropy: list[float] = field(default_factory=list)
    fallback: list[bool] = field(default_factory=list)
    seed: int = 0
    finish_reason: str = ""  # "stop" (a stop id was emitted) or "length"
    config: dict = field(default_factory=dict)

    def add(self, record: TokenRecord) -> None:
        """Append one emitted token's record (``rsdlib.engine.TokenRecord``) to every per-token list."""
        self.token_ids.append(record.token)
        self.source.append(record.source)
        self.fallback.append(record.fallback)
        self.teacher_prob.append(record.teacher_prob)
        self.student_prob.append(record.student_prob)
        self.student_prob_raw.append(record.student_prob_raw)
        self.student_entropy.append(record.student_entropy)

    @property
    def fallback_rate(self) -> float:
        return sum(self.fallback) / len(self.fallback) if self.fallback else 0.0

    def sub_threshold_ratio(self, threshold: float = 0.01) -> float:
        """Share of emitted tokens whose raw student probability is below ``threshold``."""
        probs = self.student_prob_raw
        return sum(p < threshold for p in probs) / len(probs) if probs else 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Trace":
        return cls(**d)


# ----------------------------------------------------------------------------------------------
# The lockstep step rule
# ----------------------------------------------------------------------------------------------
def score_student_only_proposals(probs: StepProbs, teacher_logits: torch.Tensor, teacher_state: ModelState,
                                 bridge, config: DecodingConfig, uniforms: torch.Tensor) -> StepProbs:
    """SKD: the teacher's approval probability of each student-only id the student proposes this step.

    The teacher has no single id for a student-only token (``</think>``); its approval probability is
    that of the token's teacher spelling, prod_j P_t(s_j | context, s_<j) (rule: rsdlib.bridge). The
    first factor comes from this step's teacher logits; the others from one look-ahead forward of
    the spelling's first pieces on the rows that need it, rolled back at once (the teacher context
    gets the whole spelling through the ordinary step if the token is emitted). Only the proposed
    ids are scored: the proposals are re-derived from the same uniforms ``choose_tokens`` will use.
    Returns ``probs`` unchanged when no row proposes a student-only id.
    """
    only = bridge._on("student_only_mask", probs.student.device)  # (V_s,)
    u = uniforms.to(probs.student.device)
    # the student's proposals, (B, trials): the draws choose_tokens will make from the same uniforms
    proposals = torch.stack([sample_inverse_cdf(probs.student, u[:, k]) for k in range(config.trials)], 1)
    hit = only[proposals]  # (B, trials)
    if not hit.any():
        return probs
    wanted: dict[int, list[int]] = {}  # row -> distinct student-only ids proposed (usually one)
    for b, y in zip(*(t.tolist() for t in (hit.nonzero()[:, 0], proposals[hit]))):
        if y not in wanted.setdefault(b, []):
            wanted[b].append(y)
    approval = probs.teacher.clone()
    raw = probs.teacher_raw.clone() if probs.teacher_raw is not None else None
    for c in range(max(len(ys) for ys in wanted.values())):  # one look-ahead per candidate rank
        todo = [(b, ys[c]) for b, ys in sorted(wanted.items()) if c < len(ys)]
        spellings = [bridge.student_only[y] for _, y in todo]
        prefixes = [[] for _ in range(teacher_logits.shape[0])]
        for (b, _), spelling in zip(todo, spellings):
            prefixes[b] = spelling[:-1]
        ahead = teacher_state.look_ahead(prefixes)
        width = max(len(sp) for sp in spellings)
        piece_logits = teacher_logits.new_zeros(len(todo), width, teacher_logits.shape[-1])  # (N, L, V_t)
        pieces = torch.zeros(len(todo), width, dtype=torch.long)
        for n, ((b, _), spelling) in enumerate(zip(todo, spellings)):
            piece_logits[n, 0] = teacher_logits[b]
            piece_logits[n, 1 : len(spelling)] = ahead[b][: len(spelling) - 1]
            pieces[n, : len(spelling)] = torch.tensor(spelling)
        lengths = torch.tensor([len(sp) for sp in spellings])
        p_tempered, p_raw = spelling_probs(piece_logits, pieces, lengths, bridge, config)
        rows = torch.tensor([b for b, _ in todo], device=approval.device)
        ids = torch.tensor([y for _, y in todo], device=approval.device)
        approval[rows, ids] = p_tempered.to(approval)
        if raw is not None:
            raw[rows, ids] = p_raw.to(raw)
    return StepProbs(probs.teacher, probs.student, probs.student_raw, raw, approval)


def steer_logits(decoder, t_logits, s_logits, traces):
    """Stand-in models only (``rsdlib.standins``): apply a model's scripted steering, ``model.rsdlib_steer``.

    Real models have no ``rsdlib_steer`` and pass through unchanged.
    """
    rows = None
    for model, name in ((decoder.teacher, "t"), (decoder.student, "s")):
        steer = getattr(model, "rsdlib_steer", None)
        logits = t_logits if name == "t" else s_logits
        if steer is None or logits is None:
            continue
        rows = rows or [(tr.prompt_ids, tr.token_ids) for tr in traces]
        logits = steer(logits, rows, decoder.bridge.student_to_teacher if name == "t" else None)
        t_logits, s_logits = (logits, s_logits) if name == "t" else (t_logits, logits)
    return t_logits, s_logits


class LockstepRule(StepRule):
    """Modes rsd, skd, teacher and student, one token per row per step (``rsdlib.engine.run_batches``).

    The batch keeps each running model's logits for the next step ((B, V_t), (B, V_s)); a step turns them
    into the step's distributions over the student's ids (``step_probs``), draws ``trials + 1`` uniforms
    per row and applies the mode's rule (``choose_tokens``); ``advance`` feeds the emitted tokens.
    """

    def __init__(self, decoder: Decoder):
        self.decoder, self.config, self.bridge = decoder, decoder.config, decoder.bridge

    def start(self, rows: list[Row]) -> Batch:
        dec, cfg = self.decoder, self.config
        batch = Batch(rows)
        if cfg.needs_teacher:
            teacher_rows = [dec.teacher_prompt(row.index, row.prompt) for row in rows]
            batch.teacher, batch.teacher_logits = dec.prefill(dec.teacher, teacher_rows)
        if cfg.needs_student:
            batch.student, batch.student_logits = dec.prefill(dec.student, [row.prompt for row in rows])
        if cfg.needs_teacher and self._spelling_width() > 1:  # run_slots: teacher pieces still to feed per row
            device = batch.teacher.device
            batch.extra["queue"] = torch.zeros(len(rows), self._spelling_width(), dtype=torch.long, device=device)
            batch.extra["queued"] = torch.zeros(len(rows), dtype=torch.long, device=device)
        return batch

    # ---------------------------------------------------------------- the slot path (rsdlib.engine.run_slots)
    def _spelling_width(self) -> int:
        """The longest teacher spelling of one student id (1 unless a student-only id has several pieces)."""
        return max((len(sp) for sp in self.bridge.student_only.values()), default=1)

    def _spellings(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(V_s, S) teacher spelling of every student id, left-aligned, and its length (V_s,), on ``device``.

        Shared ids spell themselves; ids without a teacher counterpart are never sampled (id 0, length 1)."""
        key = str(device)
        if getattr(self, "_spell_key", None) != key:
            bridge, width = self.bridge, self._spelling_width()
            v_s = bridge.student_vocab_size
            table = torch.zeros(v_s, width, dtype=torch.long)
            ids = torch.arange(v_s)
            table[:, 0] = torch.where(ids < bridge.teacher_vocab_size, ids, torch.zeros_like(ids))
            lengths = torch.ones(v_s, dtype=torch.long)
            for sid, spelling in bridge.student_only.items():
                table[sid, : len(spelling)] = torch.tensor(spelling)
                lengths[sid] = len(spelling)
            self._spell_key, self._spell = key, (table.to(device), lengths.to(device))
        return self._spell

    def step_slots(self, batch: Batch, seeds: torch.Tensor, counters: torch.Tensor):
        """One step of every slot on the device: (tokens (B,), emitted (B,), values (B, 6) float64).

        A row still feeding the teacher the pieces of a student-only token's spelling (``queued`` > 0)
        takes no step: its draw is unused and its step counter does not move."""
        cfg = self.config
        probs = step_probs(batch.teacher_logits, batch.student_logits, self.bridge, cfg)
        uniforms = counter_uniforms(seeds, counters, cfg.trials + 1)  # (B, trials + 1)
        tokens, fallback, source = choose_tokens(probs, cfg, uniforms)  # (B,) each
        col = tokens[:, None]  # (B, 1)
        nan = torch.full(tokens.shape, math.nan, dtype=torch.float64, device=tokens.device)

        def at_token(p):  # (B, V) -> (B,) probabilities of the emitted tokens
            return p.gather(-1, col.to(p.device)).squeeze(-1).double() if p is not None else nan

        values = torch.stack([source.double(), fallback.double(), at_token(probs.teacher), at_token(probs.student),
                              at_token(probs.student_raw),
                              entropy(probs.student_raw).double() if probs.student_raw is not None else nan], 1)
        queued = batch.extra.get("queued")
        emitted = (queued == 0).to(tokens.device) if queued is not None else torch.ones_like(tokens, dtype=torch.bool)
        return tokens, emitted, values

    def feed_slots(self, batch: Batch, tokens: torch.Tensor, emitted: torch.Tensor) -> None:
        """Feed the step's tokens. The teacher gets one piece of its spelling per step: a row whose token
        is spelled in several pieces takes no step until the last piece is in (the student waits, a hole
        in its cache, keeping its logits)."""
        if batch.student is not None:
            logits = batch.student.feed_ids(tokens[:, None], emitted[:, None].long())  # (B, V_s)
            stalled = "queued" in batch.extra
            batch.student_logits = torch.where(emitted[:, None], logits, batch.student_logits) if stalled else logits
        if batch.teacher is None:
            return
        device = batch.teacher.device  # the teacher may sit on another device than the student
        tokens, emitted = tokens.to(device), emitted.to(device)
        table, lengths = self._spellings(device)
        queue, queued = batch.extra.get("queue"), batch.extra.get("queued")
        if queue is None:  # one piece per token: the teacher's id
            pieces = table[tokens, 0]
            batch.teacher_logits = batch.teacher.feed_ids(pieces[:, None], torch.ones_like(pieces)[:, None])
            return
        queue = torch.where(emitted[:, None], table[tokens], queue)  # (B, S)
        queued = torch.where(emitted, lengths[tokens], queued)  # (B,)
        batch.teacher_logits = batch.teacher.feed_ids(queue[:, :1], (queued > 0).long()[:, None])
        batch.extra["queue"] = torch.cat([queue[:, 1:], torch.zeros_like(queue[:, :1])], dim=1)
        batch.extra["queued"] = (queued - 1).clamp_min(0)

    def step(self, batch: Batch) -> list[list[TokenRecord]]:
        cfg, bridge = self.config, self.bridge
        # 1. the step's distributions over the student's ids, and the rows' uniforms
        t_logits, s_logits = steer_logits(self.decoder, batch.teacher_logits, batch.student_logits,
                                          [row.trace for row in batch.rows])
        probs = step_probs(t_logits, s_logits, bridge, cfg)
        device = (t_logits if t_logits is not None else s_logits).device
        seeds = torch.tensor([row.seed for row in batch.rows], dtype=torch.long, device=device)
        steps = torch.tensor([len(row.trace.token_ids) for row in batch.rows], dtype=torch.long, device=device)
        uniforms = counter_uniforms(seeds, steps, cfg.trials + 1)
        if cfg.mode == "skd" and bridge.student_only:  # the teacher scores a proposed </think> by its spelling
            probs = score_student_only_proposals(probs, t_logits, batch.teacher, bridge, cfg, uniforms)
        # 2. the mode's rule
        tokens, fallback, source = choose_tokens(probs, cfg, uniforms)  # (B,) each
        # 3. what the trace records: the emitted token's probabilities (NaN for a model not run)
        col = tokens[:, None]  # (B, 1)
        p_teacher = probs.teacher if probs.teacher_approval is None else probs.teacher_approval
        nan = [math.nan] * len(batch.rows)

        def at_token(p):  # (B, V) -> the B probabilities of the emitted tokens
            return p.gather(-1, col.to(p.device)).squeeze(-1).tolist() if p is not None else nan

        entropies = entropy(probs.student_raw).tolist() if probs.student_raw is not None else nan
        columns = zip(tokens.tolist(), source.tolist(), fallback.tolist(), at_token(p_teacher),
                      at_token(probs.student), at_token(probs.student_raw), entropies)
        return [[TokenRecord(token=y, source=src, fallback=bool(fb), teacher_prob=p_t, student_prob=p_s,
                             student_prob_raw=p_raw, student_entropy=h)]
                for y, src, fb, p_t, p_s, p_raw, h in columns]

    def advance(self, batch: Batch, kept: list[int]) -> None:
        """Feed each row's token just emitted: the logits of the next step."""
        tokens = [row.last_token for row in batch.rows]
        if batch.teacher is not None:
            batch.teacher_logits = batch.teacher.feed([self.bridge.student_to_teacher([t]) for t in tokens])
        if batch.student is not None:
            batch.student_logits = batch.student.feed([[t] for t in tokens])


# ----------------------------------------------------------------------------------------------
# The decoder
# ----------------------------------------------------------------------------------------------
CACHE_KINDS = ("dynamic", "static")  # Decoder(cache=...): the KV cache of the lockstep slot path
class Decoder:
    """Batched decoder for one teacher/student pair (either may be None if the mode does not need it).

    >>> dec = Decoder(pair.teacher, pair.student, pair.bridge, DecodingConfig(mode="rsd"))
    >>> traces = dec.generate(prompts, seeds, batch_size=16)   # prompts in student ids

    Lockstep (``LockstepRule``) or, with ``draft_tokens`` > 0, speculative (``rsdlib.speculative``) steps
    on the engine's scheduler (``rsdlib.engine.run_batches``). ``stats`` describes the last ``generate``:
    "batch" (the ``BatchPlan`` as a dict) and, for speculative decoding, the counters "rounds",
    "drafted", "accepted" and "emitted".

    Models on sdpa attention with grouped KV heads are switched to ``rsdlib.attention.PACKED_SDPA`` (same
    outputs; a padded step never copies the KV cache per query head, whatever the transformers version).
    """

    def __init__(self, teacher, student, bridge, config: DecodingConfig, *, engine: str = "slots",
                 flush_every: int = FLUSH_EVERY, cache: str = "dynamic", compile: bool = False):
        self.teacher, self.student, self.bridge, self.config = teacher, student, bridge, config
        if engine not in ("slots", "rows"):
            raise ValueError(f"Decoder engine must be 'slots' or 'rows', got {engine!r}")
        if cache not in CACHE_KINDS:
            raise ValueError(f"Decoder cache must be one of {CACHE_KINDS}, got {cache!r}")
        if not isinstance(compile, bool):
            raise ValueError(f"Decoder compile must be true or false, got {compile!r}")
        self.engine, self.flush_every = engine, flush_every  # lockstep scheduler (see _run); same traces
        # KV cache of the lockstep slot path: "dynamic" (grown by chunks, trimmed as rows leave) or "static"
        # (fixed buffers, StaticState); compile=True runs the static step's forwards through torch.compile
        self.cache, self.compile = ("static" if compile else cache), compile
        if self.cache == "static" and engine == "rows":
            raise ValueError("Decoder(cache='static' or compile=True) runs on the slot engine; engine='rows' has none")
        self.stats: dict = {}
        self._teacher_prompts: list[list[int]] | None = None  # generate(teacher_prompts=...), by prompt index
        if config.needs_teacher and teacher is None:
            raise ValueError(f"mode {config.mode!r} (record_both={config.record_both}) needs a teacher model")
        if config.needs_student and student is None:
            raise ValueError(f"mode {config.mode!r} (record_both={config.record_both}) needs a student model")
        for model in (teacher, student):  # grouped KV heads under a padding mask without repeat_kv
            if model is not None:
                use_for_decoding(model)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        seeds: Sequence[int],
        *,
        batch_size: int = 16,
        progress: bool | str = False,
        on_finish: Callable[[int, Trace], None] | None = None,
        refill: bool = True,
        max_cache_gib: float | None = None,
        teacher_prompts: Sequence[Sequence[int]] | None = None,
    ) -> list[Trace]:
        """Generate one trace per (prompt, seed), up to ``batch_size`` rows at a time.

        Prompts are lists of STUDENT token ids. A row that ends leaves the batch at once; with
        ``refill`` its slot is given to a pending prompt (prefilled on its own, then merged into the
        running batch) whenever a quarter of the slots are free, so the batch stays full.
        ``on_finish(index, trace)`` is called as soon as a trace ends (to append it to a store).
        Results come back in the order of ``prompts``.

        Memory: ``batch_size`` is an upper bound. The rows actually decoded at once are the most
        whose full-length KV caches (both models) fit ``max_cache_gib`` and, on CUDA, the free device
        memory (``rsdlib.memory.plan_batch``); the choice is logged and kept in ``self.stats["batch"]``.
        Traces do not depend on it (each row has its own generator).

        ``teacher_prompts``: the same prompts in the TEACHER's ids, rendered with the teacher's own chat
        template (a teacher of another template family, ``rsdlib.traces``); None: the teacher reads the
        student's prompt through the bridge (the paper's pair). Lockstep decoding only.
        """
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        if teacher_prompts is not None and (len(teacher_prompts) != len(prompts) or self.config.draft_tokens):
            raise ValueError("teacher_prompts needs one teacher prompt per prompt, and lockstep decoding "
                             f"(got {len(teacher_prompts)} for {len(prompts)}, "
                             f"draft_tokens={self.config.draft_tokens})")
        self._teacher_prompts = [list(map(int, p)) for p in teacher_prompts] if teacher_prompts is not None else None
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.stats = {}
        if prompts:
            plan = self.plan_batch(prompts, batch_size, max_cache_gib)
            batch_size = plan.batch_size
            self.stats["batch"] = plan.to_dict()
            (log.warning if plan.batch_size < plan.requested_batch_size else log.info)("decoder %s", plan.describe())
        results: list[Trace | None] = [None] * len(prompts)
        bar = tqdm(total=len(prompts), desc=progress if isinstance(progress, str) else "decode",
                   disable=not progress, mininterval=5, unit="seq")
        for i, trace in self._run(prompts, seeds, batch_size, refill):
            results[i] = trace
            if on_finish is not None:
                on_finish(i, trace)
            bar.update(1)
        bar.close()
        return results  # type: ignore[return-value]

    def teacher_prompt(self, index: int, prompt: Sequence[int]) -> list[int]:
        """The teacher's prompt of row ``index``: its own (``generate(teacher_prompts=...)``), else the
        student's ``prompt`` through the bridge."""
        own = getattr(self, "_teacher_prompts", None)
        return list(own[index]) if own is not None else self.bridge.student_to_teacher(prompt)

    def cache_users(self, prompts: Sequence[Sequence[int]]) -> list[CacheUser]:
        """Each running model's KV bytes per token and widest possible row for these prompts.

        A row is at most as wide as the longest prompt (in that model's ids) plus ``max_new_tokens``:
        rows are right-aligned and columns that are padding in every row are trimmed when rows leave.
        Margins: CACHE_CHUNK (buffer rounding), the speculative round's k + 1 columns, and for the
        teacher 4 x the longest extra length of a student-only token's spelling (``</think>`` is 3
        teacher tokens: one in the trace, the SKD look-ahead, spare). With speculative decoding,
        rejected drafts leave padding columns inside rows, so its widths can exceed this estimate.
        """
        cfg, bridge = self.config, self.bridge
        margin = CACHE_CHUNK + cfg.draft_tokens + 1
        longest = max(len(p) for p in prompts)
        users = []
        if cfg.needs_teacher:
            extra = {sid: len(sp) - 1 for sid, sp in bridge.student_only.items() if len(sp) > 1}
            t_longest = max(len(p) + sum(extra.get(int(t), 0) for t in p) for p in prompts) if extra else longest
            if getattr(self, "_teacher_prompts", None):
                t_longest = max(t_longest, max(len(p) for p in self._teacher_prompts))
            tokens = t_longest + cfg.max_new_tokens + margin + 4 * max(extra.values(), default=0)
            users.append(CacheUser("teacher", kv_cache_bytes_per_token(self.teacher.config, model_dtype(self.teacher)),
                                   tokens, str(self.teacher.device)))
        if cfg.needs_student:
            users.append(CacheUser("student", kv_cache_bytes_per_token(self.student.config, model_dtype(self.student)),
                                   longest + cfg.max_new_tokens + margin, str(self.student.device)))
        return users

    def plan_batch(self, prompts, batch_size: int, max_cache_gib: float | None = None):
        """The BatchPlan of a run (see ``generate``); on CPU without ``max_cache_gib`` it is ``batch_size``."""
        devices = [m.device for m in (self.teacher, self.student) if m is not None]
        limited = max_cache_gib is not None or any(torch.device(d).type == "cuda" for d in devices)
        try:
            users = self.cache_users(prompts)
        except (ValueError, AttributeError):
            if limited:
                raise
            users = []  # a model without a standard config (a test double): nothing to size
        return plan_batch(batch_size, users, max_cache_gib)

    def prefill(self, model, rows: list[list[int]]) -> tuple[ModelState, torch.Tensor]:
        """Start a group of rows in one model: a fresh ``ModelState`` holding ``rows`` (that model's ids) and
        the logits after each row's last token (B, V). The hook every step rule starts rows with; override it
        to feed prompts differently (benchmarks/gpu_check.py feeds them in chunks)."""
        return prefill_state(model, rows)

    @torch.no_grad()
    def _run(self, prompts, seeds, batch_size, refill):
        """Yield (index, trace) as traces end: the engine's scheduler with this config's step rule."""
        cfg, record = self.config, self.config.to_dict()
        rule = SpeculativeRule(self, prompts) if cfg.draft_tokens else LockstepRule(self)
        kw = dict(new_trace=lambda prompt, seed: Trace(prompt_ids=prompt, seed=seed, config=record),
                  stop_ids=cfg.stop_ids, max_new_tokens=cfg.max_new_tokens, batch_size=batch_size, refill=refill)
        if self.uses_slots:
            made: list[StaticState] = []
            on_batch = self._static_states(prompts, made) if self.cache == "static" else None
            try:
                yield from run_slots(prompts, seeds, rule, flush_every=self.flush_every, on_batch=on_batch, **kw)
            finally:
                for state in made:  # the next run of the same shape takes their buffers, whenever they are freed
                    state.release()
        else:
            if self.cache == "static":
                log.warning("decoder: a static KV cache needs the lockstep slot path; this run (draft_tokens=%d, "
                            "steering stand-ins or SKD spellings) takes the host-side scheduler with a dynamic cache",
                            cfg.draft_tokens)
            yield from run_batches(prompts, seeds, rule, **kw)

    def _static_states(self, prompts, made: list):
        """``run_slots``' on_batch hook: replace a new batch's states by ``StaticState``s sized for this run's
        widest rows (``cache_users``), compiled if asked; each one made is appended to ``made``."""
        # cache_users' widths hold CACHE_CHUNK for the dynamic buffers' rounding; a static buffer needs one window
        # of steps past the widest row instead (StaticState.retire_columns makes room once per window)
        widths = {user.name: user.tokens_per_row - CACHE_CHUNK + self.flush_every for user in self.cache_users(prompts)}

        def on_batch(batch: Batch) -> None:
            if batch.teacher is not None:
                batch.teacher = StaticState(batch.teacher, widths["teacher"], compiled=self.compile)
                made.append(batch.teacher)
            if batch.student is not None:
                batch.student = StaticState(batch.student, widths["student"], compiled=self.compile)
                made.append(batch.student)

        return on_batch

    @property
    def uses_slots(self) -> bool:
        """Whether ``generate`` runs the device-side scheduler (``rsdlib.engine.run_slots``).

        Lockstep modes do, unless ``engine="rows"`` or the step needs the rows' tokens on the host:
        stand-in models that steer (``rsdlib.standins``) and SKD's scoring of a proposed student-only
        token (a rolled-back look-ahead). Speculative rounds run on ``run_batches``. Both schedulers
        give the same traces."""
        steered = any(getattr(m, "rsdlib_steer", None) is not None for m in (self.teacher, self.student))
        skd_spelling = self.config.mode == "skd" and bool(self.bridge.student_only)
        return self.engine == "slots" and not self.config.draft_tokens and not steered and not skd_spelling
