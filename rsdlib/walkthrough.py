"""Notebook 00: Algorithm 1 run by hand, one token at a time, and checked against rsdlib's decoder.

``hand_loop`` keeps both models' KV caches, and at each step draws two uniforms (one for the teacher's
proposal, one for the student's fallback draw, ``counter_uniforms(seed, step)``: rsdlib's convention, so
the library's ``Decoder`` can be checked against it): the student keeps the teacher's token when
P_s(y) >= p_th, otherwise it samples the token itself. ``plot_walkthrough`` draws P_s of each proposal
and the step's chance of falling back.
"""

from __future__ import annotations

from typing import Sequence

import torch

from rsdlib.decoding import Decoder, DecodingConfig, counter_uniforms, sample_inverse_cdf, step_probs


def hand_loop(pair, prompt_student: Sequence[int], cfg: DecodingConfig, seed: int) -> tuple[list[dict], list[int]]:
    """(one row per step: proposal, its probabilities, the decision, the emitted token, P(fallback); the
    emitted ids), for ``cfg.max_new_tokens`` steps or until an id of ``cfg.stop_ids``."""
    tok, threshold, stop = pair.student_tokenizer, cfg.threshold, set(cfg.stop_ids)
    t_ctx_new, s_ctx_new = pair.bridge.student_to_teacher(list(prompt_student)), list(prompt_student)
    t_cache = s_cache = None
    rows, emitted = [], []
    with torch.no_grad():
        for step in range(cfg.max_new_tokens):
            t_out = pair.teacher(input_ids=torch.tensor([t_ctx_new], device=pair.teacher.device),
                                 past_key_values=t_cache, use_cache=True)
            s_out = pair.student(input_ids=torch.tensor([s_ctx_new], device=pair.student.device),
                                 past_key_values=s_cache, use_cache=True)
            t_cache, s_cache = t_out.past_key_values, s_out.past_key_values
            probs = step_probs(t_out.logits[:, -1], s_out.logits[:, -1], pair.bridge, cfg)  # (1, V_s) each
            u = counter_uniforms(torch.tensor([seed]), torch.tensor([step]), cfg.trials + 1)  # (1, 2): the row's draws
            proposal = int(sample_inverse_cdf(probs.teacher, u[:, 0].to(probs.teacher.device)))
            p_s = float(probs.student[0, proposal])
            accepted = p_s >= threshold
            token = proposal if accepted else int(sample_inverse_cdf(probs.student, u[:, 1].to(probs.student.device)))
            r = float((probs.teacher[0] * (probs.student[0] < threshold)).sum())  # P(fallback) at this step
            rows.append({"step": step + 1, "teacher proposes": repr(tok.decode([proposal])),
                         "P_t(proposal)": float(probs.teacher[0, proposal]), "P_s(proposal)": p_s,
                         "decision": "accept" if accepted else "reject -> student samples",
                         "emitted": repr(tok.decode([token])), "P(fallback)": r})
            emitted.append(token)
            t_ctx_new, s_ctx_new = pair.bridge.student_to_teacher([token]), [token]
            if token in stop:
                break
    return rows, emitted


def check_walkthrough_params(benchmark: str, threshold: float, n_steps: int, temperature: float,
                             profile: str = "demo") -> None:
    """Refuse notebook 00's bad values, naming the value, its allowed range and the file it came from."""
    from rsdlib.paths import params_source

    where = params_source(profile, "00_walkthrough")
    if benchmark.lower().startswith("gpqa"):
        raise ValueError(f"{where}: benchmark {benchmark!r}: the walkthrough prints its problem, and GPQA questions "
                         "must not be shown")
    bad = [f"{key} must be {allowed}, got {value!r}" for key, value, ok, allowed in (
        ("threshold", threshold, 0 <= threshold <= 1, "in [0, 1]"),
        ("n_steps", n_steps, n_steps >= 1, ">= 1"),
        ("temperature", temperature, temperature > 0, "> 0"))
        if not ok]
    if bad:
        raise ValueError(f"{where}: {'; '.join(bad)}")


def compare_with_decoder(pair, prompt_student: Sequence[int], cfg: DecodingConfig, seed: int, rows: Sequence[dict],
                         emitted: Sequence[int]) -> str:
    """rsdlib's batched decoder with the same seed: on how many first tokens it agrees with the hand loop."""
    trace = Decoder(pair.teacher, pair.student, pair.bridge, cfg).generate([list(prompt_student)], [seed])[0]
    agree = next((i for i, (a, b) in enumerate(zip(trace.token_ids, emitted)) if a != b),
                 min(len(emitted), len(trace.token_ids)))
    by_hand = sum(r["decision"] != "accept" for r in rows) / len(rows)
    return (f"decoder and hand loop agree on the first {agree} of {len(emitted)} tokens; "
            f"decoder fallback rate {trace.fallback_rate:.1%}, hand loop {by_hand:.1%}")


def plot_walkthrough(steps, threshold: float, title: str):
    """P_s of the teacher's proposal at each step (accepted / rejected), and the step's P(fallback)."""
    import matplotlib.pyplot as plt

    from rsdlib.plots import set_style

    set_style()
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 4.6), sharex=True, gridspec_kw={"height_ratios": [2.2, 1]})
    ok = steps["decision"] == "accept"
    ax.scatter(steps["step"][ok], steps["P_s(proposal)"][ok], color="#238b45", s=18, label="accepted (teacher token)")
    ax.scatter(steps["step"][~ok], steps["P_s(proposal)"][~ok], color="#cb181d", marker="x", s=30,
               label="rejected -> student samples")
    ax.axhline(threshold, ls="--", color="#444444", lw=0.8)
    ax.text(steps["step"].max(), threshold, f" p_th = {threshold:g}", va="bottom", ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("P_s(teacher's proposal)")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2)
    fig.suptitle(title)
    ax2.bar(steps["step"], steps["P(fallback)"], color="#9e9ac8")
    ax2.set_ylabel("P(fallback)")
    ax2.set_xlabel("step")
    return fig
