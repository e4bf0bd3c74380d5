"""Tiny Qwen-like model + tokenizer for tests: no network, built in milliseconds.

The builders live in ``rsdlib.standins`` (one home for every tiny model the smoke profile, the dry
run and the tests use); this module re-exports them for the tests:

- ``tiny_tokenizer()``: a byte-level BPE with no merges (every UTF-8 byte is one token), plus Qwen's
  special tokens and the Qwen3 thinking tokens, with a ChatML chat template.
- ``tiny_model(tokenizer)``: a random ``Qwen2ForCausalLM`` with tiny dims whose vocabulary is padded
  past ``len(tokenizer)`` (Qwen checkpoints also carry unused padding rows).
- ``save_tiny_pair(folder)``: both saved so ``AutoModelForCausalLM.from_pretrained(folder)`` and
  ``AutoTokenizer.from_pretrained(folder)`` load them.

Reuse from other tests with ``from _tiny import ...`` (``tests/`` is on ``sys.path`` under pytest).
"""

from __future__ import annotations

from pathlib import Path

from rsdlib.standins import CHATML_TEMPLATE, TINY_SPECIAL_TOKENS as SPECIAL_TOKENS, TINY_THINK_TOKENS as THINK_TOKENS  # noqa: F401
from rsdlib.standins import tiny_model, tiny_tokenizer  # noqa: F401


def save_tiny_pair(folder: str | Path, seed: int = 0, with_fim_pad: bool = True) -> Path:
    """Save a tiny model and its tokenizer in one folder (safetensors); returns the folder."""
    folder = Path(folder)
    tok = tiny_tokenizer(with_fim_pad=with_fim_pad)
    model = tiny_model(tok, seed=seed)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
