"""Exact speculative RSD: the student drafts, one teacher forward scores k+1 positions (field notes s.7; issue 8).

RSD traces are, by construction, likely under the student, so the student is a good draft model
for the RSD distribution itself. One round, per row:

1. the student drafts x_1..x_k from its own (tempered) distribution q_i, one cached step each,
   and one more step gives its distribution at position k+1;
2. the teacher reads the pending token and the k drafts in ONE forward (logits at k+1 positions);
3. at each position the exact RSD mixture P_i = P_t 1[P_s >= tau] + r P_s (rsdlib.sampling) is
   formed, and drafts are accepted left to right with probability min(1, P_i(x_i) / q_i(x_i)); the
   first rejected position emits a sample of norm(max(0, P_i - q_i)), and a fully accepted round
   emits a bonus token from P_{k+1} (Leviathan et al., 2023): the output distribution is exactly P;
4. both caches are rolled back past the rejected drafts (rows roll back by different amounts, so
   rejected columns become padding; columns dead in every row are cropped).

The per-token record keeps its meaning: P_t(y), P_s(y), the student's entropy at that position,
and a fallback flag drawn from its exact conditional given the emitted token, r P_s(y) / P(y), so
trace statistics (Table 2) stay unbiased. Randomness: each round draws 3k + 2 uniforms per row from
the row's own generator, so traces are deterministic under a seed (for a given k).
"""

from __future__ import annotations

import itertools

import torch

from rsdlib.engine import Batch, Row, StepRule, TokenRecord
from rsdlib.sampling import draw_uniforms, entropy, proposal_mixture, sample_inverse_cdf, step_probs, tempered_probs


def speculative_accept(target: torch.Tensor, draft_probs: torch.Tensor, drafts: torch.Tensor,
                       u_accept: torch.Tensor, u_next: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The speculative-sampling rule for one round, batched.

    target: (B, k+1, V) target distributions P_1..P_{k+1}; draft_probs: (B, k, V) the draft
    distributions q_1..q_k; drafts: (B, k) the drafted ids; u_accept: (B, k), u_next: (B,) uniforms.
    Returns (n_accepted (B,), next_token (B,)): the row emits drafts[:n] then next_token.
    """
    batch, k = drafts.shape
    p_draft = target[:, :k].gather(-1, drafts[..., None]).squeeze(-1)  # (B, k)
    q_draft = draft_probs.gather(-1, drafts[..., None]).squeeze(-1)  # (B, k), > 0: x_i was drawn from q_i
    accepted = u_accept.to(p_draft) * q_draft < p_draft  # u < P/q without dividing
    rejected = ~accepted
    n_accepted = torch.where(rejected.any(1), rejected.float().argmax(1), torch.full_like(drafts[:, 0], k))
    rows = torch.arange(batch, device=target.device)
    p_next = target[rows, n_accepted]  # (B, V)
    q_next = torch.zeros_like(p_next)
    partial = n_accepted < k
    q_next[partial] = draft_probs[rows[partial], n_accepted[partial]]
    residual = (p_next - q_next).clamp_min(0)  # bonus rows: q = 0, so the residual is P_{k+1}
    empty = residual.sum(-1) <= 1e-12  # P == q up to rounding: any rejection was numerical noise
    residual = torch.where(empty[:, None], p_next, residual)
    return n_accepted, sample_inverse_cdf(residual, u_next)


class SpeculativeRule(StepRule):
    """Exact speculative RSD as a step rule of ``rsdlib.engine.run_batches``: one round per step.

    ``decoder``: the ``rsdlib.decoding.Decoder`` (mode rsd, ``draft_tokens`` = k > 0); its models,
    bridge and config are read, its ``prefill`` hook starts rows, and its ``stats`` dict gets the
    round counters: rounds, drafted, accepted (drafts) and emitted (tokens recorded).
    Rows are started on their prompt minus its last token: that token is fed with the first round.
    """

    def __init__(self, decoder, prompts):
        for i, p in enumerate(prompts):
            if len(p) < 2:
                raise ValueError(f"speculative decoding needs prompts of at least 2 tokens (prompt {i} has {len(p)})")
        self.decoder, self.config, self.bridge = decoder, decoder.config, decoder.bridge
        self.k = self.config.draft_tokens
        self.stats = decoder.stats
        self.stats.update({"rounds": 0, "drafted": 0, "accepted": 0, "emitted": 0})
        self._forget_student: list[int] = []  # per row of the last round: student positions to roll back
        self._forget_teacher: list[int] = []  # the same for the teacher (its spelling of the rejected drafts)

    def start(self, rows: list[Row]) -> Batch:
        dec = self.decoder
        teacher, _ = dec.prefill(dec.teacher, [self.bridge.student_to_teacher(row.prompt[:-1]) for row in rows])
        student, _ = dec.prefill(dec.student, [row.prompt[:-1] for row in rows])
        return Batch(rows, teacher, student)

    def step(self, batch: Batch) -> list[list[TokenRecord]]:
        cfg, bridge, k = self.config, self.bridge, self.k
        size = len(batch.rows)
        u = draw_uniforms([row.generator for row in batch.rows], size, 3 * k + 2)  # (B, 3k + 2)
        u_draft, u_accept, u_next, u_fallback = u[:, :k], u[:, k : 2 * k], u[:, 2 * k], u[:, 2 * k + 1 :]

        # 1. student: the pending token (last emitted, or the prompt's last), then k drafts; k+1 cached steps
        x = [row.last_token for row in batch.rows]
        round_tokens = [[t] for t in x]  # per row: pending + drafts (student ids)
        s_logits = []
        for i in range(k + 1):
            logits = batch.student.feed([[t] for t in x])  # (B, V_s)
            s_logits.append(logits)
            if i < k:
                q = tempered_probs(bridge.mask_student_logits(logits.float()), cfg.temperature, cfg.top_p)
                x = sample_inverse_cdf(q, u_draft[:, i].to(q.device)).tolist()
                for row, t in zip(round_tokens, x):
                    row.append(t)
        s_logits = torch.stack(s_logits, dim=1)  # (B, k+1, V_s)

        # 2. teacher: the same k+1 tokens in its own spelling, one forward, logits after each token
        spelled = [[bridge.student_to_teacher([t]) for t in row] for row in round_tokens]
        flat = [sum(sp, []) for sp in spelled]
        width = max(len(f) for f in flat)
        t_all = batch.teacher.feed(flat, keep=width)  # (B, W, V_t), rows right-aligned
        if all(len(f) == k + 1 for f in flat):
            t_logits = t_all
        else:  # pick each token's last piece: position (W - len(row) + end of the token's spelling - 1)
            ends = torch.tensor([[width - len(f) + e - 1 for e in itertools.accumulate(len(s) for s in sp)]
                                 for f, sp in zip(flat, spelled)], device=t_all.device)  # (B, k+1)
            t_logits = t_all.gather(1, ends[..., None].expand(-1, -1, t_all.shape[-1]))  # (B, k+1, V_t)

        # 3. exact mixture at every position, accept / reject
        vs = s_logits.shape[-1]
        positions = size * (k + 1)  # rows x positions flattened for the step maths: (B*(k+1), V)
        probs = step_probs(t_logits.reshape(positions, -1), s_logits.reshape(positions, -1), bridge, cfg)
        test = probs.student_raw if cfg.threshold_on == "raw" else probs.student
        mix, r = proposal_mixture(probs.teacher, test, cfg.threshold, cfg.trials, p_fallback=probs.student)
        mix, r = mix.view(size, k + 1, vs), r.view(size, k + 1)  # (B, k+1, V_s), (B, k+1)
        p_s = probs.student.view(size, k + 1, vs)
        drafts = torch.tensor([row[1:] for row in round_tokens], device=mix.device)  # (B, k)
        n_acc, nxt = speculative_accept(mix, p_s[:, :k], drafts, u_accept, u_next.to(mix.device))
        emitted = torch.cat([drafts, torch.zeros_like(drafts[:, :1])], dim=1)  # (B, k+1)
        emitted[torch.arange(size), n_acc] = nxt

        # 4. per-token record of the emitted tokens, with the exact conditional fallback flag
        col = emitted[..., None]  # (B, k+1, 1)
        p_t_y = probs.teacher.view(size, k + 1, vs).gather(-1, col).squeeze(-1)  # (B, k+1)
        p_s_y = p_s.gather(-1, col).squeeze(-1)
        p_raw_y = probs.student_raw.view(size, k + 1, vs).gather(-1, col).squeeze(-1)
        mix_y = mix.gather(-1, col).squeeze(-1)
        fb_prob = (r * p_s_y / mix_y.clamp_min(1e-30)).clamp(0, 1)
        fallback = u_fallback.to(fb_prob) < fb_prob  # (B, k+1)
        ent = entropy(probs.student_raw).view(size, k + 1)
        n_list = n_acc.tolist()
        self.stats["rounds"] += 1
        self.stats["drafted"] += size * k
        self.stats["accepted"] += sum(n_list)
        records = []
        for j, (n, tokens, fbs, p_t, p_s_j, p_raw, h) in enumerate(zip(
                n_list, emitted.tolist(), fallback.tolist(), p_t_y.tolist(), p_s_y.tolist(), p_raw_y.tolist(),
                ent.tolist())):
            records.append([TokenRecord(token=tokens[pos], source=int(fbs[pos]), fallback=bool(fbs[pos]),
                                        teacher_prob=p_t[pos], student_prob=p_s_j[pos], student_prob_raw=p_raw[pos],
                                        student_entropy=h[pos]) for pos in range(n + 1)])
        # the caches saw pending + k drafts; a row keeps pending + its n accepted drafts
        self._forget_student = [k - n for n in n_list]
        self._forget_teacher = [sum(len(s) for s in sp[n + 1 :]) for n, sp in zip(n_list, spelled)]
        return records

    def recorded(self, tokens: int) -> None:
        self.stats["emitted"] += tokens

    def advance(self, batch: Batch, kept: list[int]) -> None:
        """Roll both caches back past the kept rows' rejected drafts (the emitted token is fed next round)."""
        batch.student.forget_last([self._forget_student[j] for j in kept])
        batch.teacher.forget_last([self._forget_teacher[j] for j in kept])
