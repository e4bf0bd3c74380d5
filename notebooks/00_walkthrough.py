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

from rsdlib.data import select_problems
from rsdlib.decoding import DecodingConfig
from rsdlib.models import load_pair
from rsdlib.plots import profile_note, save_figure, write_table
from rsdlib.prompts import end_of_turn_ids, prompt_ids, prompt_style
from rsdlib.walkthrough import check_walkthrough_params, compare_with_decoder, hand_loop, plot_walkthrough

# %% tags=["parameters"]
profile: str = "demo"  # figures/<profile>
teacher: str = "embedded:teacher"  # teacher model spec (see notebook 10)
student: str = "embedded:student"  # student model spec
dtype: str = "auto"  # auto, float32, bfloat16
device: str = "auto"  # auto, cpu, cuda
benchmark: str = "math500"  # where the problem comes from (never GPQA)
source: str = "shipped"  # benchmark copy: shipped (pinned in rsdlib, sha256-checked; DATA.md) | hub (the paper's)
split_salt: str = "rsdlib-demo"  # the problem is the easiest of the trace half of this hash split
threshold: float = 0.1  # p_th (paper: 0.01); 10% so that a short excerpt shows a few rejections
temperature: float = 0.7  # sampling temperature of both models (paper: 0.7)
n_steps: int = 24  # tokens to generate
seed: int = 0  # seed of the step randomness
prompt: dict = {
    # a named style of rsdlib.prompts.PROMPT_STYLES (the demo: Qwen math instruction in the user turn), then
    # PromptStyle keys; a shot may name a constant of rsdlib.prompts (FORMAT_SHOT shows the embedded pair
    # where the think delimiter goes)
    "style": "user-instruction", "extra_instruction": "Reason in words and equations only; do not write code.",
    "shots": ["FORMAT_SHOT"],
}  # prompt style and PromptStyle keys (see above)

# %%
check_walkthrough_params(benchmark, threshold, n_steps, temperature, profile=profile)
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
rows, emitted = hand_loop(pair, prompt_student, cfg, seed)
steps = pd.DataFrame(rows)
print(tok.decode(emitted))
steps

# %% [markdown]
# ## The same seed through rsdlib's decoder
# The library's batched, cached decoder draws the same two uniforms per step from a generator with
# the same seed, so it should emit the same tokens (batched arithmetic can differ in the last bits,
# which can, rarely, flip a draw that sits exactly on a boundary).

# %%
print(compare_with_decoder(pair, prompt_student, cfg, seed, rows, emitted))

# %%
fig = plot_walkthrough(steps, threshold, f"RSD step by step on {problem.id}")
profile_note(profile, fig, extra=pair.name)
fig.tight_layout()
save_figure(fig, "walkthrough", profile)
plt.show()
write_table(rows[:30], "walkthrough", profile, digits=4,
            title=f"Walkthrough: the first RSD steps on {problem.id} (teaching table, not in the paper)",
            notes=[f"pair {pair.name}, T = {temperature}, p_th = {threshold:g}, seed {seed}.",
                   "P(fallback) = the teacher's probability mass on tokens whose student probability is "
                   "below p_th: the chance that the step falls back to the student."])
