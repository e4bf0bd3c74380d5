"""GPU check at the paper's shapes: rsdlib's own decoder and trainer on random-weight models (issue 18).

The paper's pair is an s1.1-7B teacher (the Qwen2.5-7B architecture) and a Qwen3-0.6B student
(Section 4.1). Their compute, memory and speed depend on the architecture, not on the weights, so
this script builds both from their configs alone (random weights, bf16, nothing downloaded) and
measures, with rsdlib's engine (``rsdlib.decoding.Decoder``, ``rsdlib.speculative``,
``rsdlib.train.train``):

- lockstep RSD, teacher-only and student-only decoding at batch 1, 16, 64 (halved on out-of-memory)
  with a prompt of ``--context`` tokens: tokens/s, ms per step, the share of a step spent outside the
  model forwards (sampling, bridging, synchronisation, bookkeeping), peak GPU memory;
- speculative RSD rounds for k = 2, 4, 8: the round time, the cost ratio c = student step / teacher
  step and the speed-up over teacher-only sampling implied at acceptance 0.6 / 0.7 / 0.8 (random
  weights make the real acceptance meaningless);
- one training step of the Qwen3-0.6B shape at block 8,192 with the paper profile's recipe
  (``params/paper/30_train.yaml``): tokens/s and peak memory;
- from these rates, the paper profile's GPU-hours per stage, with every assumption printed.

One Markdown table; each row is printed (and appended to ``--out``) as soon as it is measured, so a
run cut short still tells something. Needs only torch, transformers and accelerate (no gguf,
papermill, math-verify or plotting packages) and runs from the source tree::

    python benchmarks/gpu_check.py --out gpu_check.md          # CUDA, about 4-6 min on one H100/H200
    python benchmarks/gpu_check.py --tiny --out /tmp/check.md  # CPU, tiny shapes, seconds (CI runs it)

Timing: each model's forward is wrapped by hooks that synchronise the device at entry and exit, so
"ms/step" is the wall time between consecutive steps (after ``--warmup`` steps) and the forwards'
share of it is exact; a row stops after ``--steps`` steps or ``--row-seconds`` seconds. A row's
peak memory includes the weights of both models (both stay loaded while decoding).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import io
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from rsdlib.bridge import VocabBridge  # noqa: E402
from rsdlib.decoding import MAX_NEW_TOKENS, Decoder, DecodingConfig  # noqa: E402
from rsdlib.engine import ModelState, cache_capacity, compiled_forward, pad_id  # noqa: E402

# ----------------------------------------------------------------------------------------------
# The paper's shapes
# ----------------------------------------------------------------------------------------------
# Teacher: simplescaling/s1.1-7B, a fine-tune of Qwen/Qwen2.5-7B-Instruct: the values of that model's
# config.json (architecture Qwen2ForCausalLM; the 152,064 logit rows are the field notes' section 1).
TEACHER_SHAPE = {
    "model_type": "qwen2",
    "vocab_size": 152_064,
    "hidden_size": 3_584,
    "intermediate_size": 18_944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,  # head_dim = 3584 / 28 = 128
    "max_position_embeddings": 32_768,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "bos_token_id": 151_643,
    "eos_token_id": 151_645,
}
# Student: Qwen/Qwen3-0.6B, the values of its config.json (architecture Qwen3ForCausalLM).
STUDENT_SHAPE = {
    "model_type": "qwen3",
    "vocab_size": 151_936,
    "hidden_size": 1_024,
    "intermediate_size": 3_072,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40_960,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "bos_token_id": 151_643,
    "eos_token_id": 151_645,
}
# Vocabulary bridge of the pair without tokenizers: ids 0..151,664 are shared (the Qwen2.5 tokenizer's
# length, field notes s.1), the student-only ids carry the teacher spellings that
# VocabBridge.from_tokenizers finds with the real tokenizers (tests/test_bridge.py checks the equality).
SHARED_IDS = 151_665
STUDENT_ONLY = {
    151_665: [27, 14172, 9655, 29],  # <tool_response>
    151_666: [522, 14172, 9655, 29],  # </tool_response>
    151_667: [13708, 766, 29],  # <think>
    151_668: [522, 26865, 29],  # </think>
}
EOT_ID, PAD_ID = 151_645, 151_662  # <|im_end|>, <|fim_pad|> (the trainer's end-of-turn and pad tokens)

# --tiny: the same code path with tiny shapes (same kinds of model, a non-identity bridge)
TINY_TEACHER = {"model_type": "qwen2", "vocab_size": 640, "hidden_size": 64, "intermediate_size": 128,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "rope_theta": 1_000_000.0, "tie_word_embeddings": False, "eos_token_id": 540}
TINY_STUDENT = {"model_type": "qwen3", "vocab_size": 576, "hidden_size": 32, "intermediate_size": 64,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
                "rope_theta": 1_000_000.0, "tie_word_embeddings": True, "eos_token_id": 540}
TINY_SHARED, TINY_STUDENT_ONLY, TINY_EOT, TINY_PAD = 560, {560: [1, 2, 3], 561: [4, 5, 6]}, 540, 541

ACCEPTANCES = (0.6, 0.7, 0.8)  # draft acceptance rates at which speculative RSD's speed-up is reported


@dataclass
class Plan:
    """What to measure; the defaults are the GPU check, ``tiny()`` the CPU smoke run."""

    batches: tuple[int, ...] = (1, 16, 64)  # decoding batch sizes (halved on out-of-memory)
    context: int = 4_000  # prompt tokens: decoding runs at a context of context .. context + steps
    long_context: int = 8_000  # one more lockstep RSD row near the paper's 8,192-token context (0 = none)
    long_batch: int = 64  # its batch (the paper profile's trace batch), halved until it fits
    prefill_chunk: int = 1_024  # lockstep rows feed the prompt in chunks of this many tokens (ChunkedPrefillDecoder)
    warmup: int = 3  # decode steps after the prefill that are not timed
    steps: int = 32  # timed decode steps (or speculative rounds) per row
    row_seconds: float = 30.0  # time box of the timed steps of one row
    draft_tokens: tuple[int, ...] = (2, 4, 8)  # speculative RSD: k
    spec_batches: tuple[int, ...] = (1, 16, 64)  # speculative RSD: batch sizes
    train_block: int = 8_192  # training example length (paper: 8,192-token context)
    train_steps: int = 2  # timed optimizer steps (after one warm-up step)
    budget_s: float = 450.0  # rows that would start after this many seconds are skipped
    threshold: float = 0.01  # RSD's p_th (paper: 1%)
    temperature: float = 0.7  # paper: 0.7

    def __post_init__(self) -> None:
        if not self.batches or min(self.batches) < 1 or (self.spec_batches and min(self.spec_batches) < 1):
            raise ValueError(f"batch sizes must be >= 1: {self.batches}, {self.spec_batches}")
        if self.context < 2 or self.steps < 1 or self.warmup < 0 or self.row_seconds <= 0:
            raise ValueError("need context >= 2, steps >= 1, warmup >= 0, row_seconds > 0")
        if self.long_context < 0 or self.long_batch < 1 or self.prefill_chunk < 1:
            raise ValueError("need long_context >= 0, long_batch >= 1, prefill_chunk >= 1")
        if any(k < 1 for k in self.draft_tokens):
            raise ValueError(f"draft_tokens must be >= 1: {self.draft_tokens}")
        if self.train_block < 130 or self.train_steps < 1:
            raise ValueError("need train_block >= 130 and train_steps >= 1")

    @classmethod
    def tiny(cls) -> "Plan":
        return cls(batches=(1, 2, 4), context=48, long_context=96, long_batch=4, prefill_chunk=32, warmup=1, steps=4,
                   row_seconds=10.0, spec_batches=(1, 4), train_block=160, train_steps=1, budget_s=300.0)


# ----------------------------------------------------------------------------------------------
# Models from configs alone
# ----------------------------------------------------------------------------------------------
def build_model(shape: dict, dtype: torch.dtype, device: str):
    """A random-weight causal LM of ``shape`` (a config.json subset), created directly on ``device``."""
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen3Config

    spec = dict(shape)
    kind = spec.pop("model_type")
    spec["rope_parameters"] = {"rope_type": "default", "rope_theta": spec.pop("rope_theta")}
    config = {"qwen2": Qwen2Config, "qwen3": Qwen3Config}[kind](**spec)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


# ----------------------------------------------------------------------------------------------
# Timing: forward hooks that synchronise, and a time box
# ----------------------------------------------------------------------------------------------
class StopRow(Exception):
    """Raised from a forward pre-hook when a row has its steps (or its time is up): ends generate()."""


class StepClock:
    """Times every forward of ``models`` and the steps between forwards of the ``boundary`` model.

    A step (or speculative round) starts with a forward of the boundary model (the teacher, or the
    student in student-only mode); that model's first ``prefill_calls`` forwards are the prefill and
    start nothing. After ``warmup`` steps, ``steps`` steps are timed, then the next boundary forward
    raises StopRow.
    """

    def __init__(self, models: dict, boundary: str, warmup: int, steps: int, max_seconds: float,
                 prefill_calls: int = 1, compiled: bool = False):
        self.boundary, self.warmup, self.steps, self.max_seconds = boundary, warmup, steps, max_seconds
        self.prefill_calls = prefill_calls
        self.forwards: list[list] = []  # [model name, start, end] per forward, in call order
        self.step_starts: list[float] = []  # start of each decode forward of the boundary model
        self.calls = {name: 0 for name in models}
        self.device = next(iter(models.values())).device
        self.handles = []
        self.unwrap = []
        for name, model in models.items():
            self.handles.append(model.register_forward_pre_hook(functools.partial(self._pre, name)))
            self.handles.append(model.register_forward_hook(functools.partial(self._post, name)))
            if compiled:  # Decoder(compile=True) calls the compiled forward, which runs no module hooks: time it
                self._wrap_compiled(name, model)

    def _wrap_compiled(self, name, model) -> None:
        inner = compiled_forward(model)

        def timed(*args, **kwargs):
            self._pre(name, model, args)
            out = inner(*args, **kwargs)
            self._post(name, model, args, out)
            return out

        model._rsdlib_compiled_forward = timed
        self.unwrap.append((model, inner))

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _pre(self, name, module, args):
        now = self._now()
        self.calls[name] += 1
        if name == self.boundary and self.calls[name] > self.prefill_calls:  # a decode step begins
            timed = len(self.step_starts) - self.warmup - 1  # timed steps complete before this one
            if timed >= self.steps or (timed >= 2 and now - self.step_starts[self.warmup] > self.max_seconds):
                raise StopRow
            self.step_starts.append(now)
        self.forwards.append([name, now, None])

    def _post(self, name, module, args, output):
        self.forwards[-1][2] = self._now()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        for model, inner in self.unwrap:
            model._rsdlib_compiled_forward = inner

    def result(self) -> dict:
        """Mean step time, forward time per step per model, and the share of the step outside forwards."""
        starts = self.step_starts[self.warmup:]
        if len(starts) < 2:
            raise RuntimeError(f"only {len(starts)} timed step starts: too few to time a step")
        t0, t1, n = starts[0], starts[-1], len(starts) - 1
        inside = {name: 0.0 for name in self.calls}
        for name, start, end in self.forwards:
            if t0 <= start < t1 and end is not None:
                inside[name] += end - start
        return {"steps": n, "step_s": (t1 - t0) / n, "forward_s": {k: v / n for k, v in inside.items()},
                "outside": 1 - sum(inside.values()) / (t1 - t0)}


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def largest_fitting(measure, batch: int, fits=None):
    """Run ``measure(batch)``, halving the batch on CUDA out-of-memory: (result, batch used, batches that failed).

    ``fits(batch)``, when given, is a memory sizing checked first: a batch it rejects is halved without
    being run. The result is None when even batch 1 does not fit.
    """
    failed = []
    while batch >= 1 and fits is not None and not fits(batch):
        failed.append(batch)
        batch //= 2
    while batch >= 1:
        oom = False
        try:
            return measure(batch), batch, failed
        except RuntimeError as err:  # torch.cuda.OutOfMemoryError, or cuBLAS/cuDNN failing to allocate
            if not is_oom(err):
                raise
            oom = True  # clean up outside the except block, once the traceback's frames are gone
        if oom:
            failed.append(batch)
            free_memory()
            batch //= 2
    return None, None, failed


# ----------------------------------------------------------------------------------------------
# Decoding rows: rsdlib.decoding.Decoder (lockstep) and rsdlib.speculative (draft_tokens > 0)
# ----------------------------------------------------------------------------------------------
class ChunkedPrefillDecoder(Decoder):
    """rsdlib's Decoder, its prefill fed in chunks of ``chunk`` prompt tokens (equal-length prompts).

    Each chunk goes through the engine's own cached ``ModelState.feed``, so the state after the
    prefill (cache, mask, positions, logits) is the one a single prefill forward gives, and the
    decoding steps that follow are the engine's, unchanged. A long prompt then costs the memory of
    decoding at that context, as in trace generation (short prompts, long traces), instead of the
    activations of one forward over batch x context tokens.
    """

    chunk = 1024

    def prefill(self, model, rows):  # the Decoder's prefill hook (both models, lockstep and speculative)
        state = ModelState(model, pad_id(model))
        return state, _feed_chunked(state, rows, self.chunk)


def _feed_chunked(state, rows: list[list[int]], chunk: int):
    """Feed right-aligned rows chunk by chunk (a shorter row's first chunks are padding, masked)."""
    width = max(len(r) for r in rows)
    logits = None
    for i in range(0, width, chunk):
        parts = []
        for r in rows:
            offset = width - len(r)  # the row's first column
            parts.append(r[max(0, i - offset) : max(0, i + chunk - offset)])
        logits = state.feed(parts)
    return logits


def prefill_forwards(context: int, chunk: int) -> int:
    return -(-context // chunk)


def kv_bytes_per_token(shape: dict, dtype: torch.dtype = torch.bfloat16) -> int:
    """Keys and values of one token in every layer (bf16: s1.1-7B 57,344 B, Qwen3-0.6B 114,688 B; field notes s.9)."""
    from rsdlib.memory import kv_cache_bytes_per_token

    return kv_cache_bytes_per_token(shape, dtype)


def kv_buffer_positions(context: int, chunk: int, steps: int) -> int:
    """Positions the engine's KV buffer holds after a chunked prefill and ``steps`` one-token steps.

    rsdlib.engine grows a buffer in CACHE_CHUNK steps (never by doubling), so it holds the live
    context rounded up to a multiple of CACHE_CHUNK whatever the prefill ``chunk``.
    """
    return cache_capacity(context + steps)


def decode_row(teacher, student, bridge, mode: str, batch: int, plan: Plan, device: str, draft_tokens: int = 0,
               context: int | None = None, padded: bool = False, cache: str = "dynamic", compile: bool = False,
               max_new_tokens: int = MAX_NEW_TOKENS):
    """Time ``plan.steps`` steps (rounds, for speculative RSD) of the Decoder at a ``context``-token prompt.

    Lockstep rows use ChunkedPrefillDecoder; speculative rows the plain Decoder (rsdlib.speculative
    prefills in one forward per model). ``padded``: the real case of trace generation: prompts of
    lengths spread over context/2 .. context (left padding in every step's attention), twice as many as
    the batch, and 1/32 of the shared ids as stop ids (random weights: rows end after ~32 steps on
    average), so rows end at different steps and their slots are refilled; the timed steps include
    the refills' prefills. ``cache`` / ``compile``: the Decoder's KV cache and compiled forwards (lockstep);
    a compiled row's warm-up steps include the compilation (and CUDA graph capture). ``max_new_tokens``: the
    rows' budget (the timed steps end first); a static cache allocates, and attends over, prompt + budget.
    """
    context = plan.context if context is None else context
    stops = tuple(range(0, int(bridge.shared_mask.sum()), 32)) if padded else ()
    cfg = DecodingConfig(mode=mode, temperature=plan.temperature, top_p=1.0, threshold=plan.threshold,
                         max_new_tokens=max_new_tokens, draft_tokens=draft_tokens,
                         stop_ids=stops)  # the largest budget allowed: the timed steps end first
    models = {}
    if cfg.needs_teacher:
        models["teacher"] = teacher
    if cfg.needs_student:
        models["student"] = student
    gen = torch.Generator().manual_seed(batch)
    shared = int(bridge.shared_mask.sum())  # VocabBridge.shared_prefix: ids 0..shared-1
    prompts = torch.randint(0, shared, (batch, context), generator=gen).tolist()  # ids both models read
    if padded:
        lengths = torch.linspace(max(2, context // 2), context, 2 * batch).long().tolist()
        prompts = [torch.randint(0, shared, (n,), generator=gen).tolist() for n in lengths]
    if draft_tokens:
        decoder, prefill_calls = Decoder(models.get("teacher"), models.get("student"), bridge, cfg), 1
    else:
        decoder = ChunkedPrefillDecoder(models.get("teacher"), models.get("student"), bridge, cfg, cache=cache,
                                        compile=compile)
        decoder.chunk = plan.prefill_chunk
        prefill_calls = prefill_forwards(context, plan.prefill_chunk)
    free_memory()
    reset_peak(device)
    clock = StepClock(models, "student" if mode == "student" else "teacher", plan.warmup, plan.steps,
                      plan.row_seconds, prefill_calls, compiled=compile)
    start = time.perf_counter()
    try:
        decoder.generate(prompts, list(range(len(prompts))), batch_size=batch)
    except StopRow:
        pass
    finally:
        clock.remove()
    out = clock.result()
    out.update(batch=batch, peak_gib=peak_gib(device), wall_s=time.perf_counter() - start,
               tokens_per_s=batch / out["step_s"])
    return out


def tokens_per_round(acceptance: float, k: int) -> float:
    """Expected tokens one speculative round emits per row when each draft is accepted with probability a.

    rsdlib.speculative: drafts are accepted left to right until the first rejection, which emits one
    residual sample; a fully accepted round emits a bonus token. Tokens = accepted + 1, so
    E = sum_{i=0..k} a^i = (1 - a^(k+1)) / (1 - a).
    """
    if not 0 <= acceptance <= 1:
        raise ValueError(f"acceptance must be in [0, 1], got {acceptance}")
    return float(k + 1) if acceptance == 1 else (1 - acceptance ** (k + 1)) / (1 - acceptance)


def speculative_speedups(round_s: float, teacher_step_s: float, student_step_s: float, k: int,
                         acceptances=ACCEPTANCES) -> dict:
    """Speed-up of speculative RSD over teacher-only sampling at each acceptance rate.

    ``measured``: E(a, k) tokens per measured round against one teacher step per token,
    E * t_teacher / t_round. ``formula``: the README's cost model, a round = k + 1 student steps plus
    one teacher forward that costs one teacher step: E / ((k + 1) c + 1) with c = t_student / t_teacher.
    """
    c = student_step_s / teacher_step_s
    return {
        "c": c,
        "measured": {a: tokens_per_round(a, k) * teacher_step_s / round_s for a in acceptances},
        "formula": {a: tokens_per_round(a, k) / ((k + 1) * c + 1) for a in acceptances},
    }


# ----------------------------------------------------------------------------------------------
# Training row: rsdlib.train.train with the paper profile's recipe
# ----------------------------------------------------------------------------------------------
class IdTokenizer:
    """The few tokenizer calls rsdlib.train makes, for a model trained on token ids (no vocabulary file)."""

    def __init__(self, vocab_size: int, eot_id: int, pad_id: int):
        self.ids = {"<|im_end|>": eot_id, "<|fim_pad|>": pad_id}
        self.vocab_size, self.eos_token_id = vocab_size, eot_id
        self.unk_token = self.unk_token_id = None
        self.eos_token, self.pad_token = "<|im_end|>", None

    def convert_tokens_to_ids(self, token):
        return self.ids.get(token)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def pad_token_id(self):
        return self.ids.get(self.pad_token)


def paper_training_recipe() -> dict:
    """The TrainConfig keys of the paper profile (params/paper/30_train.yaml, ``training``)."""
    import yaml

    return dict(yaml.safe_load((REPO / "params" / "paper" / "30_train.yaml").read_text())["training"])


def train_row(shape: dict, plan: Plan, device: str, eot_id: int, pad_id: int) -> dict:
    """Time ``plan.train_steps`` optimizer steps (after one warm-up) of rsdlib.train.train, micro-batch 1."""
    from transformers import TrainerCallback

    from rsdlib.train import TrainConfig, train

    recipe = paper_training_recipe()
    steps = plan.train_steps
    times: list[float] = []

    def now():
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter()

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            times.append(now())

        def on_step_end(self, args, state, control, **kw):
            times.append(now())
            if state.global_step == steps + 1:  # stop before the last step: no final save
                control.should_training_stop = True

    free_memory()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(**{**recipe, "block_size": plan.train_block, "global_batch_size": 1, "micro_batch_size": 1,
                             "max_steps": steps + 2, "save_strategy": "no", "output_dir": tmp, "resume": False})
        model = build_model(shape, getattr(torch, cfg.model_dtype), device).train()
        gen = torch.Generator().manual_seed(0)
        examples = []
        for i in range(steps + 2):  # block_size tokens each: a 64-token prompt, a full completion ending the turn
            ids = torch.randint(0, min(eot_id, pad_id), (plan.train_block - 1,), generator=gen).tolist()  # ordinary ids
            examples.append({"id": f"gpu-check-{i}", "prompt_ids": ids[:64], "completion_ids": ids[64:] + [eot_id],
                             "kind": "full", "source": "gpu-check"})
        tok = IdTokenizer(shape["vocab_size"], eot_id, pad_id)
        reset_peak(device)
        with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its log dicts: keep the table clean
            train(cfg, examples, tokenizer=tok, model=model, callbacks=[Timer()])
    step_s = [times[i + 1] - times[i] for i in range(0, len(times) - 1, 2)][1:]  # drop the warm-up step
    del model
    return {"step_s": sum(step_s) / len(step_s), "steps": len(step_s),
            "tokens_per_s": plan.train_block * len(step_s) / sum(step_s),
            "peak_gib": peak_gib(device), "config": cfg}


# ----------------------------------------------------------------------------------------------
# The paper profile's GPU-hours from the measured rates
# ----------------------------------------------------------------------------------------------
@dataclass
class PaperScale:
    """What the paper profile's work depends on besides params/paper/*.yaml (each printed under the table)."""

    s1k_problems: int = 1_000  # s1K problems (Section 4.1; the paper profile's n_problems: 0 = all)
    teacher_solved: int = 234  # problems the teacher solves, which the other methods then attempt (Table 2: /234)
    mean_sample_tokens: float = 5_000.0  # mean generated tokens per trace sample (budget 7,168; assumed)
    full_examples: int = 180  # full traces per training set (Table 2: RSD 1% solves 180/234)
    prefix_example_tokens: float = 300.0  # a UPFT example: prompt (~170 tokens, assumed) + 128-token prefix
    eval_mean_tokens: float = 4_000.0  # mean generated tokens per evaluation sample (budgets 8k / 16k; assumed)
    readme_lockstep_tokens: float = 185e6  # the README's earlier estimate (field notes s.9)
    readme_student_tokens: float = 256e6


def _yaml(name: str) -> dict:
    """The paper profile's parameters of notebook ``name``: the notebook's defaults (its parameters cell), then
    what params/paper/<name>.yaml changes (as rsdlib.reproduce.resolved_params, without that module's imports)."""
    import ast

    import yaml

    source = (REPO / "notebooks" / f"{name}.py").read_text()
    cell = source.split('# %% tags=["parameters"]\n', 1)[1].split("\n# %%", 1)[0]
    defaults = {node.target.id: ast.literal_eval(node.value) for node in ast.parse(cell).body}
    path = REPO / "params" / "paper" / f"{name}.yaml"
    return {**defaults, **((yaml.safe_load(path.read_text()) or {}) if path.is_file() else {})}


def paper_work(scale: PaperScale) -> dict:
    """Token counts of each stage of the paper profile, from params/paper/*.yaml and ``scale``."""
    traces, training, multistep, evaluation = (_yaml(n) for n in ("10_generate_traces", "30_train", "35_multistep",
                                                                  "40_evaluate"))
    job = traces["job"]
    lockstep_samples = student_samples = 0
    for name, spec in traces["methods"].items():
        n = spec.get("samples_per_problem", job["samples_per_problem"])
        every_problem = name == "teacher" or not traces["restrict_to_teacher_solved"]
        problems = scale.s1k_problems if every_problem else scale.teacher_solved
        if spec["mode"] == "student":
            student_samples += n * problems
        else:  # rsd, skd, and teacher: the trace job records the student's probabilities (record_both)
            lockstep_samples += n * problems
    for extra in traces.get("extra_pairs", {}).values():  # other pairs, counted at the main pair's rate
        lockstep_samples += len(extra["methods"]) * job["samples_per_problem"] * scale.teacher_solved
        if extra["teacher"] != traces["teacher"]:  # a pair of another teacher runs that teacher's own teacher method
            lockstep_samples += job["samples_per_problem"] * scale.s1k_problems
    full_tokens = scale.full_examples * scale.mean_sample_tokens
    prefix_tokens = (scale.teacher_solved - scale.full_examples) * scale.prefix_example_tokens
    runs = len(training["methods"]) + sum(len(v) for v in training.get("extra_runs", {}).values())
    train_tokens = runs * training["training"]["epochs"] * (full_tokens + prefix_tokens)
    cycles = multistep["cycles"]  # cycle 1 reuses notebook 10's traces; every cycle trains
    multistep_lockstep = (cycles - 1) * job["samples_per_problem"] * scale.teacher_solved * scale.mean_sample_tokens
    multistep_train = cycles * multistep["training"]["epochs"] * (full_tokens + prefix_tokens)
    ev = evaluation["evaluation"]
    sizes = {"aime24": 30, "aime25": 30, "gpqa_diamond": 198, "math500": 500}  # benchmark sizes
    per_model = sum(sizes[b] * ev["samples"][b] for b in ev["benchmarks"])
    n_models = len(evaluation["models"]) + len(evaluation.get("extra_models", {}))
    return {
        "lockstep_samples": lockstep_samples, "student_samples": student_samples,
        "lockstep_tokens": lockstep_samples * scale.mean_sample_tokens,
        "student_tokens": student_samples * scale.mean_sample_tokens,
        "train_runs": runs, "train_tokens": train_tokens, "epochs": training["training"]["epochs"],
        "multistep_lockstep_tokens": multistep_lockstep, "multistep_train_tokens": multistep_train, "cycles": cycles,
        "eval_models": n_models, "eval_samples": n_models * per_model,
        "eval_tokens": n_models * per_model * scale.eval_mean_tokens, "trace_batch": job["batch_size"],
    }


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------
COLUMNS = ("row", "batch", "context", "tok/s", "ms/step", "outside fwd", "peak GiB", "detail")


class Table:
    """Prints each row as it comes and appends it to ``out`` (flushed), so a cut-off run keeps its rows."""

    def __init__(self, out: Path | None):
        self.out = out
        self.rows: list[dict] = []
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("")

    def line(self, text: str = "") -> None:
        print(text, flush=True)
        if self.out is not None:
            with self.out.open("a", encoding="utf-8") as fh:
                fh.write(text + "\n")

    def header(self) -> None:
        self.line("| " + " | ".join(COLUMNS) + " |")
        self.line("|---|---:|---:|---:|---:|---:|---:|---|")

    def row(self, name: str, *, batch="-", context="-", tps=None, ms=None, outside=None, peak=None, detail="") -> None:
        cells = {"row": name, "batch": batch, "context": context, "tok/s": _num(tps), "ms/step": _num(ms),
                 "outside fwd": "-" if outside is None else f"{100 * outside:.1f}%", "peak GiB": _num(peak),
                 "detail": detail.replace("|", "/")}
        self.rows.append(cells)
        self.line("| " + " | ".join(str(cells[c]) for c in COLUMNS) + " |")


class BudgetSpent(BaseException):
    """The hard ``--budget-s`` alarm: ends the run where it is (the rows so far are printed and written)."""


def guarded(table: "Table", name: str, measure) -> None:
    """Run one row's ``measure()``; an error becomes that row's 'failed' line instead of ending the table."""
    try:
        measure()
    except BudgetSpent:
        raise
    except Exception as err:  # noqa: BLE001 (every row reports its own failure)
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        table.row(name, detail=f"failed: {type(err).__name__}: {first}"[:300])
        free_memory()


def _num(x) -> str:
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}" if x >= 1 else f"{x:.3f}"


def _batch_note(requested: int, used: int | None, failed: list[int]) -> str:
    if not failed:
        return str(used)
    tried = ", ".join(map(str, failed))  # out of memory, or rejected by the memory sizing
    return f"{used} ({tried} did not fit)" if used else f"none ({tried} did not fit)"


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------
def run(plan: Plan, tiny: bool, out: Path | None, scale: PaperScale) -> Table:
    started = time.perf_counter()
    device = "cpu" if tiny else "cuda"
    dtype = torch.float32 if tiny else torch.bfloat16
    t_shape, s_shape = (TINY_TEACHER, TINY_STUDENT) if tiny else (TEACHER_SHAPE, STUDENT_SHAPE)
    shared, only = (TINY_SHARED, TINY_STUDENT_ONLY) if tiny else (SHARED_IDS, STUDENT_ONLY)
    eot_id, pad_id = (TINY_EOT, TINY_PAD) if tiny else (EOT_ID, PAD_ID)
    table = Table(out)
    import transformers

    gpu = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    table.line(f"# rsdlib GPU check{' (--tiny)' if tiny else ''}")
    table.line()
    table.line(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC · {gpu} · "
               f"torch {torch.__version__} · transformers {transformers.__version__} · "
               f"{str(dtype).removeprefix('torch.')} · random weights")
    table.line()
    teacher_shape = "s1.1-7B shape (Qwen2.5-7B: 28 layers, hidden 3,584, 28 heads / 4 KV, 152,064 rows)"
    student_shape = "Qwen3-0.6B shape (28 layers, hidden 1,024, 16 heads / 8 KV, head_dim 128, 151,936 rows, tied)"
    table.line(f"Teacher: {'tiny Qwen2' if tiny else teacher_shape}; "
               f"student: {'tiny Qwen3' if tiny else student_shape}; "
               f"bridge: ids 0..{shared - 1:,} shared, {len(only)} student-only ids. Decoding: T = {plan.temperature}, "
               f"p_th = {plan.threshold}, prompt {plan.context:,} tokens, {plan.warmup} untimed + up to "
               f"{plan.steps} timed steps (time box {plan.row_seconds:g} s). 'outside fwd': share of a step spent "
               f"outside the model forwards.")
    table.line()
    t0 = time.perf_counter()
    teacher = build_model(t_shape, dtype, device)
    student = build_model(s_shape, dtype, device)
    bridge = VocabBridge.shared_prefix(t_shape["vocab_size"], s_shape["vocab_size"], shared, only)
    n_t, n_s = (sum(p.numel() for p in m.parameters()) / 1e6 for m in (teacher, student))
    table.line(f"Models built in {time.perf_counter() - t0:.1f} s: teacher {n_t:,.2f}M, "
               f"student {n_s:,.2f}M parameters.")
    table.line()
    table.header()

    def over_budget(name: str, reserve: float = 0.0) -> bool:
        """True (and a 'skipped' row) when the row would start after the budget, less ``reserve`` seconds."""
        if time.perf_counter() - started > plan.budget_s - reserve:
            table.row(name, detail=f"skipped: the {plan.budget_s:g} s budget is spent")
            return True
        return False

    # warm-up: kernels, allocator, the bridge's device masks
    for mode in ("rsd", "student"):
        tiny_plan = Plan(**{**asdict(plan), "context": 16, "warmup": 0, "steps": 2})
        decode_row(teacher, student, bridge, mode, 1, tiny_plan, device)

    weights = sum(p.numel() * p.element_size() for m in (teacher, student) for p in m.parameters())
    total = torch.cuda.get_device_properties(0).total_memory if device == "cuda" else None

    def sizing(mode: str, context: int, chunk: int, new_tokens: int):
        """(KV buffer positions, bytes of one row's caches, fits(batch)): the memory sizing of a row."""
        positions = kv_buffer_positions(context, chunk, new_tokens)
        per_token = ((kv_bytes_per_token(t_shape) if mode != "student" else 0)
                     + (kv_bytes_per_token(s_shape) if mode != "teacher" else 0))
        row_bytes = positions * per_token
        return positions, row_bytes, ((lambda b: weights + b * row_bytes < 0.95 * total) if total else None)

    # 1. lockstep RSD, teacher-only, student-only
    decoded: dict[tuple[str, int], dict] = {}
    for batch in plan.batches:
        for mode in ("rsd", "teacher", "student"):
            name = {"rsd": "decode: lockstep RSD", "teacher": "decode: teacher only",
                    "student": "decode: student only"}[mode]
            if over_budget(name):
                continue

            def measure(mode=mode, batch=batch, name=name):
                fits = sizing(mode, plan.context, plan.prefill_chunk, plan.warmup + plan.steps + 1)[2]
                res, used, failed = largest_fitting(
                    lambda b: decode_row(teacher, student, bridge, mode, b, plan, device), batch, fits)
                if res is None:
                    table.row(name, batch=_batch_note(batch, used, failed), detail="out of memory at every batch size")
                    return
                decoded[(mode, batch)] = res
                fwd = ", ".join(f"{m} {1000 * s:.1f} ms" for m, s in res["forward_s"].items())
                grown = plan.context + plan.warmup + res["steps"]
                table.row(name, batch=_batch_note(batch, used, failed), context=f"{plan.context:,}-{grown:,}",
                          tps=res["tokens_per_s"], ms=1000 * res["step_s"], outside=res["outside"],
                          peak=res["peak_gib"], detail=f"{res['steps']} timed steps; forward per step: {fwd}")

            guarded(table, name, measure)

    # 1a. lockstep RSD on padded rows: prompts of different lengths, rows ending at different steps, refills
    for batch in plan.batches[-1:]:
        name = "decode: lockstep RSD, padded rows + refills"
        if over_budget(name):
            continue

        def measure_padded(batch=batch, name=name):
            fits = sizing("rsd", plan.context, plan.prefill_chunk, plan.warmup + plan.steps + 1)[2]
            res, used, failed = largest_fitting(
                lambda b: decode_row(teacher, student, bridge, "rsd", b, plan, device, padded=True), batch, fits)
            if res is None:
                table.row(name, batch=_batch_note(batch, used, failed), detail="out of memory at every batch size")
                return
            fwd = ", ".join(f"{m} {1000 * s:.1f} ms" for m, s in res["forward_s"].items())
            table.row(name, batch=_batch_note(batch, used, failed), context=f"{plan.context // 2:,}-{plan.context:,}",
                      tps=res["tokens_per_s"], ms=1000 * res["step_s"], outside=res["outside"], peak=res["peak_gib"],
                      detail=f"{res['steps']} timed steps (refill prefills included); forward per step: {fwd}; "
                             f"{2 * used} prompts of {plan.context // 2:,}-{plan.context:,} tokens")

        guarded(table, name, measure_padded)

    # 1a'. the same on the static KV cache, eager and compiled (Decoder(cache="static"), Decoder(compile=True)),
    # at the paper's trace budget (the static buffers hold, and every step attends over, prompt + budget)
    budget = 4 * plan.steps if tiny else int(_yaml("10_generate_traces")["decoding"]["max_new_tokens"])
    for batch in plan.batches[-1:]:
        for label, options in (("static cache", {"cache": "static"}), ("compiled", {"compile": True})):
            name = f"decode: lockstep RSD, padded rows + refills, {label}"
            if over_budget(name):
                continue

            def measure_static(batch=batch, name=name, options=options):
                fits = sizing("rsd", plan.context, plan.prefill_chunk, plan.warmup + plan.steps + 1)[2]
                res, used, failed = largest_fitting(
                    lambda b: decode_row(teacher, student, bridge, "rsd", b, plan, device, padded=True,
                                         max_new_tokens=budget, **options), batch, fits)
                if res is None:
                    table.row(name, batch=_batch_note(batch, used, failed), detail="out of memory at every batch size")
                    return
                fwd = ", ".join(f"{m} {1000 * s:.1f} ms" for m, s in res["forward_s"].items())
                table.row(name, batch=_batch_note(batch, used, failed),
                          context=f"{plan.context // 2:,}-{plan.context:,}", tps=res["tokens_per_s"],
                          ms=1000 * res["step_s"], outside=res["outside"], peak=res["peak_gib"],
                          detail=f"{res['steps']} timed steps; forward per step: {fwd}; buffers of prompt + "
                                 f"{budget:,} new tokens; row wall {res['wall_s']:.0f} s (compilation included)")

            guarded(table, name, measure_static)

    # 1b. lockstep RSD near the paper's context limit, at the paper profile's trace batch (memory sizing)
    def measure_long():
        name = "decode: lockstep RSD, long context"
        positions, row_bytes, fits = sizing("rsd", plan.long_context, plan.prefill_chunk, plan.warmup + plan.steps + 1)
        res, used, failed = largest_fitting(
            lambda b: decode_row(teacher, student, bridge, "rsd", b, plan, device, context=plan.long_context),
            plan.long_batch, fits)
        if res is None:
            table.row(name, batch=_batch_note(plan.long_batch, used, failed),
                      detail="out of memory at every batch size")
        else:
            fwd = ", ".join(f"{m} {1000 * s:.1f} ms" for m, s in res["forward_s"].items())
            table.row(name, batch=_batch_note(plan.long_batch, used, failed),
                      context=f"{plan.long_context:,}-{plan.long_context + plan.warmup + res['steps']:,}",
                      tps=res["tokens_per_s"], ms=1000 * res["step_s"], outside=res["outside"], peak=res["peak_gib"],
                      detail=f"{res['steps']} timed steps; forward per step: {fwd}; KV buffers hold {positions:,} "
                             f"positions per row (grown in CACHE_CHUNK steps): {row_bytes / 2**30:.2f} GiB per "
                             f"row, {plan.long_batch * row_bytes / 2**30:.1f} GiB for {plan.long_batch} rows, "
                             f"plus {weights / 2**30:.1f} GiB of weights")

    if plan.long_context and not over_budget("decode: lockstep RSD, long context"):
        guarded(table, "decode: lockstep RSD, long context", measure_long)

    # 2. speculative RSD rounds against teacher-only steps of the same batch
    for batch in plan.spec_batches:
        for k in plan.draft_tokens:
            name = f"speculative RSD k={k}"
            if over_budget(name, reserve=plan.budget_s / 8):  # keep time for the training row
                continue

            def measure_spec(batch=batch, k=k, name=name):
                # speculative prefill: prompt[:-1] in one forward; then up to k+1 tokens a round
                fits = sizing("rsd", plan.context - 1, plan.context - 1, (plan.warmup + plan.steps + 1) * (k + 1))[2]
                res, used, failed = largest_fitting(
                    lambda b: decode_row(teacher, student, bridge, "rsd", b, plan, device, draft_tokens=k), batch, fits)
                if res is None:
                    table.row(name, batch=_batch_note(batch, used, failed), detail="out of memory at every batch size")
                    return
                ref = {m: decoded.get((m, batch)) for m in ("teacher", "student", "rsd")}
                detail = f"{res['steps']} timed rounds of k+1 = {k + 1} student steps + 1 teacher forward of k+1 tokens"
                tps = None
                if ref["teacher"] and ref["student"] and ref["teacher"]["batch"] == used == ref["student"]["batch"]:
                    sp = speculative_speedups(res["step_s"], ref["teacher"]["step_s"], ref["student"]["step_s"], k)
                    tps = used * tokens_per_round(0.7, k) / res["step_s"]
                    fmt = lambda d: "/".join(f"{v:.2f}x" for v in d.values())  # noqa: E731
                    detail += (f"; round = {res['step_s'] / ref['teacher']['step_s']:.2f} teacher steps; "
                               f"c = {sp['c']:.3f}; "
                               f"speed-up vs teacher at a = {'/'.join(map(str, ACCEPTANCES))}: {fmt(sp['measured'])} "
                               f"(cost model E/((k+1)c+1): {fmt(sp['formula'])})")
                    if ref["rsd"] and ref["rsd"]["batch"] == used:
                        vs_rsd = {a: tokens_per_round(a, k) * ref["rsd"]["step_s"] / res["step_s"] for a in ACCEPTANCES}
                        detail += f"; vs lockstep RSD: {fmt(vs_rsd)}"
                    detail += "; tok/s and ms/step: at a = 0.7, per round"
                else:
                    detail += "; no teacher/student rows at this batch to compare with"
                grown = plan.context + (plan.warmup + res["steps"]) * (k + 1)  # at most: every draft accepted
                table.row(name, batch=_batch_note(batch, used, failed), context=f"{plan.context:,}-{grown:,}",
                          tps=tps, ms=1000 * res["step_s"], outside=res["outside"], peak=res["peak_gib"], detail=detail)

            guarded(table, name, measure_spec)

    # 3. one training step of the student shape (a fresh model in the recipe's dtype; the decoding pair is freed)
    teacher = student = None  # frees the decoding pair (the lambdas above close over these names)
    free_memory()
    trained = None
    if not over_budget("train: student, full fine-tuning"):
        try:
            trained = train_row(s_shape, plan, device, eot_id, pad_id)
        except Exception as err:  # noqa: BLE001 (the row reports its own failure)
            trained = None
            detail = "out of memory" if is_oom(err) else f"failed: {type(err).__name__}: {err}"[:300]
            table.row("train: student, full fine-tuning", context=f"{plan.train_block:,}", detail=detail)
            free_memory()
        if trained is not None:
            cfg = trained["config"]
            table.row("train: student, full fine-tuning", batch="1", context=f"{plan.train_block:,}",
                      tps=trained["tokens_per_s"], ms=1000 * trained["step_s"], peak=trained["peak_gib"],
                      detail=f"rsdlib.train, params/paper/30_train.yaml recipe: {cfg.model_dtype} weights, "
                             f"bf16 autocast {cfg.use_bf16()}, gradient checkpointing {cfg.gradient_checkpointing}, "
                             f"AdamW; optimizer step per example; {trained['steps']} timed steps")

    # 4. the paper profile's GPU-hours from these rates
    work = paper_work(scale)
    pick = lambda mode: max((r for (m, b), r in decoded.items() if m == mode and r["batch"] <= work["trace_batch"]),  # noqa: E731
                            key=lambda r: r["batch"], default=None)
    rsd, stud = pick("rsd"), pick("student")
    hours = {}
    if rsd and stud:
        r_l, r_s = rsd["tokens_per_s"], stud["tokens_per_s"]
        hours["traces"] = (work["lockstep_tokens"] / r_l + work["student_tokens"] / r_s) / 3600
        table.row("GPU-hours: traces (10)", batch=rsd["batch"], tps=r_l,
                  detail=f"{hours['traces']:.0f} h: {work['lockstep_tokens'] / 1e6:.0f}M lockstep tokens "
                         f"({work['lockstep_samples']:,} samples) at {r_l:,.0f} tok/s + "
                         f"{work['student_tokens'] / 1e6:.0f}M student-only ({work['student_samples']:,} samples) "
                         f"at {r_s:,.0f} tok/s (batch {stud['batch']})")
        readme_h = (scale.readme_lockstep_tokens / r_l + scale.readme_student_tokens / r_s) / 3600
        table.row("GPU-hours: traces, README's counts", batch=rsd["batch"], tps=r_l,
                  detail=f"{readme_h:.0f} h for {scale.readme_lockstep_tokens / 1e6:.0f}M lockstep + "
                         f"{scale.readme_student_tokens / 1e6:.0f}M student-only tokens (README estimate: ~135 h "
                         f"at an assumed 640 / 1,300 tok/s)")
        hours["multistep traces"] = work["multistep_lockstep_tokens"] / r_l / 3600
        hours["evaluation"] = work["eval_tokens"] / r_s / 3600
        table.row("GPU-hours: evaluation (40), HF decoder", batch=stud["batch"], tps=r_s,
                  detail=f"{hours['evaluation']:.0f} h: {work['eval_models']} models x "
                         f"{work['eval_samples'] // work['eval_models']:,} "
                         f"samples x {scale.eval_mean_tokens:,.0f} tokens at the student-only rate (an upper bound: "
                         f"vLLM is the paper profile's backend; the 1-1.7B students are slower)")
    if trained is not None:
        r_t = trained["tokens_per_s"]
        hours["training"] = work["train_tokens"] / r_t / 3600
        hours["multistep training"] = work["multistep_train_tokens"] / r_t / 3600
        table.row("GPU-hours: training (30)", batch=1, tps=r_t,
                  detail=f"{hours['training']:.1f} h: {work['train_runs']} runs x {work['epochs']} epochs x "
                         f"{(work['train_tokens'] / work['train_runs'] / work['epochs']) / 1e6:.2f}M tokens")
    if "multistep traces" in hours and "multistep training" in hours:
        h = hours["multistep traces"] + hours["multistep training"]
        table.row("GPU-hours: multi-step RSD (35)", detail=f"{h:.0f} h: {work['cycles'] - 1} new RSD trace jobs "
                  f"({work['multistep_lockstep_tokens'] / 1e6:.0f}M lockstep tokens) + {work['cycles']} trainings")
    if hours:
        table.row("GPU-hours: total", detail=f"{sum(hours.values()):.0f} h on one GPU of this kind")
    table.line()
    table.line(f"Assumptions of the GPU-hours rows (params/paper/*.yaml for the rest): {asdict(scale)}. Rates: the "
               f"largest measured batch up to the paper profile's trace batch ({work['trace_batch']}), at a context "
               f"of {plan.context:,} tokens (a trace's context grows from the prompt to ~7k); prefills and refills "
               "not counted. The teacher-only trace job runs the student too (it records P_s: record_both), so it "
               "is counted at the lockstep rate; the extra pairs (Llama 8B/1B, s1.1-7B/Qwen3-1.7B) at the main "
               "pair's rate (their students are larger). Training: tokens/s of micro-batch 1 at the full "
               f"{plan.train_block:,}-token block with an optimizer step per example (the paper's accumulation over 16 "
               "examples steps less often; shorter examples cost slightly less per token).")
    table.line(f"Total wall time {time.perf_counter() - started:.0f} s.")
    return table


def main(argv=None) -> int:
    from rsdlib.versions import preflight

    preflight(out=sys.stderr)  # versions of torch..vllm, CUDA runtime, driver (stderr: stdout is the table)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--out", type=Path, help="also write the table (Markdown), row by row, to this file, or to "
                    "gpu_check.md in this folder (an existing folder, or a path without a suffix)")
    ap.add_argument("--tiny", action="store_true",
                    help="tiny shapes on CPU in seconds (the same code path; CI runs it)")
    ap.add_argument("--batches", type=int, nargs="+", help="decoding batch sizes (default 1 16 64)")
    ap.add_argument("--context", type=int, help="prompt tokens (default 4000)")
    ap.add_argument("--steps", type=int, help="timed steps per row (default 32)")
    ap.add_argument("--row-seconds", type=float, help="time box of one row's timed steps (default 30)")
    ap.add_argument("--draft-tokens", type=int, nargs="*", help="speculative RSD k values (default 2 4 8)")
    ap.add_argument("--spec-batches", type=int, nargs="*", help="speculative RSD batch sizes (default 1 16 64)")
    ap.add_argument("--train-block", type=int, help="training block size (default 8192)")
    ap.add_argument("--budget-s", type=float, help="skip rows that would start after this many seconds, and stop the "
                    "run outright 30 s later (default 450: the whole run stays under 8 minutes)")
    ap.add_argument("--mean-sample-tokens", type=float, help="GPU-hours: mean tokens per trace sample (default 5000)")
    args = ap.parse_args(argv)
    plan = Plan.tiny() if args.tiny else Plan()
    overrides = {"batches": args.batches, "context": args.context, "steps": args.steps, "row_seconds": args.row_seconds,
                 "draft_tokens": args.draft_tokens, "spec_batches": args.spec_batches,
                 "train_block": args.train_block, "budget_s": args.budget_s}
    plan = Plan(**{**asdict(plan), **{k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items()
                                      if v is not None}})
    scale = PaperScale() if args.mean_sample_tokens is None else PaperScale(mean_sample_tokens=args.mean_sample_tokens)
    if not args.tiny and not torch.cuda.is_available():
        ap.error("no CUDA device: the check measures the paper's shapes on a GPU (use --tiny for the CPU smoke run)")
    if args.tiny:
        torch.set_num_threads(min(torch.get_num_threads(), 2))
    out = args.out
    if out is not None and (out.is_dir() or not out.suffix):
        out = out / "gpu_check.md"
    hard = plan.budget_s + HARD_MARGIN_S
    previous = signal.signal(signal.SIGALRM, _budget_alarm)
    signal.setitimer(signal.ITIMER_REAL, hard)
    try:
        run(plan, args.tiny, out, scale)
    except BudgetSpent:
        line = f"\nStopped: the hard budget of {hard:g} s (--budget-s {plan.budget_s:g} + {HARD_MARGIN_S} s) is spent."
        print(line, flush=True)
        if out is not None:
            with out.open("a", encoding="utf-8") as fh:
                fh.write(line + "\n")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return 0


HARD_MARGIN_S = 30  # the run is stopped this long after --budget-s (a row that started in time may finish)


def _budget_alarm(signum, frame):
    raise BudgetSpent


if __name__ == "__main__":
    raise SystemExit(main())
