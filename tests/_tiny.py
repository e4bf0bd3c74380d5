"""Tiny Qwen-like model + tokenizer for tests: no network, built in milliseconds.

- ``tiny_tokenizer()``: a byte-level BPE with no merges (every UTF-8 byte is one token, like Qwen's
  byte-level alphabet), plus Qwen's special tokens ``<|endoftext|>``, ``<|im_start|>``,
  ``<|im_end|>``, ``<|fim_pad|>`` (optional) and the Qwen3 thinking tokens ``<think>``/``</think>``,
  with a ChatML chat template. Wrapped in ``PreTrainedTokenizerFast`` so it saves/loads like Qwen's.
- ``tiny_model(tokenizer)``: a random ``Qwen2ForCausalLM`` with tiny dims whose vocabulary is padded
  past ``len(tokenizer)`` (Qwen checkpoints also carry unused padding rows).
- ``save_tiny_pair(folder)``: both saved so ``AutoModelForCausalLM.from_pretrained(folder)`` and
  ``AutoTokenizer.from_pretrained(folder)`` load them.

Reuse from other tests with ``from tests._tiny import tiny_tokenizer, tiny_model``
(or ``from _tiny import ...`` when ``tests/`` is on ``sys.path``, as under pytest).
"""

from __future__ import annotations

from pathlib import Path

import torch

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_pad|>")
THINK_TOKENS = ("<think>", "</think>")  # added but not "special" (Qwen3 keeps them in decoded text)


def _byte_alphabet() -> list[str]:
    """GPT-2/Qwen byte-to-unicode table: the 256 printable characters byte-level BPE uses."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def tiny_tokenizer(with_fim_pad: bool = True):
    """Byte-level tokenizer with Qwen's special tokens and a ChatML template (eos = ``<|im_end|>``)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(_byte_alphabet())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    specials = [t for t in SPECIAL_TOKENS if with_fim_pad or t != "<|fim_pad|>"]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",  # as Qwen2.5-Instruct ships it; rsdlib.train picks <|fim_pad|>
        chat_template=CHATML_TEMPLATE,
    )
    tok.padding_side = "right"
    return tok


def tiny_model(tokenizer=None, seed: int = 0, layers: int = 2, hidden: int = 32, vocab_size: int | None = None):
    """Random tiny ``Qwen2ForCausalLM`` (fp32, CPU); vocabulary padded to a multiple of 64."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    if vocab_size is None:
        vocab_size = (len(tokenizer) + 63) // 64 * 64
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        bos_token_id=None,
    )
    return Qwen2ForCausalLM(cfg).float().eval()


def save_tiny_pair(folder: str | Path, seed: int = 0, with_fim_pad: bool = True) -> Path:
    """Save a tiny model and its tokenizer in one folder (safetensors); returns the folder."""
    folder = Path(folder)
    tok = tiny_tokenizer(with_fim_pad=with_fim_pad)
    model = tiny_model(tok, seed=seed)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
