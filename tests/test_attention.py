"""rsdlib.attention: the decoder's sdpa attention without repeat_kv on grouped heads (issue 31).

References: transformers' own "sdpa" and "eager" attention on the same weights (logits, padded batches,
sliding windows too), an explicit softmax(QK^T)V over repeated heads (the attention function itself),
and the decoder's traces with plain sdpa (token for token). The repeat_kv counts are taken with
transformers' own repeat_kv replaced by a counting wrapper.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import types

import pytest
import torch
import transformers
from _tiny import save_tiny_pair, tiny_lm, tiny_model
from transformers.integrations import sdpa_attention

import rsdlib.decoding as decoding
from rsdlib.attention import MAX_PACKED_QUERY, PACKED_SDPA, packed_sdpa_attention, use_for_decoding
from rsdlib.bridge import VocabBridge
from rsdlib.decoding import Decoder, DecodingConfig
from rsdlib.engine import ModelState, decode_mask_ok

ROWS = [[5, 6, 7, 8, 9, 10, 11, 12], [13, 14], [15, 16, 17, 18, 19]]  # left-padded to 8 columns


def qwen2_sliding(layers: int = 3):
    """A tiny Qwen2 whose layers after the first use a sliding window of 4 (padding AND a window in the mask)."""
    torch.manual_seed(3)
    cfg = transformers.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   use_sliding_window=True, sliding_window=4, max_window_layers=1,
                                   pad_token_id=0, eos_token_id=1)
    return transformers.Qwen2ForCausalLM(cfg).float().eval()


MODELS = {
    "qwen2-h4-kv2": lambda: tiny_model(seed=1, heads=4, kv_heads=2),
    "qwen3-head_dim": lambda: tiny_model(seed=2, arch="qwen3", heads=4, kv_heads=2, head_dim=16),
    "llama-h6-kv2": lambda: tiny_model(seed=3, arch="llama", hidden=48, heads=6, kv_heads=2),
    "qwen2-sliding": qwen2_sliding,
}


def decode_logits(model) -> list[torch.Tensor]:
    """Logits of a padded batch through ModelState: prefill, 4 one-token steps, a 3-token look-ahead
    (rolled back), a 2-token feed, 2 more one-token steps (one with a hole: a row that takes no step)."""
    state = ModelState(model, pad_id=0)
    out = [state.feed(ROWS)]
    for step in range(4):
        out.append(state.feed([[20 + step], [30 + step], [40 + step]]))
    out.extend(state.look_ahead([[2, 3, 4], [5], [6, 7]]))
    out.append(state.feed([[8, 9], [10, 11], [12, 13]], keep=2))
    out.append(state.feed([[21], [], [22]]))
    out.append(state.feed([[23], [24], [25]]))
    return out


@pytest.mark.parametrize("name", list(MODELS))
def test_packed_attention_matches_sdpa_and_eager_logits(name):
    sdpa = MODELS[name]()
    assert sdpa.config._attn_implementation == "sdpa"
    eager, packed = copy.deepcopy(sdpa), copy.deepcopy(sdpa)
    eager.set_attn_implementation("eager")
    assert use_for_decoding(packed) and packed.config._attn_implementation == PACKED_SDPA
    assert decode_mask_ok(packed) == decode_mask_ok(sdpa)  # the 4-D decode mask still applies where it did
    got = decode_logits(packed)
    for reference in (sdpa, eager):
        want = decode_logits(reference)
        assert len(got) == len(want)
        worst = max(float((g - w).abs().max()) for g, w in zip(got, want))
        assert worst < 1e-5, f"{name}: max |packed - {reference.config._attn_implementation}| = {worst}"


def test_use_for_decoding_leaves_other_models_alone():
    eager = tiny_model(seed=1)
    eager.set_attn_implementation("eager")
    no_groups = tiny_model(seed=1, heads=4, kv_heads=4)
    for model in (eager, no_groups, types.SimpleNamespace(), types.SimpleNamespace(config=None)):
        before = getattr(getattr(model, "config", None), "_attn_implementation", None)
        assert use_for_decoding(model) is False
        assert getattr(getattr(model, "config", None), "_attn_implementation", None) == before


def reference_attention(query, key, value, mask, n_rep, scaling, causal):
    """softmax(Q K^T * scale + mask) V with K, V repeated per query head (repeat_kv's order); (B, Q, H, Dv)."""
    key, value = key.repeat_interleave(n_rep, dim=1), value.repeat_interleave(n_rep, dim=1)
    scores = query @ key.transpose(-1, -2) * scaling  # (B, H, Q, L)
    if causal:
        scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return (scores.softmax(-1) @ value).transpose(1, 2)


@pytest.mark.parametrize("q_len, length, mask_kind", [
    (1, 9, "bool"), (1, 9, "float"), (3, 9, "bool"), (3, 9, "batch1"), (3, 9, "per-head"),
    (4, 4, "bool"), (MAX_PACKED_QUERY + 1, 20, "bool"), (5, 5, None),
])
def test_attention_function_matches_explicit_attention(q_len, length, mask_kind):
    """The function on its own, folded (one-token and short steps on a cache) and handed to transformers'
    sdpa (prefill, long queries, per-head masks, no mask): always the reference's numbers."""
    gen = torch.Generator().manual_seed(q_len * 100 + length)
    batch, kv_heads, n_rep, dim = 3, 2, 3, 8
    query = torch.randn(batch, q_len, kv_heads * n_rep, dim, generator=gen).transpose(1, 2)  # as models make it
    key, value = (torch.randn(batch, kv_heads, length, dim, generator=gen) for _ in range(2))
    valid = torch.ones(batch, length, dtype=torch.bool)
    if length > q_len:  # left padding (a prefill's first query would see nothing in a padded row)
        valid[1, :3] = valid[2, :1] = False
    causal = torch.ones(q_len, length, dtype=torch.bool).tril(length - q_len)  # queries are the last q_len
    mask = (valid[:, None, None, :] & causal)  # (B, 1, Q, L)
    if mask_kind == "float":
        mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    elif mask_kind == "batch1":
        mask = causal[None, None]  # (1, 1, Q, L)
    elif mask_kind == "per-head":
        mask = mask.expand(-1, kv_heads * n_rep, -1, -1).clone()
        mask[:, 0, :, -1] = False  # head 0 may not read the last column
    elif mask_kind is None:
        mask = None
    module = types.SimpleNamespace(num_key_value_groups=n_rep, is_causal=True)
    out, weights = packed_sdpa_attention(module, query, key, value, mask, scaling=dim ** -0.5)
    assert weights is None and out.shape == (batch, q_len, kv_heads * n_rep, dim)
    want = reference_attention(query, key, value, mask, n_rep, dim ** -0.5, causal=mask is None)
    assert torch.allclose(out, want, atol=1e-5), float((out - want).abs().max())


class RepeatKvCounter:
    """Replace transformers' repeat_kv (sdpa's and each listed model module's) with a counting wrapper;
    calls are counted only while a ModelState feeds tokens onto an existing cache (a decoding step)."""

    def __init__(self, monkeypatch, model_modules):
        self.steps = self.other = 0
        self.stepping = False
        for module in {sdpa_attention, *model_modules}:
            if hasattr(module, "repeat_kv"):
                monkeypatch.setattr(module, "repeat_kv", self.wrap(module.repeat_kv))
        feed_ids = ModelState.feed_ids

        def counted_feed_ids(state, *args, **kwargs):
            self.stepping = state.cache is not None
            try:
                return feed_ids(state, *args, **kwargs)
            finally:
                self.stepping = False

        monkeypatch.setattr(ModelState, "feed_ids", counted_feed_ids)

    def wrap(self, repeat_kv):
        def counting(hidden_states, n_rep):
            if n_rep > 1:
                if self.stepping:
                    self.steps += 1
                else:
                    self.other += 1
            return repeat_kv(hidden_states, n_rep)
        return counting


PROMPTS = [[5, 9, 13, 2, 7, 30, 31], [4, 8], [11, 12, 13, 14], [40, 41, 42, 43, 44, 45, 46, 20, 21, 22, 3], [6, 6, 6]]


@pytest.mark.parametrize("draft_tokens", [0, 2])
def test_padded_decoding_steps_never_call_repeat_kv(monkeypatch, draft_tokens):
    """Padded rows (prompts of 2 to 11 tokens, refills) decoded by the Decoder: no repeat_kv in any step
    on a cache, on every transformers version (before this attention: 2 calls per layer per step before
    5.23, and in every speculative round, Q = draft_tokens + 1, on all versions)."""
    teacher, student = tiny_lm(48, seed=1, layers=3), tiny_lm(48, seed=2)
    counter = RepeatKvCounter(monkeypatch, {sys.modules[type(m).__module__] for m in (teacher, student)})
    cfg = DecodingConfig(mode="rsd", temperature=0.9, threshold=0.05, max_new_tokens=10, draft_tokens=draft_tokens)
    dec = Decoder(teacher, student, VocabBridge.identity(48), cfg)
    traces = dec.generate(PROMPTS, list(range(len(PROMPTS))), batch_size=3)
    assert sum(len(t.token_ids) for t in traces) > 3 * len(PROMPTS)  # steps were taken
    assert counter.steps == 0, f"repeat_kv called {counter.steps} times in decoding steps"


def decode(teacher, student, cfg, packed: bool, monkeypatch):
    """Traces of the Decoder on fresh copies of the pair, with rsdlib's attention or with plain sdpa."""
    teacher, student = copy.deepcopy(teacher), copy.deepcopy(student)
    with monkeypatch.context() as patch:
        if not packed:
            patch.setattr(decoding, "use_for_decoding", lambda model: False)
        dec = Decoder(teacher, student, VocabBridge.identity(48), cfg)
    assert {m.config._attn_implementation for m in (teacher, student)} == {PACKED_SDPA if packed else "sdpa"}
    return dec.generate(PROMPTS * 2, [7 * i + 1 for i in range(2 * len(PROMPTS))], batch_size=4)


@pytest.mark.parametrize("mode, draft_tokens", [("rsd", 0), ("skd", 0), ("student", 0), ("rsd", 3)])
def test_decoder_traces_identical_with_plain_sdpa(monkeypatch, mode, draft_tokens):
    teacher, student = tiny_lm(48, seed=1, layers=3), tiny_lm(48, seed=2)
    cfg = DecodingConfig(mode=mode, temperature=0.9, threshold=0.05, max_new_tokens=16, stop_ids=(1,),
                         draft_tokens=draft_tokens)
    packed, plain = decode(teacher, student, cfg, True, monkeypatch), decode(teacher, student, cfg, False, monkeypatch)
    for a, b in zip(packed, plain):
        assert (a.token_ids, a.source, a.fallback, a.finish_reason) == (b.token_ids, b.source, b.fallback,
                                                                        b.finish_reason)
        for field in ("teacher_prob", "student_prob", "student_prob_raw", "student_entropy"):
            assert torch.allclose(torch.tensor(getattr(a, field)), torch.tensor(getattr(b, field)), atol=1e-4,
                                  equal_nan=True)


def test_saved_model_does_not_carry_the_attention_name(tmp_path):
    """A model switched for decoding saves a config.json that loads anywhere (no rsdlib import needed)."""
    folder = save_tiny_pair(tmp_path / "model")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    assert use_for_decoding(model)
    model.save_pretrained(tmp_path / "saved")
    text = (tmp_path / "saved" / "config.json").read_text()
    assert PACKED_SDPA not in text and "attn_implementation" not in json.loads(text)
    assert model.config._attn_implementation == PACKED_SDPA  # saving does not switch it back either
    code = ("import sys, transformers; m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1]); "
            "assert 'rsdlib' not in sys.modules; print(m.config._attn_implementation)")
    loaded = subprocess.run([sys.executable, "-c", code, str(tmp_path / "saved")], capture_output=True, text=True,
                            timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.split()[-1] == "sdpa"


def test_loading_for_training_keeps_transformers_sdpa(tmp_path):
    """Only the Decoder switches: rsdlib's loader (which training and scoring use) returns plain sdpa."""
    from rsdlib.models import load_model

    model, _ = load_model(save_tiny_pair(tmp_path / "model"), dtype="float32", device="cpu")
    assert model.config._attn_implementation == "sdpa"
