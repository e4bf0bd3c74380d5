"""Thin test helpers over ``rsdlib.standins``, the one builder of tiny random models (no network, milliseconds).

- ``tiny_tokenizer()``: a byte-level BPE with no merges (every UTF-8 byte is one token), plus Qwen's
  special tokens and the Qwen3 thinking tokens, with a ChatML chat template.
- ``tiny_model(tokenizer, ...)``: ``rsdlib.standins.tiny_model``, a random ``Qwen2ForCausalLM`` (or
  Qwen3 / Llama) with tiny dims whose vocabulary is padded past ``len(tokenizer)``.
- ``tiny_lm(vocab_size, seed)``: a tokenizer-free tiny Qwen2 over ids ``0..vocab_size-1`` (pad 0, eos 1)
  whose large initializer range (0.6) gives peaked, non-uniform next-token distributions: the models of
  the decoder's statistical tests.
- ``save_tiny_pair(folder)``: a tiny model and its tokenizer saved so ``AutoModelForCausalLM.from_pretrained(folder)``
  and ``AutoTokenizer.from_pretrained(folder)`` load them.
- ``StopAt(step)``: a Trainer callback that interrupts a training run after optimizer step ``step``.
- ``tiny_pair()``: two of those models (teacher seed 1, student seed 2) with their identity bridge.
- ``ALPHA``: the false-alarm rate of each statistical test on these models (seeds are fixed, so runs repeat).

Import from tests with ``from _tiny import ...`` (``tests/`` is on ``sys.path`` under pytest).
"""

from __future__ import annotations

from pathlib import Path

from rsdlib.standins import CHATML_TEMPLATE, tiny_model, tiny_tokenizer  # noqa: F401
from rsdlib.standins import TINY_SPECIAL_TOKENS as SPECIAL_TOKENS  # noqa: F401
from rsdlib.standins import TINY_THINK_TOKENS as THINK_TOKENS  # noqa: F401

ALPHA = 1e-4


def tiny_lm(vocab_size: int, seed: int, layers: int = 2, init: float | None = 0.6, max_positions: int = 512,
            **options):
    """A tokenizer-free tiny Qwen2 (pad 0, eos 1); ``init=None`` keeps transformers' initializer range."""
    options = {"eos_token_id": 1, "pad_token_id": 0, **options}
    return tiny_model(seed=seed, layers=layers, vocab_size=vocab_size, max_positions=max_positions, init=init,
                      **options)


def save_tiny_pair(folder: str | Path, seed: int = 0, with_fim_pad: bool = True) -> Path:
    """Save a tiny model and its tokenizer in one folder (safetensors); returns the folder."""
    folder = Path(folder)
    tok = tiny_tokenizer(with_fim_pad=with_fim_pad)
    model = tiny_model(tok, seed=seed)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def StopAt(step: int):  # noqa: N802 (used as a class)
    """A ``TrainerCallback`` that interrupts a run after optimizer step ``step`` (its checkpoint is written first)."""
    from transformers import TrainerCallback

    class _StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                control.should_training_stop = True

    return _StopAt()


def tiny_pair():
    """A tiny teacher/student pair over ``tiny_tokenizer()`` (identical vocabularies), shaped like a
    ``rsdlib.models.ModelPair`` for ``run_trace_job``."""
    from types import SimpleNamespace

    from rsdlib.bridge import VocabBridge

    tok = tiny_tokenizer()
    teacher, student = tiny_model(tok, seed=1), tiny_model(tok, seed=2)
    V = teacher.config.vocab_size
    return SimpleNamespace(teacher=teacher, student=student, student_tokenizer=tok, teacher_tokenizer=tok,
                           bridge=VocabBridge.from_tokenizers(tok, tok, V, V))
