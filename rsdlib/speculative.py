"""Exact speculative RSD: the student drafts, one teacher forward scores k+1 positions (field notes s.7; issue 8).

RSD traces are, by construction, likely under the student, so the student is a good draft model
for the RSD distribution itself. One round, per row:

1. the student drafts x_1..x_k from its own (tempered) distribution q_i, one cached step each,
   and one more step gives its distribution at position k+1;
2. the teacher reads the pending token and the k drafts in ONE forward (logits at k+1 positions);
3. at each position the exact RSD mixture P_i = P_t 1[P_s >= tau] + r P_s (rsdlib.decoding) is
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

import torch

from rsdlib.decoding import (
    Trace,
    _ModelState,
    _pad_id,
    draw_uniforms,
    entropy,
    proposal_mixture,
    sample_inverse_cdf,
    step_probs,
    tempered_probs,
)


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


def run_speculative(decoder, prompts, seeds, batch_size, refill):
    """Yield (index, trace) as traces end; the speculative twin of ``Decoder._run`` (mode rsd only)."""
    cfg, bridge = decoder.config, decoder.bridge
    k = cfg.draft_tokens
    record = cfg.to_dict()
    stop_ids = set(cfg.stop_ids)
    for i, p in enumerate(prompts):
        if len(p) < 2:
            raise ValueError(f"speculative decoding needs prompts of at least 2 tokens (prompt {i} has {len(p)})")
    pending = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    traces, gens, next_token = {}, {}, {}
    active: list[int] = []
    t_state = s_state = None
    stats = decoder.stats = getattr(decoder, "stats", {})  # generate() put the batch plan there
    stats.update({"rounds": 0, "drafted": 0, "accepted": 0, "emitted": 0})

    def admit(n):
        new = [pending.pop() for _ in range(min(n, len(pending)))]
        for i in new:
            traces[i] = Trace(prompt_ids=[int(x) for x in prompts[i]], seed=int(seeds[i]), config=record)
            gens[i] = torch.Generator().manual_seed(int(seeds[i]))
            next_token[i] = int(prompts[i][-1])  # the prompt's last token is fed with the first round
        t_new = _ModelState(decoder.teacher, _pad_id(decoder.teacher))
        t_new.feed([bridge.student_to_teacher(list(prompts[i][:-1])) for i in new])
        s_new = _ModelState(decoder.student, _pad_id(decoder.student))
        s_new.feed([list(prompts[i][:-1]) for i in new])
        return new, t_new, s_new

    while pending or active:
        free = batch_size - len(active)
        if pending and (not active or (refill and free >= max(1, batch_size // 4))):
            new, t_new, s_new = admit(free)
            if active:
                t_state.extend(t_new)
                s_state.extend(s_new)
            else:
                t_state, s_state = t_new, s_new
            active = active + new
        batch = len(active)
        u = draw_uniforms([gens[i] for i in active], batch, 3 * k + 2)
        u_draft, u_accept, u_next, u_fallback = u[:, :k], u[:, k : 2 * k], u[:, 2 * k], u[:, 2 * k + 1 :]

        # 1. student: pending token, then k drafts; k+1 cached steps
        x = [next_token[i] for i in active]
        round_tokens = [[t] for t in x]  # per row: pending + drafts (student ids)
        s_logits = []
        for i in range(k + 1):
            logits = s_state.feed([[t] for t in x])
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
        t_all = t_state.feed(flat, keep=width)  # (B, W, V_t)
        if all(len(f) == k + 1 for f in flat):
            t_logits = t_all
        else:
            ends = torch.tensor([[width - len(f) + e - 1 for e in _cumsum([len(s) for s in sp])]
                                 for f, sp in zip(flat, spelled)], device=t_all.device)  # (B, k+1)
            t_logits = t_all.gather(1, ends[..., None].expand(-1, -1, t_all.shape[-1]))

        # 3. exact mixture at every position, accept / reject
        vs = s_logits.shape[-1]
        probs = step_probs(t_logits.reshape(batch * (k + 1), -1), s_logits.reshape(batch * (k + 1), -1), bridge, cfg)
        test = probs.student_raw if cfg.threshold_on == "raw" else probs.student
        mix, r = proposal_mixture(probs.teacher, test, cfg.threshold, cfg.trials, p_fallback=probs.student)
        mix, r = mix.view(batch, k + 1, vs), r.view(batch, k + 1)
        p_s = probs.student.view(batch, k + 1, vs)
        drafts = torch.tensor([row[1:] for row in round_tokens], device=mix.device)  # (B, k)
        n_acc, nxt = speculative_accept(mix, p_s[:, :k], drafts, u_accept, u_next.to(mix.device))
        emitted = torch.cat([drafts, torch.zeros_like(drafts[:, :1])], dim=1)  # (B, k+1)
        emitted[torch.arange(batch), n_acc] = nxt

        # 4. per-token record of the emitted tokens, with the exact conditional fallback flag
        col = emitted[..., None]
        p_t_y = probs.teacher.view(batch, k + 1, vs).gather(-1, col).squeeze(-1)
        p_s_y = p_s.gather(-1, col).squeeze(-1)
        p_raw_y = probs.student_raw.view(batch, k + 1, vs).gather(-1, col).squeeze(-1)
        mix_y = mix.gather(-1, col).squeeze(-1)
        fb_prob = (r * p_s_y / mix_y.clamp_min(1e-30)).clamp(0, 1)
        fallback = u_fallback.to(fb_prob) < fb_prob
        ent = entropy(probs.student_raw).view(batch, k + 1)
        n_list, em_list = n_acc.tolist(), emitted.tolist()
        cols = [t.tolist() for t in (p_t_y, p_s_y, p_raw_y, ent, fallback)]
        stats["rounds"] += 1
        stats["drafted"] += batch * k
        stats["accepted"] += sum(n_list)

        keep, forget_s, forget_t = [], [], []
        for j, i in enumerate(active):
            tr, n, done = traces[i], n_list[j], False
            for pos in range(n + 1):
                y = em_list[j][pos]
                fb = bool(cols[4][j][pos])
                tr.token_ids.append(y)
                tr.source.append(int(fb))
                tr.fallback.append(fb)
                tr.teacher_prob.append(cols[0][j][pos])
                tr.student_prob.append(cols[1][j][pos])
                tr.student_prob_raw.append(cols[2][j][pos])
                tr.student_entropy.append(cols[3][j][pos])
                stats["emitted"] += 1
                if y in stop_ids or len(tr.token_ids) >= cfg.max_new_tokens:
                    tr.finish_reason = "stop" if y in stop_ids else "length"
                    done = True
                    break
            if done:
                del gens[i], next_token[i]
                yield i, traces.pop(i)
                continue
            keep.append(j)
            next_token[i] = em_list[j][n]
            forget_s.append(k - n)  # student saw pending + k drafts; keeps pending + n drafts
            forget_t.append(sum(len(s) for s in spelled[j][n + 1 :]))
        if len(keep) < len(active):
            if not keep:
                active, t_state, s_state = [], None, None
                continue
            index = torch.tensor(keep, dtype=torch.long)
            t_state.keep(index)
            s_state.keep(index)
            active = [active[j] for j in keep]
        s_state.forget_last(forget_s)
        t_state.forget_last(forget_t)


def _cumsum(xs):
    out, total = [], 0
    for x in xs:
        total += x
        out.append(total)
    return out
