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
# # 00 · Walkthrough: Reverse Speculative Decoding, one token at a time
#
# **Paper:** Algorithm 1 (Section 3.1) and the left panel of Figure 1. At every step the teacher
# proposes a token y ~ P_t; the student keeps it when P_s(y) >= p_th, and otherwise samples the token
# itself, y ~ P_s. The exact distribution of the emitted token is
# P(y) = P_t(y) 1[P_s(y) >= p_th] + r P_s(y), where r, the teacher's mass on tokens the student finds
# improbable, is the chance that the step falls back to the student.
#
# This notebook runs that loop by hand on one easy problem, with both models' KV caches, printing
# what happens at each step, then checks that rsdlib's batched `Decoder` emits the same tokens under
# the same seed.
#
# **Reads:** one benchmark problem (the copy shipped in rsdlib, or the hub with `source: hub`), the
# model pair. **Writes:** `figures/<profile>/walkthrough.{pdf,png}` and
# `figures/<profile>/walkthrough.{md,csv}` (a teaching figure and table, not in the paper).
#
# **Time:** smoke a few seconds; demo (embedded pair, CPU) about 1 min; paper pair on a GPU under a minute.

# %%
import matplotlib.pyplot as plt
import pandas as pd
import torch

from rsdlib.decoding import DecodingConfig, Decoder, draw_uniforms, sample_inverse_cdf, step_probs
from rsdlib.plots import profile_note, save_figure, set_style, write_table
from rsdlib.prompts import end_of_turn_ids, prompt_ids
from rsdlib.models import load_pair
from rsdlib.prompts import prompt_style
from rsdlib.data import select_problems

# %% tags=["parameters"]
profile: str = "demo"  # figures/<profile>
teacher: str = "embedded:teacher"  # teacher model spec (see notebook 10)
student: str = "embedded:student"  # student model spec
dtype: str = "auto"  # auto, float32, bfloat16
device: str = "auto"  # auto, cpu, cuda
benchmark: str = "math500"  # where the problem comes from (never GPQA)
source: str = "shipped"  # benchmark copy: shipped (pinned in rsdlib, sha256-checked; DATA.md) | hub (the hub dataset the paper used)
split_salt: str = "rsdlib-demo"  # the problem is the easiest of the trace half of this hash split
threshold: float = 0.1  # p_th (paper: 0.01); 10% so that a short excerpt shows a few rejections
temperature: float = 0.7  # sampling temperature of both models (paper: 0.7)
n_steps: int = 24  # tokens to generate
seed: int = 0  # seed of the step randomness
prompt: dict = {"style": "user-instruction", "extra_instruction": "Reason in words and equations only; do not write code.", "shots": ["FORMAT_SHOT"]}  # a named style of rsdlib.prompts.PROMPT_STYLES (the demo: Qwen math instruction in the user turn) and PromptStyle keys; a shot may name a constant of rsdlib.prompts (FORMAT_SHOT shows the embedded pair where the think delimiter goes)

# %%
if benchmark.lower().startswith("gpqa"):
    raise ValueError("the walkthrough prints its problem: GPQA questions must not be shown")
if not 0 <= threshold <= 1 or n_steps < 1 or temperature <= 0:
    raise ValueError("need 0 <= threshold <= 1, n_steps >= 1 and temperature > 0")
pair = load_pair(teacher, student, dtype=dtype, device=device)
tok = pair.student_tokenizer
problem = select_problems(benchmark, 1, pick="easiest", split="trace", split_salt=split_salt, skip_diagrams=True,
                          source=source)[0]
style = prompt_style(prompt)
prompt_student = prompt_ids(tok, problem, style)
stop = set(end_of_turn_ids(tok))
print(f"pair {pair.name}\nproblem {problem.id} (gold {problem.gold}):\n{problem.question}")

# %% [markdown]
# ## The loop by hand
# Each model keeps its own context (and cache): the student's in its ids, the teacher's through the
# vocabulary bridge. Each step draws two uniforms: one for the teacher's proposal, one for the
# student's fallback draw (rsdlib's convention, so the library's decoder can be checked against it).

# %%
cfg = DecodingConfig(mode="rsd", temperature=temperature, threshold=threshold, max_new_tokens=n_steps,
                     stop_ids=tuple(stop))
gen = torch.Generator().manual_seed(seed)
t_ctx_new, s_ctx_new = pair.bridge.student_to_teacher(prompt_student), list(prompt_student)
t_cache = s_cache = None
rows, emitted = [], []
with torch.no_grad():
    for step in range(n_steps):
        t_out = pair.teacher(input_ids=torch.tensor([t_ctx_new], device=pair.teacher.device),
                             past_key_values=t_cache, use_cache=True)
        s_out = pair.student(input_ids=torch.tensor([s_ctx_new], device=pair.student.device),
                             past_key_values=s_cache, use_cache=True)
        t_cache, s_cache = t_out.past_key_values, s_out.past_key_values
        probs = step_probs(t_out.logits[:, -1], s_out.logits[:, -1], pair.bridge, cfg)  # (1, V_s) each
        u = draw_uniforms(gen, 1, cfg.trials + 1)  # (1, 2)
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
steps = pd.DataFrame(rows)
print(tok.decode(emitted))
steps

# %% [markdown]
# ## The same seed through rsdlib's decoder
# The library's batched, cached decoder draws the same two uniforms per step from a generator with
# the same seed, so it should emit the same tokens (batched arithmetic can differ in the last bits,
# which can, rarely, flip a draw that sits exactly on a boundary).

# %%
trace = Decoder(pair.teacher, pair.student, pair.bridge, cfg).generate([prompt_student], [seed])[0]
agree = next((i for i, (a, b) in enumerate(zip(trace.token_ids, emitted)) if a != b), min(len(emitted), len(trace.token_ids)))
print(f"decoder and hand loop agree on the first {agree} of {len(emitted)} tokens; "
      f"decoder fallback rate {trace.fallback_rate:.1%}, hand loop {sum(r['decision'] != 'accept' for r in rows) / len(rows):.1%}")

# %%
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
fig.suptitle(f"RSD step by step on {problem.id}")
ax2.bar(steps["step"], steps["P(fallback)"], color="#9e9ac8")
ax2.set_ylabel("P(fallback)")
ax2.set_xlabel("step")
profile_note(profile, fig, extra=pair.name)
fig.tight_layout()
save_figure(fig, "walkthrough", profile)
plt.show()
write_table(rows[:30], "walkthrough", profile, digits=4,
            title=f"Walkthrough: the first RSD steps on {problem.id} (teaching table, not in the paper)",
            notes=[f"pair {pair.name}, T = {temperature}, p_th = {threshold:g}, seed {seed}.",
                   "P(fallback) = the teacher's probability mass on tokens whose student probability is "
                   "below p_th: the chance that the step falls back to the student."])
