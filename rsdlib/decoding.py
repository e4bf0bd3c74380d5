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
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from rsdlib.memory import CacheUser, kv_cache_bytes_per_token, plan_batch

MODES = ("rsd", "skd", "teacher", "student")
log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------
@dataclass
class DecodingConfig:
    """Everything that decides the sampled distribution; recorded with every trace."""

    mode: str = "rsd"  # rsd | skd | teacher | student
    temperature: float = 0.7  # paper: 0.7; 0 = greedy (argmax), teacher/student modes (or threshold_on "raw") only
    top_p: float = 1.0  # nucleus filter applied to both sampled distributions (authors' code: 0.95)
    threshold: float = 0.01  # p_th: minimum verifier probability of a proposed token
    threshold_on: str = "tempered"  # "tempered": test the distribution actually sampled from; "raw": T=1, no top-p
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
        check_number("DecodingConfig", "max_new_tokens", self.max_new_tokens, minimum=1, integer=True)
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


def derive_seed(base_seed: int, problem_id: str, sample_index: int) -> int:
    """A stable 63-bit seed for one (problem, sample), independent of batch order and process."""
    digest = hashlib.sha256(f"{base_seed}|{problem_id}|{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# ----------------------------------------------------------------------------------------------
# Pure step maths on (B, V) probability tensors
# ----------------------------------------------------------------------------------------------
def tempered_probs(logits: torch.Tensor, temperature: float, top_p: float = 1.0) -> torch.Tensor:
    """(B, V) logits (masked rows = -inf) -> (B, V) float32 probabilities actually sampled from."""
    logits = logits.float()
    if temperature == 0:  # greedy: a one-hot on the argmax
        probs = torch.zeros_like(logits)
        probs.scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
        return probs
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        probs = top_p_filter(probs, top_p)
    return probs


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches ``top_p``; renormalise. (B, V)."""
    sorted_p, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_p.cumsum(-1) - sorted_p  # (B, V): mass of strictly more likely tokens
    keep_sorted = mass_before < top_p  # the first token is always kept
    keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
    filtered = probs * keep
    return filtered / filtered.sum(-1, keepdim=True)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """(B, V) -> (B,) Shannon entropy in nats (0 log 0 = 0)."""
    return -(probs * torch.log(probs.clamp_min(1e-45))).where(probs > 0, torch.zeros_like(probs)).sum(-1)


def proposal_mixture(
    p_proposer: torch.Tensor, p_verifier: torch.Tensor, threshold: float, trials: int = 1, p_fallback=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact next-token distribution of "proposer samples, verifier approves if p >= threshold".

    p_proposer, p_verifier: (B, V). The fallback samples from ``p_fallback`` (default: the verifier,
    as in RSD and SKD). Returns (P, r): P (B, V) the distribution of the emitted token and r (B,)
    the probability that the step falls back.
    """
    p_fallback = p_verifier if p_fallback is None else p_fallback
    accept = p_verifier >= threshold  # (B, V)
    accepted_mass = (p_proposer * accept).sum(-1)  # (B,) a: one draw is accepted
    r1 = 1.0 - accepted_mass  # (B,) one draw is rejected
    r = r1.clamp_min(0) ** trials  # (B,) all `trials` draws rejected
    if trials == 1:
        scale = torch.ones_like(accepted_mass)
    else:  # sum_{k<n} r1^k = (1 - r1^n) / (1 - r1); a proposer with no accepted mass contributes 0 anyway
        scale = torch.where(accepted_mass > 0, (1 - r) / accepted_mass.clamp_min(1e-30), torch.zeros_like(r))
    mixture = p_proposer * accept * scale[:, None] + r[:, None] * p_fallback
    return mixture, r


def rsd_mixture(p_teacher: torch.Tensor, p_student: torch.Tensor, threshold: float, trials: int = 1):
    """RSD's exact next-token distribution P (B, V) and fallback probability r (B,) (field notes s.5).

    Inputs are probabilities already tempered and bridged onto the student's ids.
    """
    return proposal_mixture(p_teacher, p_student, threshold, trials)


def skd_mixture(p_teacher: torch.Tensor, p_student: torch.Tensor, threshold: float, trials: int = 1):
    """SKD-inspired twin: the student proposes, the teacher approves, fallback to the teacher."""
    return proposal_mixture(p_student, p_teacher, threshold, trials)


def sample_inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(B, V) probabilities and (B,) uniforms in [0, 1) -> (B,) token ids; zero-probability ids never win."""
    cdf = probs.double().cumsum(-1)  # (B, V)
    target = (u.to(cdf) * cdf[:, -1]).unsqueeze(-1)  # (B, 1)
    idx = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    idx = idx.clamp_max(probs.shape[-1] - 1)
    # rounding at the very top can land on a trailing zero-probability id: step back to the last live one
    bad = probs.gather(-1, idx[:, None]).squeeze(-1) <= 0
    if bad.any():
        last_live = (probs > 0).cumsum(-1).argmax(-1)  # first index reaching the final count = last live id
        idx = torch.where(bad, last_live, idx)
    return idx


def draw_uniforms(generators: Sequence[torch.Generator] | torch.Generator, batch: int, n: int) -> torch.Tensor:
    """(B, n) float64 uniforms: one row per generator (a single generator serves all rows)."""
    if isinstance(generators, torch.Generator):
        return torch.rand(batch, n, generator=generators, dtype=torch.float64)
    if len(generators) != batch:
        raise ValueError(f"need one generator per row: {len(generators)} generators for {batch} rows")
    return torch.stack([torch.rand(n, generator=g, dtype=torch.float64) for g in generators])


def propose_and_verify(
    p_proposer: torch.Tensor,
    p_verifier_test: torch.Tensor,
    p_fallback: torch.Tensor,
    threshold: float,
    uniforms: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batched step of the threshold rule with explicit randomness.

    uniforms: (B, trials + 1): u[:, k] drives proposal k, u[:, trials] the fallback draw.
    Returns (tokens (B,), fallback (B,) bool).
    """
    trials = uniforms.shape[1] - 1
    batch = p_proposer.shape[0]
    tokens = torch.full((batch,), -1, dtype=torch.long, device=p_proposer.device)
    decided = torch.zeros(batch, dtype=torch.bool, device=p_proposer.device)
    u = uniforms.to(p_proposer.device)
    for k in range(trials):
        proposal = sample_inverse_cdf(p_proposer, u[:, k])  # (B,)
        ok = p_verifier_test.gather(-1, proposal[:, None]).squeeze(-1) >= threshold
        take = ok & ~decided
        tokens = torch.where(take, proposal, tokens)
        decided |= take
    fallback = ~decided
    if fallback.any():
        tokens = torch.where(fallback, sample_inverse_cdf(p_fallback, u[:, trials]), tokens)
    return tokens, fallback


def rsd_sample(
    p_teacher: torch.Tensor,
    p_student: torch.Tensor,
    threshold: float,
    generator,
    trials: int = 1,
    p_student_test: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batched step of Algorithm 1: (tokens (B,), fallback (B,) bool).

    ``generator``: one torch.Generator for all rows, or a list with one per row. The threshold is
    tested on ``p_student_test`` when given (e.g. the raw student distribution), else on ``p_student``.
    """
    uniforms = draw_uniforms(generator, p_teacher.shape[0], trials + 1)
    test = p_student if p_student_test is None else p_student_test
    return propose_and_verify(p_teacher, test, p_student, threshold, uniforms)


@dataclass
class StepProbs:
    """Distributions of one step over the student's ids, each (B, V_s); None where a model was not run.

    ``teacher`` gives student-only ids 0 (the teacher cannot emit them as one token). In ``skd`` mode
    the teacher's approval of a PROPOSED student-only id is its probability of spelling it
    (``score_student_only_proposals``; rule in rsdlib.bridge): ``teacher_approval`` is ``teacher``
    with those entries filled in, and ``teacher_raw`` (computed only for the raw-threshold test)
    gets them too; ``teacher`` stays the fallback distribution.
    """

    teacher: torch.Tensor | None
    student: torch.Tensor | None
    student_raw: torch.Tensor | None
    teacher_raw: torch.Tensor | None
    teacher_approval: torch.Tensor | None = None  # skd: the tempered approval probabilities, when they differ


def step_probs(teacher_logits, student_logits, bridge, config: DecodingConfig) -> StepProbs:
    """Mask, temper and bridge the last-position logits of both models onto the student's ids."""
    p_t = p_t_raw = p_s = p_s_raw = None
    if student_logits is not None:
        s_logits = bridge.mask_student_logits(student_logits.float())
        p_s = tempered_probs(s_logits, config.temperature, config.top_p)
        p_s_raw = torch.softmax(s_logits, dim=-1)
    if teacher_logits is not None:
        t_logits = bridge.mask_teacher_logits(teacher_logits.float())
        p_t = bridge.teacher_to_student(tempered_probs(t_logits, config.temperature, config.top_p))
        if config.threshold_on == "raw" and config.mode == "skd":
            p_t_raw = bridge.teacher_to_student(torch.softmax(t_logits, dim=-1))
        if p_s is not None:
            p_t = p_t.to(p_s.device)
            p_t_raw = p_t_raw.to(p_s.device) if p_t_raw is not None else None
    return StepProbs(p_t, p_s, p_s_raw, p_t_raw)


def choose_tokens(probs: StepProbs, config: DecodingConfig, uniforms: torch.Tensor):
    """The step rule of each mode on the same uniforms: (tokens (B,), fallback (B,), source (B,))."""
    trials = config.trials
    if config.mode == "teacher":
        tokens = sample_inverse_cdf(probs.teacher, uniforms[:, 0].to(probs.teacher.device))
        return tokens, torch.zeros_like(tokens, dtype=torch.bool), torch.zeros_like(tokens)
    if config.mode == "student":
        tokens = sample_inverse_cdf(probs.student, uniforms[:, trials].to(probs.student.device))
        return tokens, torch.zeros_like(tokens, dtype=torch.bool), torch.ones_like(tokens)
    if config.mode == "rsd":
        test = probs.student_raw if config.threshold_on == "raw" else probs.student
        tokens, fallback = propose_and_verify(probs.teacher, test, probs.student, config.threshold, uniforms)
        return tokens, fallback, fallback.long()  # accepted: teacher (0); fallback: student (1)
    approval = probs.teacher if probs.teacher_approval is None else probs.teacher_approval  # skd
    test = probs.teacher_raw if config.threshold_on == "raw" else approval
    tokens, fallback = propose_and_verify(probs.student, test, probs.teacher, config.threshold, uniforms)
    return tokens, fallback, (~fallback).long()  # accepted: student (1); fallback: teacher (0)


def spelling_probs(piece_logits: torch.Tensor, pieces: torch.Tensor, lengths: torch.Tensor, bridge,
                   config: DecodingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher probabilities of N spellings: the product over each spelling of its pieces' probabilities.

    piece_logits: (N, L, V_t) teacher logits before piece j of spelling n (context + pieces < j);
    pieces: (N, L) teacher ids (anything past ``lengths[n]`` is ignored); lengths: (N,).
    Each piece is scored under the teacher's masked distribution, tempered with top-p as sampled and
    raw (T = 1). Returns (tempered (N,), raw (N,)).
    """
    n, width, v_t = piece_logits.shape
    logits = bridge.mask_teacher_logits(piece_logits.reshape(n * width, v_t).float())  # (N*L, V_t)
    ids = pieces.reshape(n * width, 1).to(logits.device)
    tempered = tempered_probs(logits, config.temperature, config.top_p).gather(-1, ids).view(n, width)
    raw = torch.softmax(logits, dim=-1).gather(-1, ids).view(n, width)
    live = torch.arange(width, device=logits.device)[None, :] < lengths.to(logits.device)[:, None]  # (N, L)
    one = torch.ones_like(tempered)
    return torch.where(live, tempered, one).prod(-1), torch.where(live, raw, one).prod(-1)


# ----------------------------------------------------------------------------------------------
# The batched two-model engine
# ----------------------------------------------------------------------------------------------
CACHE_CHUNK = 256  # KV cache positions a buffer grows by; capacity = live width rounded up to this


def _capacity(length: int) -> int:
    """Buffer positions for ``length`` live ones: the next multiple of CACHE_CHUNK (never 2x the width)."""
    return max(CACHE_CHUNK, -(-length // CACHE_CHUNK) * CACHE_CHUNK)


class _GrowingLayer(DynamicLayer):
    """A DynamicLayer that appends in place into a buffer grown by fixed chunks.

    transformers' DynamicLayer concatenates the whole cache at every step (a full copy per token);
    this layer writes into a buffer of ``_capacity(width)`` positions (at most CACHE_CHUNK - 1 spare
    columns per row, where doubling could hold twice the live width: ~90 GB of cache at the paper's
    batch becomes ~180 GB) and exposes ``keys``/``values`` as views. A full buffer is copied into one
    a chunk larger: at 8k tokens that is 32 copies per layer, each costing about one decoding step's
    cache read. Row selection, merging, left trimming and cropping keep the buffer in sync.
    """

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self._len = 0
            self._kbuf = self._vbuf = None
        n = key_states.shape[-2]
        if self._kbuf is None or self._len + n > self._kbuf.shape[-2]:
            self._resize(_capacity(self._len + n), key_states, value_states)
        self._kbuf[:, :, self._len : self._len + n] = key_states
        self._vbuf[:, :, self._len : self._len + n] = value_states
        self._set_length(self._len + n)
        return self.keys, self.values

    def _resize(self, capacity, like_k, like_v):
        """New buffers of ``capacity`` positions holding the current content."""
        kbuf = like_k.new_empty(*like_k.shape[:2], capacity, like_k.shape[3])
        vbuf = like_v.new_empty(*like_v.shape[:2], capacity, like_v.shape[3])
        if self._len:
            kbuf[:, :, : self._len] = self.keys
            vbuf[:, :, : self._len] = self.values
        self._kbuf, self._vbuf = kbuf, vbuf

    def _set_length(self, length):
        self._len = length
        self.keys = self._kbuf[:, :, :length]
        self.values = self._vbuf[:, :, :length]

    def _adopt(self, keys, values):
        """Replace the content by (keys, values) of shape (B, H, L, D), copied into fresh buffers."""
        self._len = 0
        self._kbuf = self._vbuf = None  # free the old buffers before allocating the new ones
        self.keys = self.values = None
        self._resize(_capacity(keys.shape[-2]), keys, values)
        self._kbuf[:, :, : keys.shape[-2]] = keys
        self._vbuf[:, :, : keys.shape[-2]] = values
        self._set_length(keys.shape[-2])

    def stack_below(self, other: "_GrowingLayer", width: int) -> None:
        """Put the rows of ``other`` below ours, both right-aligned in ``width`` columns (left padding zeroed).

        Copies each part once into the new buffer (no intermediate concatenation).
        """
        parts = ((self.keys, self.values), (other.keys, other.values))
        rows = sum(k.shape[0] for k, _ in parts)
        kbuf = self.keys.new_empty(rows, self.keys.shape[1], _capacity(width), self.keys.shape[3])
        vbuf = self.values.new_empty(rows, self.values.shape[1], _capacity(width), self.values.shape[3])
        start = 0
        for keys, values in parts:
            end, pad = start + keys.shape[0], width - keys.shape[2]
            kbuf[start:end, :, :pad].zero_()  # padding must be finite: attention weighs it by 0
            vbuf[start:end, :, :pad].zero_()
            kbuf[start:end, :, pad:width] = keys
            vbuf[start:end, :, pad:width] = values
            start = end
        self._kbuf, self._vbuf = kbuf, vbuf
        self._set_length(width)

    def batch_select_indices(self, indices):
        if self.is_initialized and self._len:
            self._adopt(self.keys[indices], self.values[indices])

    def drop_left(self, n):
        """Forget the first ``n`` positions of every row (columns that are padding everywhere)."""
        if self.is_initialized and self._len and n > 0:
            self._adopt(self.keys[:, :, n:], self.values[:, :, n:])

    def crop(self, max_length):
        """Negative: drop that many positions from the end (transformers 5); positive: keep that many."""
        if max_length < 0:
            max_length = self.get_seq_length() + max_length
        if self.is_initialized and max_length < self._len:
            self._set_length(max(0, max_length))  # later appends overwrite the tail in place


def _new_cache():
    """An empty DynamicCache whose layers append in amortised O(1) (see _GrowingLayer)."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = _GrowingLayer
    return cache


class _ModelState:
    """One model's batched context: KV cache, 2-D attention mask over the cache, next position per row."""

    def __init__(self, model, pad_id: int):
        self.model = model
        self.device = model.device
        self.pad_id = pad_id
        self.cache = None
        self.mask = None  # (B, L) 1 = real token
        self.next_pos = None  # (B,) number of real tokens so far

    @torch.no_grad()
    def feed(self, rows: list[list[int]], keep: int = 1) -> torch.Tensor:
        """Append each row's new ids (left-padded to a common width) and return last-position logits (B, V).

        With ``keep`` > 1, return the logits of the last ``keep`` positions instead, (B, keep, V).
        """
        width = max(len(r) for r in rows)
        batch = len(rows)
        ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        new_mask = torch.zeros((batch, width), dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
                new_mask[i, width - len(r) :] = 1
        ids, new_mask = ids.to(self.device), new_mask.to(self.device)
        if self.cache is None:
            self.cache = _new_cache()
            self.mask = new_mask
            start = torch.zeros(batch, dtype=torch.long, device=self.device)
        else:
            self.mask = torch.cat([self.mask, new_mask], dim=1)
            start = self.next_pos
        positions = start[:, None] + (new_mask.cumsum(-1) - 1).clamp_min(0)  # (B, width)
        self.next_pos = start + new_mask.sum(-1)
        out = self.model(
            input_ids=ids,
            attention_mask=self.mask,
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=keep,
        )
        self.cache = out.past_key_values
        return out.logits[:, -1, :] if keep == 1 else out.logits[:, -keep:, :]

    @torch.no_grad()
    def look_ahead(self, rows: list[list[int]]) -> list[torch.Tensor]:
        """Logits after each of each row's tokens, WITHOUT keeping them: [(len(row), V)] per row.

        The tokens are fed, read and rolled back (``forget_last``); the cache, mask and positions end
        as they were. Rows with no tokens get an empty tensor.
        """
        width = max(len(r) for r in rows)
        if width == 0:
            return [torch.empty(0, 0) for _ in rows]
        logits = self.feed(rows, keep=width)
        logits = logits[:, None, :] if width == 1 else logits  # (B, W, V)
        self.forget_last([len(r) for r in rows])
        return [logits[b, width - len(r):] for b, r in enumerate(rows)]

    def forget_last(self, counts: Sequence[int]) -> None:
        """Roll back: hide each row's last ``counts[b]`` real tokens (rejected drafts) from attention.

        The hidden columns stay in the cache as padding (rows roll back by different amounts) and
        trailing columns hidden in every row are cropped away. Positions move back with them.
        """
        for b, n in enumerate(counts):
            if n:
                real = self.mask[b].nonzero().squeeze(-1)
                self.mask[b, real[-n:]] = 0
        self.next_pos = self.next_pos - torch.tensor(list(counts), device=self.device)
        live = self.mask.any(0).nonzero()
        length = int(live[-1]) + 1 if len(live) else 0
        if length < self.mask.shape[1]:
            self.cache.crop(length - self.mask.shape[1])  # negative: remove that many (transformers 5)
            self.mask = self.mask[:, :length]

    def extend(self, other: "_ModelState") -> None:
        """Append the rows of ``other`` (a freshly prefilled state) below ours, left-padding the shorter cache."""
        width = max(self.mask.shape[1], other.mask.shape[1])

        def pad_left(t, n):  # (B, L) mask
            return t if n == 0 else torch.cat([t.new_zeros(t.shape[0], n), t], dim=1)

        pad_a, pad_b = width - self.mask.shape[1], width - other.mask.shape[1]
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.stack_below(theirs, width)
        self.mask = torch.cat([pad_left(self.mask, pad_a), pad_left(other.mask, pad_b)])
        self.next_pos = torch.cat([self.next_pos, other.next_pos])

    def keep(self, index: torch.Tensor) -> None:
        """Drop finished rows: keep only ``index`` (sorted row numbers) and trim all-padding columns."""
        index = index.to(self.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        self.next_pos = self.next_pos[index]
        live_cols = self.mask.any(0).nonzero()
        first = int(live_cols[0]) if len(live_cols) else 0
        if first > 0:  # columns that are padding in every remaining row cost attention for nothing
            for layer in self.cache.layers:
                layer.drop_left(first)
            self.mask = self.mask[:, first:]


def score_student_only_proposals(probs: StepProbs, teacher_logits: torch.Tensor, teacher_state: _ModelState,
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
    proposals = torch.stack([sample_inverse_cdf(probs.student, u[:, k]) for k in range(config.trials)], 1)  # (B, trials)
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


def _dtype(model) -> torch.dtype:
    """The dtype of a model's activations (and so of its KV cache)."""
    dtype = getattr(model, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else next(model.parameters()).dtype


def _pad_id(model, fallback: int = 0) -> int:
    cfg = model.config
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(cfg, name, None)
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return fallback


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


class Decoder:
    """Batched lockstep decoder for one teacher/student pair (either may be None if the mode does not need it).

    >>> dec = Decoder(pair.teacher, pair.student, pair.bridge, DecodingConfig(mode="rsd"))
    >>> traces = dec.generate(prompts, seeds, batch_size=16)   # prompts in student ids
    """

    def __init__(self, teacher, student, bridge, config: DecodingConfig):
        self.teacher, self.student, self.bridge, self.config = teacher, student, bridge, config
        if config.needs_teacher and teacher is None:
            raise ValueError(f"mode {config.mode!r} (record_both={config.record_both}) needs a teacher model")
        if config.needs_student and student is None:
            raise ValueError(f"mode {config.mode!r} (record_both={config.record_both}) needs a student model")

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
        """
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
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
            tokens = t_longest + cfg.max_new_tokens + margin + 4 * max(extra.values(), default=0)
            users.append(CacheUser("teacher", kv_cache_bytes_per_token(self.teacher.config, _dtype(self.teacher)),
                                   tokens, str(self.teacher.device)))
        if cfg.needs_student:
            users.append(CacheUser("student", kv_cache_bytes_per_token(self.student.config, _dtype(self.student)),
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

    def _prefill(self, prompts):
        """Fresh states for a group of prompts and their first logits."""
        t_state = s_state = t_logits = s_logits = None
        if self.config.needs_teacher:
            t_state = _ModelState(self.teacher, _pad_id(self.teacher))
            t_logits = t_state.feed([self.bridge.student_to_teacher(list(p)) for p in prompts])
        if self.config.needs_student:
            s_state = _ModelState(self.student, _pad_id(self.student))
            s_logits = s_state.feed([list(p) for p in prompts])
        return t_state, s_state, t_logits, s_logits

    @torch.no_grad()
    def _run(self, prompts, seeds, batch_size, refill):
        """Yield (index, trace) as traces end. Each batch row is a slot holding one trace."""
        cfg, bridge = self.config, self.bridge
        if cfg.draft_tokens:
            from rsdlib.speculative import run_speculative

            yield from run_speculative(self, prompts, seeds, batch_size, refill)
            return
        record = cfg.to_dict()
        pending = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))  # pop() = shortest first
        traces: dict[int, Trace] = {}
        gens: dict[int, torch.Generator] = {}
        active: list[int] = []  # prompt index held by each batch row
        t_state = s_state = t_logits = s_logits = None
        stop = torch.tensor(sorted(cfg.stop_ids), dtype=torch.long)
        nan = float("nan")

        def take(n):
            new = [pending.pop() for _ in range(min(n, len(pending)))]
            for i in new:
                traces[i] = Trace(prompt_ids=[int(x) for x in prompts[i]], seed=int(seeds[i]), config=record)
                gens[i] = torch.Generator().manual_seed(int(seeds[i]))
            return new

        def gather(p, col):
            return p.gather(-1, col.to(p.device)).squeeze(-1).tolist() if p is not None else None

        while pending or active:
            free = batch_size - len(active)
            if pending and (not active or (refill and free >= max(1, batch_size // 4))):
                new = take(free)
                nt, ns, ntl, nsl = self._prefill([prompts[i] for i in new])
                if not active:
                    t_state, s_state, t_logits, s_logits = nt, ns, ntl, nsl
                else:
                    for state, other in ((t_state, nt), (s_state, ns)):
                        if state is not None:
                            state.extend(other)
                    t_logits = torch.cat([t_logits, ntl]) if t_logits is not None else None
                    s_logits = torch.cat([s_logits, nsl]) if s_logits is not None else None
                active = active + new
            t_logits, s_logits = steer_logits(self, t_logits, s_logits, [traces[i] for i in active])
            probs = step_probs(t_logits, s_logits, bridge, cfg)
            uniforms = draw_uniforms([gens[i] for i in active], len(active), cfg.trials + 1)
            if cfg.mode == "skd" and bridge.student_only:  # the teacher scores a proposed </think> by its spelling
                probs = score_student_only_proposals(probs, t_logits, t_state, bridge, cfg, uniforms)
            tokens, fallback, source = choose_tokens(probs, cfg, uniforms)
            col = tokens[:, None]
            p_teacher = probs.teacher if probs.teacher_approval is None else probs.teacher_approval
            p_t, p_s, p_raw = gather(p_teacher, col), gather(probs.student, col), gather(probs.student_raw, col)
            ent = entropy(probs.student_raw).tolist() if probs.student_raw is not None else None
            tok_list, fb_list, src_list = tokens.tolist(), fallback.tolist(), source.tolist()
            stopped = torch.isin(tokens.cpu(), stop).tolist() if len(stop) else [False] * len(active)
            keep = []
            for j, i in enumerate(active):
                tr = traces[i]
                tr.token_ids.append(tok_list[j])
                tr.source.append(src_list[j])
                tr.fallback.append(bool(fb_list[j]))
                tr.teacher_prob.append(p_t[j] if p_t is not None else nan)
                tr.student_prob.append(p_s[j] if p_s is not None else nan)
                tr.student_prob_raw.append(p_raw[j] if p_raw is not None else nan)
                tr.student_entropy.append(ent[j] if ent is not None else nan)
                if stopped[j] or len(tr.token_ids) >= cfg.max_new_tokens:
                    tr.finish_reason = "stop" if stopped[j] else "length"
                    del gens[i]
                    yield i, traces.pop(i)
                else:
                    keep.append(j)
            if len(keep) < len(active):
                if not keep:
                    active, t_state, s_state = [], None, None
                    continue
                keep_t = torch.tensor(keep, dtype=torch.long)
                for state in (t_state, s_state):
                    if state is not None:
                        state.keep(keep_t)
                active = [active[j] for j in keep]
                tok_list = [tok_list[j] for j in keep]
            t_logits = t_state.feed([bridge.student_to_teacher([t]) for t in tok_list]) if t_state else None
            s_logits = s_state.feed([[t] for t in tok_list]) if s_state else None
