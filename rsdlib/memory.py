"""KV-cache memory of lockstep decoding, and the batch that fits (paper scale: Section 4.1, field notes s.9).

RSD (Algorithm 1) keeps a KV cache for the teacher AND for the student, one row per sequence, each
row as wide as the batch's longest context. At the paper's shapes (bf16) the cache costs per token

    s1.1-7B (Qwen2.5-7B: 28 layers x 4 KV heads x 128)     57,344 bytes
    Qwen3-0.6B (28 layers x 8 KV heads x 128)             114,688 bytes

so ``batch_size: 64`` at an 8k context needs 64 x 8,192 x 172,032 bytes = 90.2 GB (84 GiB) of cache
for the pair, more than an 80 GB card holds beside the weights. The decoder therefore sizes its batch
from the memory it may use (``plan_batch``): the free device memory on CUDA (``torch.cuda.mem_get_info``
plus the allocator's cached-but-unused bytes, times ``FREE_MEMORY_FRACTION`` to leave room for
activations and logits) and/or an explicit ``max_cache_gib``, and never more than the batch asked for.

Everything here is a pure function of model configs, dtypes and numbers (plus one query of the device),
importing only torch, so a GPU benchmark script can use it without the rest of rsdlib.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch

GIB = 2**30
FREE_MEMORY_FRACTION = 0.9  # share of free CUDA memory the KV cache may take (the rest: activations, logits)
_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}


def dtype_bytes(dtype: torch.dtype | str) -> int:
    """Bytes per element of a torch dtype or its name ("bfloat16", "bf16", "torch.float16", ...)."""
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        value = getattr(torch, _DTYPE_ALIASES.get(name, name), None)
        if not isinstance(value, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r} "
                             "(give a resolved dtype such as 'bfloat16' or 'float32', not 'auto')")
        dtype = value
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype or its name, got {type(dtype).__name__}")
    return torch.empty((), dtype=dtype).element_size()


def _text_config(config: Any) -> Any:
    """The decoder part of a model config (multimodal configs nest it), as an object or a dict."""
    if isinstance(config, Mapping):
        return config.get("text_config") or config
    get_text = getattr(config, "get_text_config", None)
    return get_text() if callable(get_text) else config


def kv_cache_bytes_per_token(config: Any, dtype: torch.dtype | str) -> int:
    """Bytes of KV cache one token costs in one model: layers x KV heads x head_dim x 2 (K and V) x dtype bytes.

    ``config``: a transformers ``PretrainedConfig`` or the dict of a ``config.json``. ``head_dim`` is
    read when the config has it (Qwen3-0.6B: 128, although hidden_size / heads = 64), else
    hidden_size // num_attention_heads (Qwen2.5-7B: 3584 // 28 = 128); ``num_key_value_heads``
    defaults to ``num_attention_heads`` (no grouped-query attention). Raises ValueError naming the
    missing key otherwise.
    """
    cfg = _text_config(config)

    def get(key):
        value = cfg.get(key) if isinstance(cfg, Mapping) else getattr(cfg, key, None)
        return None if value is None else int(value)

    layers, heads = get("num_hidden_layers"), get("num_attention_heads")
    kv_heads = get("num_key_value_heads") or heads
    head_dim = get("head_dim")
    if head_dim is None and heads and get("hidden_size"):
        head_dim = get("hidden_size") // heads
    missing = [name for name, v in (("num_hidden_layers", layers), ("num_key_value_heads / num_attention_heads",
                                    kv_heads), ("head_dim / hidden_size", head_dim)) if not v]
    if missing:
        kind = type(cfg).__name__
        raise ValueError(f"model config ({kind}) lacks {', '.join(missing)}: cannot size its KV cache")
    return layers * kv_heads * head_dim * 2 * dtype_bytes(dtype)


def batch_for_memory(budget_bytes: float, tokens_per_row: int | Sequence[int],
                     bytes_per_token: int | Sequence[int], max_batch: int | None = None) -> int:
    """Rows whose KV caches fit in ``budget_bytes``: floor(budget / bytes per row), at most ``max_batch``.

    One row costs sum_m tokens_per_row[m] x bytes_per_token[m] over the models m decoding in lockstep
    (give one int each for a single model, or the pair's summed bytes at a common row length).
    Returns 0 when not even one row fits (the caller decides what to do).
    """
    tokens = [tokens_per_row] if isinstance(tokens_per_row, int) else list(tokens_per_row)
    sizes = [bytes_per_token] if isinstance(bytes_per_token, int) else list(bytes_per_token)
    if len(tokens) != len(sizes):
        raise ValueError(f"{len(tokens)} row lengths for {len(sizes)} models")
    if budget_bytes < 0 or any(t < 0 for t in tokens) or any(s < 0 for s in sizes):
        raise ValueError("budget, row lengths and bytes per token must be >= 0")
    if max_batch is not None and max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    row_bytes = sum(t * s for t, s in zip(tokens, sizes))
    fits = int(budget_bytes // row_bytes) if row_bytes else (max_batch or 0)
    return min(fits, max_batch) if max_batch is not None else fits


def free_device_bytes(device: torch.device | str) -> int | None:
    """Bytes a new allocation may take on ``device``: CUDA free memory plus PyTorch's cached free blocks.

    None where unknown (CPU and other devices: the decoder then sizes only from ``max_cache_gib``).
    """
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(device)
    cached_unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + max(cached_unused, 0))


@dataclass
class CacheUser:
    """One model's share of the KV cache in a decoding run."""

    name: str  # "teacher" / "student"
    bytes_per_token: int  # kv_cache_bytes_per_token(config, dtype)
    tokens_per_row: int  # widest row this model's cache can reach (prompt + new tokens + margins)
    device: str  # where its cache lives

    @property
    def bytes_per_row(self) -> int:
        return self.bytes_per_token * self.tokens_per_row


@dataclass
class BatchPlan:
    """The batch a run uses and why (recorded in the decoder's stats and the trace job summary)."""

    batch_size: int  # rows decoded at once
    requested_batch_size: int  # the batch asked for (the upper bound)
    limited_by: str  # "request", "max_cache_gib" or "free memory on <device>"
    cache_gib_at_batch: float  # KV cache of the chosen batch at full row length, all models
    bytes_per_row: int  # KV bytes of one full-length row, all models
    users: list  # [CacheUser as dict, ...]
    budgets_gib: dict  # {"max_cache_gib": x, "free memory on cuda:0": y, ...}: the limits that applied

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """One log line."""
        rows = ", ".join(f"{u['name']} {u['tokens_per_row']:,} tok x {u['bytes_per_token']:,} B" for u in self.users)
        budgets = ", ".join(f"{k} {v:.1f} GiB" for k, v in self.budgets_gib.items()) or "none"
        head = (f"batch {self.batch_size}" if self.batch_size == self.requested_batch_size
                else f"batch {self.requested_batch_size} -> {self.batch_size}")
        return (f"{head} (limited by {self.limited_by}): KV cache {self.cache_gib_at_batch:.1f} GiB at full "
                f"length ({rows} per row); budgets: {budgets}")


def plan_batch(requested: int, users: Sequence[CacheUser], max_cache_gib: float | None = None,
               free_fraction: float = FREE_MEMORY_FRACTION, free_bytes=free_device_bytes) -> BatchPlan:
    """The largest batch <= ``requested`` whose full-length KV caches fit every budget.

    Budgets: ``max_cache_gib`` bounds the caches of all ``users`` together; on each device whose
    free memory is known (CUDA), ``free_fraction`` x free bytes bounds the caches living there.
    ``free_bytes(device)`` is injectable for tests. Raises MemoryError, with the numbers, when not
    even one row fits.
    """
    if requested < 1:
        raise ValueError(f"batch size must be >= 1, got {requested}")
    if max_cache_gib is not None and not max_cache_gib > 0:
        raise ValueError(f"max_cache_gib must be > 0, got {max_cache_gib}")
    if not 0 < free_fraction <= 1:
        raise ValueError(f"free_fraction must be in (0, 1], got {free_fraction}")
    batch, limited_by, budgets = requested, "request", {}
    checks = []  # (label, budget bytes, users it bounds)
    if max_cache_gib is not None:
        checks.append(("max_cache_gib", max_cache_gib * GIB, list(users)))
    for device in dict.fromkeys(u.device for u in users):
        free = free_bytes(device)
        if free is not None:
            checks.append((f"free memory on {device}", free_fraction * free, [u for u in users if u.device == device]))
    for label, budget, bound in checks:
        budgets[label] = budget / GIB
        fits = batch_for_memory(budget, [u.tokens_per_row for u in bound], [u.bytes_per_token for u in bound])
        if fits < 1:
            need = sum(u.bytes_per_row for u in bound) / GIB
            raise MemoryError(
                f"one decoding row needs {need:.2f} GiB of KV cache ("
                + ", ".join(f"{u.name}: {u.tokens_per_row:,} tokens x {u.bytes_per_token:,} bytes" for u in bound)
                + f") but the {label} budget is {budget / GIB:.2f} GiB: shorten max_new_tokens or the prompts, "
                "use a smaller dtype, or free memory")
        if fits < batch:
            batch, limited_by = fits, label
    row = sum(u.bytes_per_row for u in users)
    return BatchPlan(batch, requested, limited_by, batch * row / GIB, row, [asdict(u) for u in users], budgets)


# ----------------------------------------------------------------------------------------------
# Training memory (Table 4's full fine-tunes; field notes s.10)
# ----------------------------------------------------------------------------------------------
# Full fine-tuning with bf16 autocast over fp32 master weights and AdamW keeps, per parameter:
# 4 bytes of weights, 4 of gradients, 8 of Adam's two moments = 16 bytes, before activations.
TRAIN_STATE_BYTES_PER_PARAM = 16
TRAIN_ACTIVATION_BYTES = 4 * GIB  # checkpointed activations of one micro-batch, beside its logits (estimate)
TRAIN_FSDP = "full_shard auto_wrap"  # s1's sharding (field notes s.2): parameters, gradients and Adam states split
PAPER_STUDENTS = {  # total parameters (embeddings included, model cards) and logit rows of the paper's students
    "Qwen/Qwen3-0.6B": (0.60e9, 151_936), "Qwen/Qwen3-1.7B": (1.72e9, 151_936), "Qwen/Qwen3-4B": (4.02e9, 151_936),
    "meta-llama/Llama-3.2-1B-Instruct": (1.24e9, 128_256), "google/gemma-3-1b-it": (1.00e9, 262_144),
    "microsoft/Phi-4-mini-instruct": (3.84e9, 200_064), "microsoft/Phi-4-mini-reasoning": (3.84e9, 200_064),
}


def training_headroom_bytes(block_size: int, vocab_rows: int) -> int:
    """Per-GPU memory beside the training states: fp32 logits of one block, their log-softmax and its gradient
    (3 x block x vocab x 4 bytes; field notes s.10), plus ``TRAIN_ACTIVATION_BYTES``."""
    return 3 * int(block_size) * int(vocab_rows) * 4 + TRAIN_ACTIVATION_BYTES


@dataclass(frozen=True)
class TrainingMemoryPlan:
    """How a full fine-tune fits: on every GPU whole (one GPU, or DDP replicas) or sharded with FSDP."""

    params: int  # trainable parameters
    gpus: int  # processes (GPUs) of the run
    gpu_bytes: int | None  # memory of one GPU (None: unknown, CPU)
    state_bytes: int  # weights + gradients + AdamW moments, whole model
    fsdp: str  # "" (each GPU holds everything) or TRAIN_FSDP
    per_gpu_bytes: int  # states per GPU under that choice, plus the headroom (training_headroom_bytes)
    fits: bool  # per_gpu_bytes <= gpu_bytes (True where gpu_bytes is unknown)

    def describe(self) -> str:
        where = "unknown GPU memory" if self.gpu_bytes is None else f"{self.gpu_bytes / GIB:.0f} GiB per GPU"
        how = f"FSDP ({self.fsdp}) over {self.gpus} GPUs" if self.fsdp else f"whole on each of {self.gpus} GPU(s)"
        return (f"{self.params / 1e9:.2f}B parameters: {self.state_bytes / GIB:.0f} GiB of training states; "
                f"{how}: {self.per_gpu_bytes / GIB:.0f} GiB per GPU with headroom ({where})"
                + ("" if self.fits else " - does NOT fit: use more GPUs (FSDP shards the states over them)"))


def plan_training(params: int, gpus: int = 1, gpu_bytes: int | None = None, *, block_size: int = 8192,
                  vocab_rows: int = 151_936) -> TrainingMemoryPlan:
    """The memory choice of a full fine-tune: whole-model replicas (one GPU, or DDP) when 16 bytes x parameters
    + headroom fit one GPU, else FSDP full sharding over the run's GPUs (s1's recipe), which divides the
    states by ``gpus`` (the headroom is per GPU, not sharded).

    Phi-4-Mini and Qwen3-4B (3.8-4.0B parameters, 57-60 GiB of states) do not fit an 80 GB card whole with
    the logits of an 8k block: on a node of 2 or more GPUs they train sharded; alone on one GPU the plan
    says it does not fit (rsdlib.train then stops with that message)."""
    if params < 1 or gpus < 1:
        raise ValueError(f"params and gpus must be >= 1, got {params}, {gpus}")
    state = int(params) * TRAIN_STATE_BYTES_PER_PARAM
    headroom = training_headroom_bytes(block_size, vocab_rows)
    whole = state + headroom
    if gpu_bytes is None or whole <= gpu_bytes or gpus == 1:
        fits = gpu_bytes is None or whole <= gpu_bytes
        return TrainingMemoryPlan(int(params), gpus, gpu_bytes, state, "", whole, fits)
    sharded = -(-state // gpus) + headroom
    return TrainingMemoryPlan(int(params), gpus, gpu_bytes, state, TRAIN_FSDP, sharded, sharded <= gpu_bytes)


def training_memory_rows(gpu_bytes: int = 80 * 10**9, gpus: int = 8, block_size: int = 8192) -> list[dict]:
    """One row per paper student (README's table): states, and the plan on one GPU and on a node of ``gpus``."""
    rows = []
    for model, (n, vocab) in PAPER_STUDENTS.items():
        kw = {"block_size": block_size, "vocab_rows": vocab}
        one, node = plan_training(int(n), 1, gpu_bytes, **kw), plan_training(int(n), gpus, gpu_bytes, **kw)
        rows.append({"model": model, "params_b": round(n / 1e9, 2), "states_gib": round(one.state_bytes / GIB, 1),
                     "one_gpu_gib": round(one.per_gpu_bytes / GIB, 1), "fits_one_gpu": one.fits,
                     "node_plan": node.fsdp or "whole (DDP)", "node_gib_per_gpu": round(node.per_gpu_bytes / GIB, 1)})
    return rows
