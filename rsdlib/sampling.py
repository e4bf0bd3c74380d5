"""The maths of one decoding step on (B, V) probability tensors: no models, no caches, no batches.

- distributions: ``tempered_probs`` (temperature, greedy at 0, ``top_p_filter``), ``entropy``;
- the exact next-token distribution of the threshold rule: ``proposal_mixture`` (``rsd_mixture``,
  ``skd_mixture``; the formula is in ``rsdlib.decoding``'s docstring);
- sampling with explicit randomness: ``counter_uniforms`` (the decoder's: a counter-based hash of
  (row seed, row step, draw) computed on the device, so a row's draws never depend on its batch
  neighbours, the batch size or the device), ``draw_uniforms`` (one ``torch.Generator`` per row),
  ``sample_inverse_cdf``, ``propose_and_verify`` / ``rsd_sample`` (the threshold rule itself);
- one lockstep step of a mode: ``step_probs`` (mask, temper, bridge both models' logits onto the
  student's ids: ``StepProbs``), ``choose_tokens`` (the mode's rule on the step's uniforms),
  ``spelling_probs`` (teacher probability of a multi-token spelling);
- ``derive_seed``: the per-(problem, sample) seed of a row.

``config`` arguments are ``rsdlib.decoding.DecodingConfig`` objects (only their fields are read).
``rsdlib.decoding`` re-exports every name here, so ``from rsdlib.decoding import step_probs`` works.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import torch


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
    """(B, V) probabilities and (B,) uniforms in [0, 1) -> (B,) token ids; zero-probability ids never win.

    No host sync: the target u * total is kept strictly below the total, so the first id whose
    cumulative sum exceeds it has a positive probability (the cumulative sum only rises at live ids).
    """
    cdf = probs.double().cumsum(-1)  # (B, V)
    total = cdf[:, -1:]  # (B, 1)
    target = torch.minimum(u.to(cdf)[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))  # (B, 1)
    idx = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return idx.clamp_max(probs.shape[-1] - 1)


_MASK64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15  # splitmix64's increment (the golden ratio in 64 bits)
_MIX = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB)  # splitmix64's finaliser multipliers


def _int64(x: int) -> int:
    """An unsigned 64-bit constant as the signed int64 with the same bits."""
    return x - (1 << 64) if x >= 1 << 63 else x


def _mix64(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (wrapping arithmetic, logical shifts)."""
    z = z ^ ((z >> 30) & ((1 << 34) - 1))
    z = z * _int64(_MIX[0])
    z = z ^ ((z >> 27) & ((1 << 37) - 1))
    z = z * _int64(_MIX[1])
    return z ^ ((z >> 31) & ((1 << 33) - 1))


def counter_uniforms(seeds: torch.Tensor, counters: torch.Tensor, n: int) -> torch.Tensor:
    """(B, n) float64 uniforms in [0, 1): draw k of row b at its step ``counters[b]``, from ``seeds[b]`` alone.

    A counter-based generator (splitmix64 keyed by seed, then step, then draw): computed on the
    device with integer tensor ops, no generator state, no host sync; the same (seed, step, draw)
    gives the same number on any device and in any batch. seeds, counters: (B,) int64.
    """
    gamma = _int64(_GAMMA)
    key = _mix64(_mix64(seeds.long() + gamma) + counters.long().to(seeds.device) * gamma)  # (B,)
    draws = torch.arange(1, n + 1, device=seeds.device, dtype=torch.long) * gamma  # (n,)
    bits = (_mix64(key[:, None] + draws[None, :]) >> 11) & ((1 << 53) - 1)  # (B, n): the top 53 bits
    return bits.double() * 2.0**-53


def counter_uniforms_reference(seed: int, counter: int, n: int) -> list[float]:
    """``counter_uniforms`` for one row in plain Python integers (the reference its tests compare to)."""
    def mix(z):
        z ^= z >> 30
        z = (z * _MIX[0]) & _MASK64
        z ^= z >> 27
        z = (z * _MIX[1]) & _MASK64
        return z ^ (z >> 31)

    key = mix((mix((seed + _GAMMA) & _MASK64) + counter * _GAMMA) & _MASK64)
    return [(mix((key + k * _GAMMA) & _MASK64) >> 11) * 2.0**-53 for k in range(1, n + 1)]


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
    # every row's fallback draw is computed (no host sync to ask whether any row needs it)
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


def step_probs(teacher_logits, student_logits, bridge, config) -> StepProbs:
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


def choose_tokens(probs: StepProbs, config, uniforms: torch.Tensor):
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
                   config) -> tuple[torch.Tensor, torch.Tensor]:
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
