"""Supervised fine-tuning of the student on RSD traces: the hybrid recipe (paper, Sections 3.3 and 4.1).

The paper fine-tunes the student on full traces of the problems RSD solved plus UPFT-style prefixes
(the first 128 tokens) of the problems it did not, with the s1 recipe: global batch 16, bf16,
lr 1e-5 with 5% linear warmup then cosine decay, AdamW (0.9, 0.95), weight decay 1e-4, 15 epochs
(Appendix E's multi-step runs: 5 epochs per cycle), 8192-token context.

Training example format (the trace job writes it; one JSON object per line, STUDENT token ids)::

    {"id": str, "prompt_ids": [int], "completion_ids": [int], "kind": "full" | "prefix", "source": str}

- ``full``: ``completion_ids`` ends with the end-of-turn token (``<|im_end|>`` for Qwen) and every
  completion token is supervised, that token included, so the student learns to stop.
- ``prefix``: ``completion_ids`` are the first tokens of an unsolved problem's trace and contain NO
  end-of-turn token; only they are supervised and nothing follows them, so the student never learns
  to stop after 128 tokens (field notes, section 3).
- The prompt is never supervised. Text examples (the s1K-1.1 baseline) are also accepted:
  ``{"id", "messages": [...]}`` or ``{"id", "prompt_text", "completion_text", "system"?}`` plus
  ``kind``; ``text_example_to_ids`` renders them with the tokenizer's chat template.

Labels follow the transformers convention (the model shifts them): ``labels[i] = input_ids[i]`` on
supervised positions, -100 elsewhere. Examples longer than ``block_size`` are refused with a message
listing them, or, with ``truncate: true``, cut at ``block_size`` (a cut full example loses its
end-of-turn token, i.e. becomes a prefix example) and counted. The pad token is never the end-of-turn
token (pad == eos teaches the model never to stop): ``<|fim_pad|>`` when the tokenizer has it.

Engine: the transformers ``Trainer`` over a plain torch Dataset (no TRL: its ``max_length`` default
silently truncates). Multi-GPU (DDP/FSDP/DeepSpeed) is accelerate's job, with no code here::

    accelerate launch -m rsdlib.train --params params/paper/30_train.yaml --data dataset.jsonl model=... output_dir=...
    torchrun --nproc-per-node 8 -m rsdlib.train --params params/paper/30_train.yaml --data dataset.jsonl \\
        model=... output_dir=...

(``--params`` reads the ``training`` keys of notebook 30's parameter file; ``--config`` a file of
TrainConfig keys.) Notebooks 30 and 35 with ``workers`` > 1 run the same command as torchrun ranks
(``train_launched``); a run is identified by its folder, so a relative ``output_dir`` and the notebook's
absolute one are the same run (``SAME_RUN_FREE_FIELDS``).

Gradient accumulation = global_batch_size / (micro_batch_size * world size): the effective batch is
global_batch_size at any world size (``TrainConfig.batch_plan``, printed and in ``train_summary.json``).
A single process that sees several GPUs (the Trainer would go DataParallel, batch x GPUs) is refused. Checkpoints go to
``output_dir/checkpoint-*`` beside ``train_config.json``, atomically: each is written complete into
``output_dir/.checkpoint-staging/``, sealed with ``rsdlib-checkpoint.json`` (every file and its size),
then renamed into place, so a kill during a save never leaves a half checkpoint where resumption looks.
Rerunning the same command resumes from the newest complete one and says which; a damaged or partial
``checkpoint-*`` folder (no seal, a file missing or of another size: a kill under an older rsdlib, a
full disk) is moved to ``output_dir/incomplete/`` with a message and never blocks. One process writes
a run folder at a time: a second run of the same folder is refused at once, naming it (the lock
``output_dir/.lock``, as for trace and evaluation runs; under torchrun the rank-0 process holds it).
``train_log.json`` holds the loss / learning-rate curve; ``output_dir/final`` a model folder
(safetensors + tokenizer) that ``AutoModelForCausalLM.from_pretrained`` loads (LoRA: merged by default,
the adapter alone in ``output_dir/final_adapter``), so it can be evaluated or serve as the next
student of multi-step RSD (Table 5).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import hashlib
import json
import logging
import os
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from rsdlib.config import config_hash, config_to_dict, load_yaml_config, save_config
from rsdlib.prompts import render_chat, turn_end_id, vocab_id
from rsdlib.store import check_writable, explained_writes, read_json, write_json_atomic

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label of positions that carry no loss (prompt, padding)
KINDS = ("full", "prefix")
PAD_CANDIDATES = ("<|fim_pad|>",)  # never-used Qwen tokens, in order of preference
FALLBACK_PAD = "<|rsd_pad|>"  # added when the tokenizer has none of the candidates
# Fields that may change between an interrupted run and its resumption without changing the run.
RESUME_FREE_FIELDS = ("resume", "logging_steps", "save_strategy", "save_steps", "save_total_limit")
# Fields two configs may differ in and still be one run in one folder: the resume-free ones, and the folder
# itself (a relative output_dir of a hand-run command, the notebook's absolute one: the same run; issue 28)
SAME_RUN_FREE_FIELDS = (*RESUME_FREE_FIELDS, "output_dir")
CHECKPOINT_SEAL = "rsdlib-checkpoint.json"  # written last into a checkpoint: its files and their sizes
STAGING_DIR = ".checkpoint-staging"  # checkpoints are written here, then renamed into output_dir
MAX_EPOCHS = 1000  # sane ceiling (paper: 15; s1: 5): more is a typo such as 1e9
INCOMPLETE_DIR = "incomplete"  # damaged / partial checkpoint folders are moved here, never resumed from


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """The s1 / paper recipe by default (Section 4.1); saved as ``output_dir/train_config.json``."""

    model: str = "Qwen/Qwen3-0.6B"  # student to fine-tune: local folder or hub id (paper: Qwen3-0.6B)
    output_dir: str = ""  # run folder; "" = <results>/models/train-<config hash>
    epochs: float = 15.0  # passes over the dataset (paper: 15; multi-step RSD: 5 per cycle; s1: 5)
    learning_rate: float = 1e-5  # peak learning rate (s1 / paper)
    warmup_ratio: float = 0.05  # fraction of the steps with linear warmup from 0
    lr_scheduler: str = "cosine"  # decay after warmup: cosine | linear | constant_with_warmup
    adam_beta1: float = 0.9  # AdamW beta1
    adam_beta2: float = 0.95  # AdamW beta2 (s1)
    weight_decay: float = 1e-4  # AdamW decoupled weight decay
    max_grad_norm: float = 1.0  # gradient clipping (Trainer default, as in s1); 0 disables
    global_batch_size: int = 16  # examples per optimizer step over all devices
    micro_batch_size: int = 1  # examples per device per forward pass (accumulation makes up the rest)
    block_size: int = 8192  # maximum tokens per example (paper's context: 8192)
    truncate: bool = False  # cut over-long examples at block_size instead of refusing them
    bf16: str | bool = "auto"  # bf16 autocast: "auto" = on where the GPU supports it, off on CPU
    model_dtype: str = "float32"  # dtype the weights are loaded in (float32 = fp32 master weights)
    gradient_checkpointing: bool = False  # recompute activations in backward (saves memory, ~20% slower)
    lora: bool = False  # train a LoRA adapter (peft) instead of all weights (paper: full fine-tuning)
    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 32  # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float = 0.05  # dropout on the LoRA branch
    lora_target_modules: tuple[str, ...] = (  # linear layers that get an adapter (all of a Qwen block)
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    )
    merge_lora: bool = True  # LoRA: save final/ as a merged normal model (adapter also in final_adapter/)
    pad_token: str = "<|fim_pad|>"  # preferred pad token; must differ from the end-of-turn token
    eot_token: str = "<|im_end|>"  # end-of-turn token that closes a full example
    fsdp: bool = False  # fully sharded data parallel under torchrun (s1); accelerate configs may set it instead
    seed: int = 42  # seeds model init (LoRA), data order and dropout
    logging_steps: int = 1  # log loss and learning rate every N optimizer steps
    save_strategy: str = "steps"  # checkpoint every save_steps steps ("steps"), each epoch ("epoch"), or "no"
    save_steps: int = 100  # optimizer steps between checkpoints (save_strategy "steps")
    save_total_limit: int | None = 2  # keep the newest N checkpoints (None = all)
    max_steps: int = -1  # stop after N optimizer steps (overrides epochs when > 0; -1 = off)
    resume: bool = True  # resume from the newest checkpoint-* in output_dir; False deletes them and starts over

    def __post_init__(self) -> None:
        if isinstance(self.bf16, str):
            value = self.bf16.strip().lower()
            if value not in ("auto", "true", "false"):
                raise ValueError(f"bf16 must be 'auto', true or false, got {self.bf16!r}")
            self.bf16 = value if value == "auto" else value == "true"
        self.lora_target_modules = tuple(self.lora_target_modules)
        checks = {
            f"0 < epochs <= {MAX_EPOCHS}": 0 < self.epochs <= MAX_EPOCHS,
            "learning_rate > 0": self.learning_rate > 0,
            "0 <= warmup_ratio < 1": 0 <= self.warmup_ratio < 1,
            "0 <= adam_beta1 < 1": 0 <= self.adam_beta1 < 1,
            "0 <= adam_beta2 < 1": 0 <= self.adam_beta2 < 1,
            "weight_decay >= 0": self.weight_decay >= 0,
            "max_grad_norm >= 0": self.max_grad_norm >= 0,
            "global_batch_size >= 1": self.global_batch_size >= 1,
            "micro_batch_size >= 1": self.micro_batch_size >= 1,
            "global_batch_size divisible by micro_batch_size": self.global_batch_size % self.micro_batch_size == 0,
            "block_size >= 2": self.block_size >= 2,
            "lora_r >= 1": self.lora_r >= 1,
            "lora_alpha > 0": self.lora_alpha > 0,
            "0 <= lora_dropout < 1": 0 <= self.lora_dropout < 1,
            "lora_target_modules not empty": len(self.lora_target_modules) > 0,
            "logging_steps >= 1": self.logging_steps >= 1,
            "save_steps >= 1": self.save_steps >= 1,
            "save_strategy in steps|epoch|no": self.save_strategy in ("steps", "epoch", "no"),
            "lr_scheduler in cosine|linear|constant_with_warmup|cosine_with_min_lr": self.lr_scheduler
            in ("cosine", "linear", "constant_with_warmup", "cosine_with_min_lr"),
            "model_dtype in float32|bfloat16|float16": self.model_dtype in ("float32", "bfloat16", "float16"),
            "max_steps == -1 or max_steps >= 1": self.max_steps == -1 or self.max_steps >= 1,
            "save_total_limit is None or >= 1": self.save_total_limit is None or self.save_total_limit >= 1,
            "pad_token != eot_token": self.pad_token != self.eot_token,
        }
        failed = [name for name, ok in checks.items() if not ok]
        if failed:
            raise ValueError(f"invalid TrainConfig: {'; '.join(failed)} (config: {self})")

    def gradient_accumulation(self, world_size: int = 1) -> int:
        """Micro-batches per optimizer step per device: global / (micro * world size), exact."""
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ValueError(
                f"global_batch_size={self.global_batch_size} is not a multiple of micro_batch_size="
                f"{self.micro_batch_size} x world size {world_size}"
            )
        return self.global_batch_size // per_step

    def batch_plan(self, world_size: int = 1, devices_per_process: int = 1, n_examples: int | None = None
                   ) -> dict[str, int]:
        """How the global batch is made on ``world_size`` processes: per-device batch, accumulation steps and the
        effective batch, always ``global_batch_size``. A process that sees several GPUs (``devices_per_process``
        > 1) would train DataParallel, multiplying the per-device batch by its GPUs: refused.

        ``n_examples``: also ``repeated_examples_per_epoch``, the examples accelerate repeats in an epoch's last
        step so that every rank gets as many micro-batches (its ``even_batches``; uneven ranks can hang DDP):
        0 when ``n_examples`` is a multiple of micro-batch x world size (the paper's 1,000 on 1, 2, 4 or 8 GPUs)."""
        if devices_per_process > 1:
            raise ValueError(
                f"this process sees {devices_per_process} GPUs and is not one of a launch's ranks: the Trainer would "
                "train DataParallel (batch x GPUs). Launch one process per GPU (torchrun --nproc-per-node N -m "
                "rsdlib.train ..., accelerate launch, or the notebook's workers), or show it one GPU "
                "(CUDA_VISIBLE_DEVICES=0)")
        accumulation = self.gradient_accumulation(world_size)
        plan = {"world_size": world_size, "per_device_batch_size": self.micro_batch_size,
                "gradient_accumulation_steps": accumulation,
                "effective_batch_size": self.micro_batch_size * accumulation * world_size}
        if n_examples is not None:
            plan["repeated_examples_per_epoch"] = -n_examples % (self.micro_batch_size * world_size)
        return plan

    def use_bf16(self) -> bool:
        if self.bf16 == "auto":
            return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        return bool(self.bf16)


# ----------------------------------------------------------------------------------------------
# Examples -> features (pure functions; the label mask is tested against a hand-built one)
# ----------------------------------------------------------------------------------------------
class OverlongExample(ValueError):
    """One example longer than the block size (collected by ``build_dataset`` into one message)."""

    def __init__(self, example_id: str, length: int, block_size: int):
        super().__init__(f"example {example_id!r} has {length} tokens > block_size={block_size}")
        self.example_id, self.length, self.block_size = example_id, length, block_size


def validate_example(example: Mapping, eot_id: int) -> None:
    """Check one token-id example against the format above; raises ValueError naming it."""
    eid = example.get("id", "?")
    missing = [k for k in ("id", "prompt_ids", "completion_ids", "kind") if k not in example]
    if missing:
        raise ValueError(f"example {eid!r}: missing key(s) {missing}")
    kind, completion = example["kind"], example["completion_ids"]
    if kind not in KINDS:
        raise ValueError(f"example {eid!r}: kind must be one of {KINDS}, got {kind!r}")
    if len(completion) == 0:
        raise ValueError(f"example {eid!r}: empty completion_ids")
    if kind == "full" and completion[-1] != eot_id:
        raise ValueError(
            f"example {eid!r}: a full example must end with the end-of-turn token id {eot_id} "
            f"(it ends with id {completion[-1]})"
        )
    if kind == "prefix" and eot_id in completion:
        raise ValueError(
            f"example {eid!r}: a prefix example must not contain the end-of-turn token id {eot_id} "
            "(the student would learn to stop after the prefix)"
        )


def build_features(example: Mapping, pad_id: int, eot_id: int, block_size: int, truncate: bool = False) -> dict:
    """input_ids, labels (-100 on the prompt) and attention_mask of one example.

    Every completion token is supervised: for a full example that includes the final end-of-turn
    token; a prefix example has none and nothing follows it. Longer than ``block_size``: raises
    ``OverlongExample`` unless ``truncate``, then the completion is cut (``truncated`` is True).
    An example whose prompt alone fills the block has nothing left to learn: always refused.
    """
    if pad_id == eot_id:
        raise ValueError(f"pad id {pad_id} equals the end-of-turn id: the end of turn would never be learned")
    validate_example(example, eot_id)
    prompt, completion = list(example["prompt_ids"]), list(example["completion_ids"])
    if pad_id in prompt or pad_id in completion:
        raise ValueError(f"example {example['id']!r} contains the pad token id {pad_id}; choose another pad token")
    length = len(prompt) + len(completion)
    truncated = length > block_size
    if truncated and (not truncate or len(prompt) >= block_size):
        raise OverlongExample(str(example["id"]), length, block_size)
    input_ids = (prompt + completion)[:block_size]
    labels = ([IGNORE_INDEX] * len(prompt) + completion)[:block_size]
    return {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": [1] * len(input_ids),
        "truncated": truncated,
    }


def format_overlong(overlong: Sequence[OverlongExample], block_size: int, limit: int = 50,
                    truncate: bool = False) -> str:
    """The refusal message: every over-long example's id and length (the first ``limit``). With ``truncate``
    on, only examples whose prompt alone fills the block are refused: cutting the completion cannot help."""
    ordered = sorted(overlong, key=lambda e: -e.length)
    listed = ", ".join(f"{e.example_id} ({e.length} tokens)" for e in ordered[:limit])
    more = f", ... and {len(ordered) - limit} more" if len(ordered) > limit else ""
    if truncate:
        return (
            f"{len(ordered)} example(s) whose prompt alone fills block_size={block_size} tokens, so nothing of the "
            f"completion is left to learn (truncate: true cuts completions only): {listed}{more}. Raise block_size, "
            "or remove those problems (they are longer than the context notebook 10 warned about)."
        )
    return (
        f"{len(ordered)} example(s) longer than block_size={block_size} tokens (prompt + completion): "
        f"{listed}{more}. Raise block_size, remove them from the dataset, or set truncate: true to cut "
        "their completions at block_size (a cut full example loses its end-of-turn token)."
    )


class SFTDataset(torch.utils.data.Dataset):
    """Plain list of feature dicts (input_ids, labels, attention_mask as lists of ints)."""

    def __init__(self, features: Sequence[Mapping]):
        self.features = [
            {k: list(f[k]) for k in ("input_ids", "labels", "attention_mask")} for f in features
        ]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return self.features[i]


@dataclass
class PadCollator:
    """Right-pads a batch to its longest example: input_ids with pad_id, labels -100, mask 0."""

    pad_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, batch: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in batch)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)  # (B, T)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T)
        for row, f in enumerate(batch):
            n = len(f["input_ids"])
            input_ids[row, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.tensor(f["labels"], dtype=torch.long)
            attention_mask[row, :n] = torch.tensor(f["attention_mask"], dtype=torch.long)
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def build_dataset(examples: Iterable[Mapping], pad_id: int, eot_id: int, block_size: int, truncate: bool = False):
    """Features of all examples -> (SFTDataset, info). Over-long ones refused together, in one message.

    ``info``: counts per kind, truncated count, token totals and a fingerprint of the features
    (recorded in ``dataset_info.json`` so a resumed run refuses a changed dataset).
    """
    features, overlong, seen = [], [], set()
    kinds = {k: 0 for k in KINDS}
    for ex in examples:
        if ex.get("id") in seen:
            raise ValueError(f"duplicate example id {ex.get('id')!r}")
        seen.add(ex.get("id"))
        try:
            features.append(build_features(ex, pad_id, eot_id, block_size, truncate))
        except OverlongExample as err:
            overlong.append(err)
            continue
        kinds[ex["kind"]] += 1
    if overlong:
        raise ValueError(format_overlong(overlong, block_size, truncate=truncate))
    if not features:
        raise ValueError("no training examples")
    digest = hashlib.sha256()
    for f in features:
        digest.update(json.dumps([f["input_ids"], f["labels"]], separators=(",", ":")).encode())
    info = {
        "examples": len(features),
        "kinds": kinds,
        "truncated": sum(f["truncated"] for f in features),
        "tokens": sum(len(f["input_ids"]) for f in features),
        "supervised_tokens": sum(sum(lab != IGNORE_INDEX for lab in f["labels"]) for f in features),
        "max_length": max(len(f["input_ids"]) for f in features),
        "block_size": block_size,
        "fingerprint": digest.hexdigest()[:16],
    }
    if info["truncated"]:
        log.warning("truncated %d example(s) to block_size=%d", info["truncated"], block_size)
    return SFTDataset(features), info


# ----------------------------------------------------------------------------------------------
# Tokenizer helpers: text examples, end-of-turn and pad tokens
# ----------------------------------------------------------------------------------------------
def choose_pad_token(tokenizer, eot_id: int, preferred: str = "<|fim_pad|>",
                     avoid_ids: Iterable[int] = ()) -> tuple[str, int, bool]:
    """Pick a never-used pad token distinct from end-of-turn and set it on the tokenizer.

    Order: ``preferred`` (``<|fim_pad|>``), then Qwen's other candidates, then a new special token
    ``<|rsd_pad|>`` (the caller resizes the embeddings when its id is past them). Returns
    (token, id, added). Refuses a result equal to the end-of-turn or eos id. ``avoid_ids``: ids the
    training examples contain; a candidate among them is skipped (a sampled trace can hold
    ``<|fim_pad|>``: a real row of the vocabulary the model may emit), so padding never collides
    with a supervised token and no dataset is refused for it.
    """
    avoid = set(avoid_ids)
    for token in (preferred, *PAD_CANDIDATES):
        tid = vocab_id(tokenizer, token)
        if tid is not None and tid in avoid:
            log.warning("pad token %r (id %d) occurs in the training examples; using another pad token", token, tid)
            continue
        if tid is not None and tid not in (eot_id, tokenizer.eos_token_id):
            tokenizer.pad_token = token
            return token, tid, False
    added = vocab_id(tokenizer, FALLBACK_PAD) is None
    if added:
        tokenizer.add_special_tokens({"additional_special_tokens": [FALLBACK_PAD]})
    tokenizer.pad_token = FALLBACK_PAD
    tid = vocab_id(tokenizer, FALLBACK_PAD)
    if tid is None or tid == eot_id or tid in avoid:
        raise ValueError("could not set a pad token distinct from the end-of-turn token and from every token "
                         "of the training examples")
    return FALLBACK_PAD, tid, added


def text_example_to_ids(tokenizer, example: Mapping, eot_token: str = "<|im_end|>",
                        system_prompt: str | None = None) -> dict:
    """Render a text example with the chat template and return a token-id example.

    Accepts ``messages`` (the last one the assistant's) or ``prompt_text`` + ``completion_text``
    (a user turn and the assistant's answer; ``system`` in the example or ``system_prompt`` adds a
    system turn). The prompt is everything up to and including the opened assistant turn; the
    completion is the assistant text up to and including the end-of-turn token (full) or without it
    (prefix); what the template puts after the end-of-turn token (a newline) is dropped.
    """
    eid, kind = example.get("id"), example.get("kind", "full")
    if "messages" in example:
        messages = [dict(m) for m in example["messages"]]
    elif "prompt_text" in example and "completion_text" in example:
        system = example.get("system", system_prompt)
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": example["prompt_text"]},
            {"role": "assistant", "content": example["completion_text"]},
        ]
    else:
        raise ValueError(f"example {eid!r}: needs prompt_ids/completion_ids, messages, or prompt_text/completion_text")
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError(f"example {eid!r}: the last message must be the assistant's")
    prompt_text = render_chat(tokenizer, messages[:-1], add_generation_prompt=True)  # Llama-3.2's date pinned
    full_text = render_chat(tokenizer, messages, add_generation_prompt=False)
    if not full_text.startswith(prompt_text):
        raise ValueError(f"example {eid!r}: the chat template does not render the prompt as a prefix of the "
                         "conversation")
    completion_text = full_text[len(prompt_text):]
    cut = completion_text.rfind(eot_token)
    if cut < 0:
        raise ValueError(f"example {eid!r}: the rendered assistant turn has no {eot_token!r}")
    completion_text = completion_text[: cut + len(eot_token)] if kind == "full" else completion_text[:cut]
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    out = {
        "id": str(eid),
        "prompt_ids": encode(prompt_text),
        "completion_ids": encode(completion_text),
        "kind": kind,
        "source": example.get("source", "text"),
    }
    return out


def load_examples(source: str | Path | Iterable[Mapping], tokenizer=None, eot_token: str = "<|im_end|>") -> list[dict]:
    """Read a JSONL file (or take a list) of examples; text examples are tokenized here."""
    if isinstance(source, (str, Path)):
        raw = []
        with open(source, encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    raw.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{source}, line {number}: not valid JSON ({err.msg}, "
                                     f"column {err.colno})") from None
                if not isinstance(raw[-1], dict):
                    raise ValueError(f"{source}, line {number}: expected a JSON object per line")
    else:
        raw = list(source)
    out = []
    for ex in raw:
        if "prompt_ids" in ex:
            out.append(dict(ex))
        else:
            if tokenizer is None:
                raise ValueError(f"example {ex.get('id')!r} is a text example: a tokenizer is needed")
            out.append(text_example_to_ids(tokenizer, ex, eot_token=eot_token))
    return out


# ----------------------------------------------------------------------------------------------
# Training (a thin layer over transformers.Trainer)
# ----------------------------------------------------------------------------------------------
def world_size() -> int:
    """Processes in this run (torchrun and accelerate launch set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_output_dir(config: TrainConfig) -> Path:
    if config.output_dir:
        return Path(config.output_dir).expanduser().resolve()
    from rsdlib.paths import results_dir

    return results_dir() / "models" / f"train-{config_hash(config, exclude=RESUME_FREE_FIELDS)}"


def _log_callback(path: Path):
    from transformers import TrainerCallback

    class WriteLog(TrainerCallback):
        """Rewrites train_log.json (the Trainer's log_history) at every log, so interrupted runs keep it."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero:
                write_json_atomic(path, state.log_history, indent=1)

    return WriteLog()


def model_source(name: str) -> str:
    """Folder or hub id to read ``name`` from: ``embedded:<role>`` resolves to the embedded cache folder."""
    if name.startswith("embedded:"):
        from rsdlib import embedded

        return str(embedded.prepare(embedded.EMBEDDED[name.removeprefix("embedded:")]))
    return name


def training_memory_plan(config: TrainConfig, model):
    """``rsdlib.memory.plan_training`` for a full fine-tune on CUDA (None for LoRA or without a GPU): FSDP
    full sharding over the run's GPUs where 16 bytes x parameters + a block's logits do not fit one GPU
    (Phi-4-Mini, Qwen3-4B); a MemoryError naming the need where even that does not fit."""
    from rsdlib.memory import plan_training

    if config.lora or not torch.cuda.is_available():
        return None
    params = sum(p.numel() for p in model.parameters())
    plan = plan_training(params, world_size(), torch.cuda.get_device_properties(0).total_memory,
                         block_size=config.block_size, vocab_rows=model.get_input_embeddings().weight.shape[0])
    _say(f"training memory: {plan.describe()}")
    if not plan.fits:
        raise MemoryError(f"{config.model}: {plan.describe()} (rsdlib.memory.plan_training; README, "
                          f"'Memory of the training runs')")
    return plan


def _model_to_train(config: TrainConfig):
    """The model to fine-tune, on CPU in ``model_dtype`` (the Trainer moves it to its device): read by the
    project's loader (``rsdlib.models.load_student``: folders, hub ids, GGUF, ``embedded:``) so training reads
    exactly what the decoder and the evaluator read; by transformers alone where that module cannot be
    imported (the GPU check's minimal environment)."""
    try:
        from rsdlib.models import load_student
    except ImportError:
        from transformers import AutoModelForCausalLM

        dtype = getattr(torch, config.model_dtype)
        return AutoModelForCausalLM.from_pretrained(model_source(config.model), dtype=dtype)
    return load_student(config.model, dtype=config.model_dtype, device="cpu")[0].train()


def _apply_lora(model, config: TrainConfig):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    if config.gradient_checkpointing:
        model.enable_input_require_grads()
    return get_peft_model(model, lora)


def checkpointing_arguments(training_arguments: type, enabled: bool) -> dict[str, Any]:
    """The ``TrainingArguments`` keywords that switch activation (gradient) checkpointing on or off.

    transformers 5.23 renamed ``gradient_checkpointing(_kwargs)`` to ``activation_checkpointing(_kwargs)``
    (the old names stay as deprecated aliases until v6); older releases, down to the floor in
    pyproject.toml (5.10.4, vLLM 0.30.0's own floor), know only the old names. Whichever this
    ``training_arguments`` class declares is used, with non-reentrant checkpointing either way.
    """
    names = {f.name for f in dataclasses.fields(training_arguments)}
    prefix = "activation" if "activation_checkpointing" in names else "gradient"
    return {f"{prefix}_checkpointing": enabled,
            f"{prefix}_checkpointing_kwargs": {"use_reentrant": False} if enabled else None}


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _say(message: str) -> None:
    """A line the user must see (resumption, ignored checkpoints) whether or not logging is set up."""
    log.info(message)
    print(message, file=sys.stderr, flush=True)


def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a complete checkpoint (None when it is): its seal lists every file and size."""
    seal = folder / CHECKPOINT_SEAL
    if not seal.is_file():
        return (f"it has no {CHECKPOINT_SEAL} (its save was cut short, e.g. by a kill, or an older rsdlib wrote it); "
                f"{sum(1 for p in folder.rglob('*') if p.is_file())} file(s) in it")
    try:
        files = read_json(seal)["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {CHECKPOINT_SEAL} is unreadable"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
    return None


def checkpoints_newest_first(output_dir: Path) -> list[Path]:
    """``output_dir/checkpoint-<step>`` folders, highest step first."""
    found = [p for p in output_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: -int(p.name.split("-", 1)[1]))


def latest_complete_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint; damaged / partial ones are moved to ``incomplete/``, saying so."""
    for folder in checkpoints_newest_first(output_dir) if output_dir.is_dir() else []:
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        if _is_main_process():
            aside = output_dir / INCOMPLETE_DIR / folder.name
            aside.parent.mkdir(exist_ok=True)
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(folder, aside)
            _say(f"ignoring the checkpoint {folder}: {problem}. Moved to {aside}.")
    return None


def _seal_and_publish(staged: Path, target: Path) -> None:
    """Record the staged checkpoint's files and sizes (fsynced), then rename it to ``target`` atomically."""
    files = {}
    for path in sorted(p for p in staged.rglob("*") if p.is_file()):
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
        files[str(path.relative_to(staged))] = path.stat().st_size
    with open(staged / CHECKPOINT_SEAL, "w") as fh:
        fh.write(json.dumps({"files": files}, indent=1) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    if target.exists():  # a damaged leftover of the same step: swap it out
        old = target.with_name(f".{target.name}.replaced")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(staged, target)
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


SAVE_FAILURES = ("No space left", "StorageFull", "file write failed", "inline_container")  # torch / safetensors


@contextmanager
def _explained_save(path: Path, what: str):
    """A failed save as one line naming the place: an OSError through ``explain_os_error``, and the RuntimeError
    torch raises for a write that fails on a full disk ("[enforce fail at inline_container.cc] ... file write
    failed") or safetensors' "No space left on device" as "no space left on <path>"."""
    with explained_writes(path, what):
        try:
            yield
        except RuntimeError as err:  # torch.save / safetensors report a full disk as a RuntimeError
            if not any(s in str(err) for s in SAVE_FAILURES):
                raise
            try:
                free = f"{shutil.disk_usage(path if path.exists() else path.parent).free / 2**20:,.0f} MiB free"
            except OSError:
                free = "free space unknown"
            raise OSError(errno.ENOSPC, f"no space left on {path} ({free}) while saving {what} "
                          f"({str(err).splitlines()[0][:160]}): free space and rerun (training resumes from the "
                          "last complete checkpoint)") from None


def _atomic_trainer(**kwargs):
    """A transformers ``Trainer`` whose checkpoints appear only complete (see the module docstring)."""
    from transformers import Trainer
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

    class AtomicCheckpointTrainer(Trainer):
        def _save_checkpoint(self, model, trial):
            run_dir = Path(self.args.output_dir)
            staging = run_dir / STAGING_DIR
            name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            if self.args.should_save:
                shutil.rmtree(staging / name, ignore_errors=True)
            self.accelerator.wait_for_everyone()
            self._get_output_dir = lambda trial=None: str(staging)  # the Trainer writes into staging/<name>
            try:
                with _explained_save(staging / name, f"the checkpoint {name}"):
                    super()._save_checkpoint(model, trial)
            finally:
                del self._get_output_dir
            self.accelerator.wait_for_everyone()  # every rank's shards are written
            if self.args.should_save:
                _seal_and_publish(staging / name, run_dir / name)
                rotate_checkpoints(output_dir=str(run_dir), save_total_limit=self.args.save_total_limit,
                                   best_model_checkpoint=self.state.best_model_checkpoint)
            self.accelerator.wait_for_everyone()

    return AtomicCheckpointTrainer(**kwargs)


def run_identity(config: TrainConfig) -> dict:
    """What a training run's weights depend on: its config without ``output_dir`` (where the run lies) and the
    resume-only fields, its ``model`` named by content (``rsdlib.models.model_identity``: a retrained student
    folder is another model, a moved or copied one the same). Stored as ``run_key`` (its hash) beside a run."""
    from rsdlib.models import model_identity

    data = config_to_dict(config)
    for key in SAME_RUN_FREE_FIELDS:
        data.pop(key, None)
    data["model"] = model_identity(config.model)
    return data


def _stored_run_key(path: Path) -> str | None:
    return read_json(path).get("run_key") if path.is_file() else None


def _run_differences(stored_cfg: Path, config: TrainConfig) -> list[str]:
    """Config keys that differ from the stored run's (``model`` when only its content changed)."""
    stored = read_json(stored_cfg) if stored_cfg.is_file() else {}
    mine = config_to_dict(config)
    diff = sorted(k for k in set(stored) | set(mine)
                  if k not in SAME_RUN_FREE_FIELDS and stored.get(k) != mine.get(k))
    return diff or ["model (its weights changed)"]


def _check_resumable(output_dir: Path, config: TrainConfig, info: Mapping) -> str | None:
    """Newest complete checkpoint to resume from, after checking the stored config and dataset match."""
    if not config.resume:
        if _is_main_process() and output_dir.is_dir():
            for ckpt in [*output_dir.glob("checkpoint-*"), output_dir / INCOMPLETE_DIR, output_dir / STAGING_DIR]:
                if ckpt.exists():
                    log.warning("resume=False: deleting %s", ckpt)
                    shutil.rmtree(ckpt)
        return None
    if _is_main_process():
        shutil.rmtree(output_dir / STAGING_DIR, ignore_errors=True)  # a save cut by a kill
    last = latest_complete_checkpoint(output_dir)
    if last is None:
        return None
    stored_cfg, stored_info = output_dir / "train_config.json", output_dir / "dataset_info.json"
    stored_key = _stored_run_key(stored_info)
    if stored_key is not None:  # the run's identity: config and model content, not where the folder lies
        same = stored_key == info["run_key"]
    else:  # a run made before run_key: its config, paths included
        same = not stored_cfg.is_file() or config_hash(read_json(stored_cfg), SAME_RUN_FREE_FIELDS) == \
            config_hash(config, SAME_RUN_FREE_FIELDS)
    if not same:
        raise ValueError(
            f"{output_dir} holds checkpoints of a run with another config (differs in: "
            f"{', '.join(_run_differences(stored_cfg, config))}); use another output_dir, or resume: false to "
            "start over there"
        )
    if stored_info.is_file() and read_json(stored_info).get("fingerprint") != info["fingerprint"]:
        raise ValueError(
            f"{output_dir} holds checkpoints of a run on another dataset; use another output_dir, "
            "or resume: false to start over there"
        )
    return str(last)


def _already_trained(output_dir: Path, config: TrainConfig, info: Mapping) -> bool:
    """True when output_dir/final was written by a finished run of this config on this dataset."""
    stored_cfg, summary = output_dir / "final" / "train_config.json", output_dir / "train_summary.json"
    if not (stored_cfg.is_file() and summary.is_file()):
        return False
    stored_key = _stored_run_key(summary)
    if stored_key is not None:  # config and model content (a copied or moved results folder is still trained)
        same_config = stored_key == info["run_key"]
    else:  # a run made before run_key
        same_config = config_hash(read_json(stored_cfg), SAME_RUN_FREE_FIELDS) == config_hash(
            config, SAME_RUN_FREE_FIELDS)
    return same_config and read_json(summary).get("fingerprint") == info["fingerprint"]


def train(config: TrainConfig, dataset_path_or_examples, *, tokenizer=None, model=None, callbacks=()) -> Path:
    """Fine-tune ``config.model`` (or the given ``model``/``tokenizer``); returns ``output_dir/final``.

    ``dataset_path_or_examples``: a JSONL path or a list of examples (format in the module docstring).
    ``callbacks``: extra ``TrainerCallback``s (tests use one to interrupt a run).
    Rerunning a finished run (same config and dataset, ``resume`` on) returns its final folder at once;
    rerunning an interrupted one resumes from its newest complete checkpoint. One process per
    ``output_dir`` (RunConflictError for a second one).
    """
    from contextlib import nullcontext

    from rsdlib.store import run_lock

    output_dir = resolve_output_dir(config)
    # One writer per run folder (rank 0 holds the lock for a torchrun / accelerate job).
    lock = run_lock(output_dir, reason="two trainings in one folder would resume from and delete each "
                    "other's checkpoints") if _is_main_process() else nullcontext()
    with lock:
        return _train(config, output_dir, dataset_path_or_examples, tokenizer=tokenizer, model=model,
                      callbacks=callbacks)


def _train(config: TrainConfig, output_dir: Path, dataset_path_or_examples, *, tokenizer, model, callbacks) -> Path:
    from transformers import AutoTokenizer, TrainingArguments, set_seed

    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(model_source(config.model))
    eot_id = turn_end_id(tokenizer, (config.eot_token,))
    examples = load_examples(dataset_path_or_examples, tokenizer, config.eot_token)
    used_ids = {int(t) for ex in examples for key in ("prompt_ids", "completion_ids") for t in ex.get(key, ())}
    pad_token, pad_id, _ = choose_pad_token(tokenizer, eot_id, config.pad_token, avoid_ids=used_ids)
    dataset, info = build_dataset(examples, pad_id, eot_id, config.block_size, config.truncate)
    info.update(pad_token=pad_token, pad_id=pad_id, eot_id=eot_id, run_key=config_hash(run_identity(config)))
    if config.resume and _already_trained(output_dir, config, info):
        log.info("%s already holds a model trained with this config and dataset; skipping", output_dir / "final")
        return output_dir / "final"
    resume_from = _check_resumable(output_dir, config, info)
    if resume_from is not None:
        _say(f"resuming training from {resume_from}")

    set_seed(config.seed)
    if model is None:
        model = _model_to_train(config)
    if pad_id >= model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
    model.config.pad_token_id = pad_id
    if config.lora:
        model = _apply_lora(model, config)

    memory = training_memory_plan(config, model)  # FSDP where the states do not fit one GPU (rsdlib.memory)
    plan = config.batch_plan(world_size())
    accumulation = plan["gradient_accumulation_steps"]
    # Several CPU processes (torchrun / accelerate launch without GPUs): the Trainer goes data-parallel
    # over gloo only when told to use the CPU; otherwise every process would train on the whole dataset.
    cpu_processes = world_size() > 1 and not torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        adam_beta1=config.adam_beta1,
        adam_beta2=config.adam_beta2,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        bf16=config.use_bf16(),
        **checkpointing_arguments(TrainingArguments, config.gradient_checkpointing),
        fsdp=config.fsdp or bool(memory and memory.fsdp) or None,
        use_cpu=cpu_processes,
        ddp_backend="gloo" if cpu_processes else None,
        logging_steps=config.logging_steps,
        save_strategy=config.save_strategy,
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        seed=config.seed,
        data_seed=config.seed,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=not sys.stderr.isatty(),
    )
    plan = config.batch_plan(world_size(), args.n_gpu, len(dataset))  # n_gpu > 1: DataParallel, refused
    info["repeated_examples_per_epoch"] = plan["repeated_examples_per_epoch"]
    if _is_main_process():
        _say(f"training on {plan['world_size']} process(es): per-device batch {plan['per_device_batch_size']} x "
             f"{plan['gradient_accumulation_steps']} accumulation step(s) x {plan['world_size']} = effective batch "
             f"{plan['effective_batch_size']}")
        if plan["repeated_examples_per_epoch"]:
            _say(f"{len(dataset)} examples on {plan['world_size']} processes: {plan['repeated_examples_per_epoch']} "
                 "example(s) repeated in each epoch's last step so that every rank gets as many micro-batches")
    trainer = _atomic_trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=PadCollator(pad_id),
        processing_class=tokenizer,
        callbacks=[_log_callback(output_dir / "train_log.json"), *callbacks],
    )
    if trainer.is_world_process_zero():
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, output_dir / "train_config.json")
        write_json_atomic(output_dir / "dataset_info.json", info, end="\n")
        log.info("training on %s; resuming from %s", info, resume_from)
    result = trainer.train(resume_from_checkpoint=resume_from)
    if trainer.state.global_step < trainer.state.max_steps:  # stopped early by a callback: no final model
        return output_dir / "final"
    return _save_final(trainer, config, output_dir, info, result.metrics)


def _save_final(trainer, config: TrainConfig, output_dir: Path, info: Mapping, metrics: Mapping) -> Path:
    """Final model (or merged LoRA model) + tokenizer + config, in safetensors, to output_dir/final."""
    final = output_dir / "final"
    with _explained_save(final, "the final model"):
        return _write_final(trainer, config, output_dir, final, info, metrics)


def _write_final(trainer, config: TrainConfig, output_dir: Path, final: Path, info: Mapping, metrics: Mapping) -> Path:
    model = trainer.accelerator.unwrap_model(trainer.model)
    is_peft = hasattr(model, "merge_and_unload")
    if is_peft:
        trainer.save_model(str(output_dir / "final_adapter"))
    if not is_peft or not config.merge_lora:
        trainer.save_model(str(final))
    elif trainer.is_world_process_zero():
        if config.fsdp:
            raise NotImplementedError("merging a sharded LoRA run: load final_adapter with peft and merge")
        merged = model.merge_and_unload()
        merged.save_pretrained(str(final), safe_serialization=True)
        trainer.processing_class.save_pretrained(str(final))
    if trainer.is_world_process_zero():
        save_config(config, final / "train_config.json")
        args = trainer.args  # what the Trainer ran with: per device x accumulation x processes
        summary = {**info, **metrics, "global_step": trainer.state.global_step,
                   "merged_lora": is_peft and config.merge_lora, "world_size": args.world_size,
                   "per_device_batch_size": args.per_device_train_batch_size,
                   "gradient_accumulation_steps": args.gradient_accumulation_steps,
                   "effective_batch_size": args.train_batch_size * args.gradient_accumulation_steps * args.world_size}
        write_json_atomic(output_dir / "train_summary.json", summary, end="\n")
        write_json_atomic(output_dir / "train_log.json", trainer.state.log_history, indent=1)
    return final


# ----------------------------------------------------------------------------------------------
# Command line: python -m rsdlib.train --config train.yaml --data dataset.jsonl [key=value ...]
# ----------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if argv[:1] == ["--request"]:  # notebook 30's ranks: several runs, one after the other (train_launched)
        for path in argv[1:]:
            request = read_json(Path(path))
            print(train(load_yaml_config(TrainConfig, request["config"]), request["data"]))
        return 0
    config, data = command_config(argv)
    final = train(config, data)
    print(final)
    return 0


def command_config(argv: Sequence[str] | None = None) -> tuple[TrainConfig, str]:
    """The (TrainConfig, dataset path) of a ``python -m rsdlib.train`` command line (also under torchrun /
    accelerate launch): ``--config`` or ``--params``' ``training`` keys, then the key=value overrides."""
    import yaml

    parser = argparse.ArgumentParser(
        prog="python -m rsdlib.train",
        description="Fine-tune a student on RSD traces (multi-GPU: accelerate launch -m rsdlib.train ... "
        "or torchrun --nproc-per-node N -m rsdlib.train ...). `--request FILE ...` runs the requests notebook 30 "
        "wrote (<run>/train_request.json: a config and a dataset), one after the other.",
    )
    parser.add_argument("--config", help="YAML/JSON file of TrainConfig keys")
    parser.add_argument("--params",
                        help="a notebook-30 parameter file (params/<profile>/30_train.yaml): its `training` keys")
    parser.add_argument("--data", required=True, help="JSONL training examples (format: rsdlib.train docstring)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="TrainConfig overrides, values parsed as YAML")
    ns = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    for item in ns.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"override {item!r} is not key=value")
        overrides[key] = yaml.safe_load(value)
    if ns.params:  # the profile's recipe, as notebook 30 trains with it
        if ns.config:
            parser.error("give --config or --params, not both")
        training = (yaml.safe_load(Path(ns.params).read_text()) or {}).get("training")
        if not isinstance(training, dict):
            parser.error(f"--params {ns.params}: no `training` mapping of TrainConfig keys")
        overrides = {**training, **overrides}
    return load_yaml_config(TrainConfig, ns.config, **overrides), ns.data



# ----------------------------------------------------------------------------------------------
# Notebook 30's stage: one student per trace dataset, from the notebook's parameters
# ----------------------------------------------------------------------------------------------
def check_train_params(params: dict) -> list[tuple[str, str]]:
    """Refuse bad parameters before any work; returns the (pair run, method) datasets to train on."""
    from rsdlib import paths

    manifest = read_json(paths.input_file(params["profile"], "traces", "manifest.json"))  # notebook 10
    training = params["training"]
    for bad in ("model", "output_dir"):
        if bad in training:
            raise ValueError(f"training.{bad} is set by this notebook "
                             "(the pair's student / results/<profile>/models/...)")
    where = paths.params_source(params["profile"], "30_train")
    try:  # unknown keys and ranges refused before any work, naming the file
        load_yaml_config(TrainConfig, {**training, "model": "check"})
    except ValueError as err:
        raise ValueError(f"{where}: training: {err}") from None
    for method, keys in params["method_training"].items():
        try:
            load_yaml_config(TrainConfig, {**training, **keys, "model": "check"})
        except ValueError as err:
            raise ValueError(f"{where}: method_training[{method!r}]: {err}") from None
    runs = [("main", m) for m in params["methods"]] + [(run, m) for run, ms in params["extra_runs"].items() for m in ms]
    made = {run: [*manifest["methods"].get(run, []), *manifest.get("transfers", {}).get(run, [])]
            for run in {*manifest["methods"], *manifest.get("transfers", {})}}
    for run, method in runs:  # both name folders (traces/<run>/<method>, models/<run>-<method>): simple names only
        paths.check_name(run, "extra_runs key")
        paths.check_name(method, "method")
        if method not in made.get(run, []):
            raise ValueError(f"no trace dataset {run}/{method}; notebook 10 made: {made}")
    return runs


def run_train_stage(params: dict) -> dict[str, dict]:
    """Notebook 30: train one student per (pair run, method) dataset, then ``models/manifest.json``;
    returns {<run>-<method>: what was trained (final folder, examples, loss, steps, seconds)}."""
    import time

    from rsdlib import paths
    from rsdlib.distributed import workers_for
    from rsdlib.standins import carry_steering
    from rsdlib.traces import check_trainable

    runs = check_train_params(params)
    profile, training = params["profile"], params["training"]
    workers = workers_for(params.get("workers", 1))  # above 1: DDP over that many torchrun ranks
    print(f"training on {workers} process(es){' (DDP, torchrun)' if workers > 1 else ''}")
    manifest = read_json(paths.input_file(profile, "traces", "manifest.json"))
    models_dir = check_writable(paths.results_path(profile, "models"), "notebook 30's models")
    trained, jobs, launched_seconds = {}, [], 0.0
    for run, method in runs:
        dataset = paths.results_path(profile, "traces", run, method) / "dataset.jsonl"
        examples = load_examples(dataset)  # a malformed line is named by file and line
        name = f"{run}-{method}"
        out = paths.results_path(profile, "models", name)  # refused outside results/<profile> before any rmtree
        n_full = check_trainable(dataset, name, require_kept=params["require_kept_traces"])["full_examples"]
        keys = {**training, **params["method_training"].get(method, {})}
        lengths = [len(e["prompt_ids"]) + len(e["completion_ids"]) for e in examples]
        over = sum(n > keys["block_size"] for n in lengths)
        whole_prompt = sum(len(e["prompt_ids"]) >= keys["block_size"] for e in examples)  # never cut: refused
        fate = (f"{over - whole_prompt} cut, {whole_prompt} refused (prompt alone fills the block)" if whole_prompt
                else "cut") if keys.get("truncate") else "refused by training"
        print(f"{name}: training set {n_full} full + {len(examples) - n_full} prefix = {len(examples)} examples; "
              f"longest {max(lengths)} tokens, {over} over block_size {keys['block_size']} ({fate})")
        if params["force"] and out.exists():
            shutil.rmtree(out)
        cfg = stage_run_config(params, run, method, manifest["pairs"][run]["student"])
        jobs.append((name, run, method, cfg, dataset, examples))
    if workers > 1:  # every run in one launch of DDP ranks (they start once), one after the other
        start = time.perf_counter()
        train_many_launched([(cfg, dataset) for _, _, _, cfg, dataset, _ in jobs], workers)
        launched_seconds = (time.perf_counter() - start) / max(1, len(jobs))  # each run's share of the launch
        print(f"{len(jobs)} run(s) in one launch of {workers} ranks, {launched_seconds * len(jobs):.0f} s")
    for name, run, method, cfg, dataset, examples in jobs:
        out = models_dir / name
        start = time.perf_counter()
        final = train(cfg, dataset) if workers <= 1 else resolve_output_dir(cfg) / "final"
        carry_steering(cfg.model, final)  # the dry run's stand-ins stay steered after fine-tuning (real models: no-op)
        seconds = time.perf_counter() - start + launched_seconds
        summary_path = out / "train_summary.json"
        summary = read_json(summary_path) if summary_path.is_file() else {}
        kinds = {k: sum(e["kind"] == k for e in examples) for k in KINDS}
        trained[name] = {"run": run, "method": method, "student": manifest["pairs"][run]["student"],
                         "final": paths.portable(final, paths.results_dir(profile)) if final.is_dir() else None,
                         "examples": len(examples),
                         "full": kinds["full"], "prefix": kinds["prefix"],
                         "train_loss": summary.get("train_loss"), "steps": summary.get("global_step"),
                         "world_size": summary.get("world_size"),
                         "gradient_accumulation_steps": summary.get("gradient_accumulation_steps"),
                         "seconds": round(seconds, 1)}
        print(f"{name}: {len(examples)} examples, loss {summary.get('train_loss')}, {seconds:.0f} s -> {final}")
    write_json_atomic(models_dir / "manifest.json", {"profile": profile, "world_size": workers, "models": trained})
    return trained


def stage_run_config(params: dict, run: str, method: str, student: str) -> TrainConfig:
    """The TrainConfig notebook 30 trains ``<run>-<method>`` with: ``training`` + ``method_training[method]``, the
    pair's student, folder ``results/<profile>/models/<run>-<method>`` (a hand-run ``rsdlib.train --params``
    command with the same keys and folder is the same run: ``SAME_RUN_FREE_FIELDS``)."""
    from rsdlib import paths
    from rsdlib.models import model_location

    keys = {**params["training"], **params["method_training"].get(method, {})}
    out = paths.results_dir(params["profile"]) / "models" / f"{run}-{method}"
    return load_yaml_config(TrainConfig, {**keys, "model": model_location(student), "output_dir": str(out)})


def train_launched(config: TrainConfig, dataset: str | Path, workers: int = 1) -> Path:
    """``train(config, dataset)`` in this process (``workers`` 1), or DDP over ``workers`` torchrun ranks
    (``train_many_launched``). Returns ``output_dir/final``."""
    if workers <= 1:
        return train(config, dataset)
    return train_many_launched([(config, dataset)], workers)[0]


def train_many_launched(runs: Sequence[tuple[TrainConfig, str | Path]], workers: int) -> list[Path]:
    """Several trainings as DDP over ``workers`` torchrun ranks, in ONE launch (the ranks start once), one after
    the other: each run's config and dataset go to ``<output_dir>/train_request.json`` and the ranks run
    ``python -m rsdlib.train --request <file> ...``. By hand, ``torchrun --nproc-per-node N -m rsdlib.train
    --params ... --data ... output_dir=<the same folder>`` is the same run. Returns each ``output_dir/final``."""
    from rsdlib.distributed import run_ranks

    requests, finals = [], []
    for config, dataset in runs:
        output_dir = resolve_output_dir(config)
        output_dir.mkdir(parents=True, exist_ok=True)
        request = output_dir / "train_request.json"
        write_json_atomic(request, {"config": config_to_dict(config), "data": str(Path(dataset).resolve())},
                          indent=1, end="\n")
        requests.append(request)
        finals.append(output_dir / "final")
    if requests:
        run_ranks("rsdlib.train", ["--request", *requests], workers)
    missing = [str(f.parent) for f in finals if not (f.parent / "train_summary.json").is_file()]
    if missing:
        raise RuntimeError(f"the training ranks ended without a trained model in {', '.join(missing)}")
    return finals


if __name__ == "__main__":
    raise SystemExit(main())
