"""KV-cache sizing at the paper's shapes (issue 12, item 5): bytes per token, the batch that fits, the
decoder's batch plan, and a cache that grows by chunks instead of doubling."""

import logging

import _tiny
import pytest
import torch
from transformers import Qwen2Config, Qwen3Config

from rsdlib.bridge import VocabBridge
from rsdlib.decoding import Decoder, DecodingConfig
from rsdlib.engine import CACHE_CHUNK, GrowingLayer, ModelState
from rsdlib.memory import (
    GIB,
    CacheUser,
    batch_for_memory,
    dtype_bytes,
    free_device_bytes,
    kv_cache_bytes_per_token,
    plan_batch,
)

# The paper pair's real shapes (the models' config.json): s1.1-7B is a Qwen2.5-7B (no head_dim key:
# 3584 / 28 = 128), Qwen3-0.6B has head_dim 128 although 1024 / 16 = 64.
QWEN25_7B = dict(vocab_size=152_064, hidden_size=3584, intermediate_size=18_944, num_hidden_layers=28,
                 num_attention_heads=28, num_key_value_heads=4)
QWEN3_06B = dict(vocab_size=151_936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128)
TEACHER_BF16, STUDENT_BF16 = 57_344, 114_688  # 28 x 4 x 128 x 2 x 2 and 28 x 8 x 128 x 2 x 2 bytes


def test_kv_bytes_per_token_of_the_paper_models():
    assert kv_cache_bytes_per_token(Qwen2Config(**QWEN25_7B), torch.bfloat16) == TEACHER_BF16
    assert kv_cache_bytes_per_token(Qwen3Config(**QWEN3_06B), torch.bfloat16) == STUDENT_BF16
    assert kv_cache_bytes_per_token(Qwen3Config(**QWEN3_06B), "float32") == 2 * STUDENT_BF16
    # a config.json dict works too, with or without head_dim; dtype names and aliases are accepted
    assert kv_cache_bytes_per_token(QWEN25_7B, "bf16") == TEACHER_BF16
    assert kv_cache_bytes_per_token({"text_config": QWEN3_06B}, "torch.bfloat16") == STUDENT_BF16
    # no grouped-query attention: KV heads = attention heads
    no_gqa = {k: v for k, v in QWEN25_7B.items() if k != "num_key_value_heads"}
    assert kv_cache_bytes_per_token(no_gqa, torch.float16) == 28 * 28 * 128 * 2 * 2
    assert dtype_bytes(torch.float32) == 4 and dtype_bytes("half") == 2


def test_kv_bytes_refuses_incomplete_configs_and_unknown_dtypes():
    with pytest.raises(ValueError, match="num_hidden_layers"):
        kv_cache_bytes_per_token({"hidden_size": 64, "num_attention_heads": 4}, torch.float32)
    with pytest.raises(ValueError, match="head_dim / hidden_size"):
        kv_cache_bytes_per_token({"num_hidden_layers": 2, "num_attention_heads": 4}, torch.float32)
    with pytest.raises(ValueError, match="'auto'"):
        kv_cache_bytes_per_token(QWEN25_7B, "auto")


def test_paper_batch_of_64_at_8k_needs_90_gb():
    per_token = kv_cache_bytes_per_token(QWEN25_7B, "bfloat16") + kv_cache_bytes_per_token(QWEN3_06B, "bfloat16")
    need = 64 * 8192 * per_token
    assert need == 90_194_313_216  # 90.2 GB = 84.0 GiB for the pair's two caches
    assert round(need / 1e9, 1) == 90.2 and round(need / GIB, 1) == 84.0
    assert batch_for_memory(need, 8192, per_token) == 64
    assert batch_for_memory(need - 1, 8192, per_token) == 63
    assert batch_for_memory(need, [8192, 8192], [TEACHER_BF16, STUDENT_BF16]) == 64  # one entry per model
    assert batch_for_memory(80 * GIB, 8192, per_token) == 60  # an 80 GiB budget
    assert batch_for_memory(need, 8192, per_token, max_batch=16) == 16
    assert batch_for_memory(per_token, 8192, per_token) == 0  # not even one row
    with pytest.raises(ValueError, match="row lengths"):
        batch_for_memory(need, [8192], [1, 2])


def users(tokens=8192, device="cuda:0"):
    return [CacheUser("teacher", TEACHER_BF16, tokens, device), CacheUser("student", STUDENT_BF16, tokens, device)]


def test_plan_batch_takes_the_tightest_budget():
    row = 8192 * (TEACHER_BF16 + STUDENT_BF16)
    no_gpu = lambda device: None  # noqa: E731
    assert free_device_bytes("cpu") is None  # CPU: only max_cache_gib limits the batch
    plan = plan_batch(64, users(), free_bytes=no_gpu)
    assert (plan.batch_size, plan.limited_by, plan.budgets_gib) == (64, "request", {})
    assert plan.cache_gib_at_batch == pytest.approx(84.0, abs=0.05)
    plan = plan_batch(64, users(), max_cache_gib=40, free_bytes=no_gpu)
    assert (plan.batch_size, plan.limited_by) == (40 * GIB // row, "max_cache_gib")
    # an 80 GB card after loading the pair's weights: ~60 GiB free, 90% of it for the cache
    plan = plan_batch(64, users(), free_bytes=lambda device: 60 * GIB)
    assert (plan.batch_size, plan.limited_by) == (int(0.9 * 60 * GIB // row), "free memory on cuda:0")
    assert plan.batch_size == 41 and "batch 64 -> 41" in plan.describe()
    assert plan_batch(64, users(), max_cache_gib=20, free_bytes=lambda d: 60 * GIB).limited_by == "max_cache_gib"
    assert plan_batch(8, users(), max_cache_gib=200, free_bytes=lambda d: 600 * GIB).batch_size == 8
    # models on two devices: each device's free memory bounds only the cache living there
    split = [CacheUser("teacher", TEACHER_BF16, 8192, "cuda:0"), CacheUser("student", STUDENT_BF16, 8192, "cuda:1")]
    plan = plan_batch(64, split, free_bytes=lambda d: 50 * GIB if d == "cuda:1" else 80 * GIB)
    assert (plan.batch_size, plan.limited_by) == (int(0.9 * 50 * GIB // (8192 * STUDENT_BF16)), "free memory on cuda:1")
    with pytest.raises(MemoryError, match=r"one decoding row needs 1\.31 GiB .* max_cache_gib budget is 1\.00 GiB"):
        plan_batch(64, users(), max_cache_gib=1, free_bytes=no_gpu)
    with pytest.raises(ValueError, match="max_cache_gib must be > 0"):
        plan_batch(64, users(), max_cache_gib=0)


# ---------------------------------------------------------------- the decoder's plan
def tiny_lm(vocab=48, seed=1, layers=2):
    return _tiny.tiny_lm(vocab, seed=seed, layers=layers, max_positions=1024)


PROMPTS = [[5, 9, 13, 2, 7], [4, 8], [11, 12, 13, 14], [40, 41, 42], [6, 7, 8, 9, 10, 11]]


def test_decoder_sizes_its_batch_from_max_cache_gib_and_reports_it(caplog):
    teacher, student = tiny_lm(seed=1, layers=3), tiny_lm(seed=2)
    cfg = DecodingConfig(mode="rsd", temperature=0.9, threshold=0.05, max_new_tokens=40)
    dec = Decoder(teacher, student, VocabBridge.identity(48), cfg)
    # per token: teacher 3 layers x 2 KV heads x 8 x 2 x 4 bytes = 384, student 2 layers: 256
    row_tokens = max(map(len, PROMPTS)) + cfg.max_new_tokens + CACHE_CHUNK + 1
    assert [(u.name, u.bytes_per_token, u.tokens_per_row) for u in dec.cache_users(PROMPTS)] == [
        ("teacher", 384, row_tokens), ("student", 256, row_tokens)]
    budget = 2.5 * row_tokens * (384 + 256) / GIB  # room for 2 full-length rows
    unlimited = dec.generate(PROMPTS, [1, 2, 3, 4, 5], batch_size=4)
    assert dec.stats["batch"]["batch_size"] == 4 and dec.stats["batch"]["limited_by"] == "request"
    with caplog.at_level(logging.INFO, logger="rsdlib.decoding"):
        limited = dec.generate(PROMPTS, [1, 2, 3, 4, 5], batch_size=4, max_cache_gib=budget)
    plan = dec.stats["batch"]
    assert (plan["batch_size"], plan["requested_batch_size"], plan["limited_by"]) == (2, 4, "max_cache_gib")
    assert any("batch 4 -> 2 (limited by max_cache_gib)" in r.getMessage() for r in caplog.records)
    assert [t.token_ids for t in limited] == [t.token_ids for t in unlimited]  # the batch never changes a trace
    with pytest.raises(MemoryError, match="one decoding row needs"):
        dec.generate(PROMPTS, [1, 2, 3, 4, 5], batch_size=4, max_cache_gib=budget / 4)


def test_teacher_rows_count_the_spelling_of_student_only_tokens():
    v_s, v_t = 40, 168
    mask = torch.zeros(v_t, dtype=torch.bool)
    mask[v_s - 1:] = True
    bridge = VocabBridge(v_t, v_s, mask, torch.zeros(v_s, dtype=torch.bool), {v_s - 1: [7, 8, 9]})
    cfg = DecodingConfig(mode="skd", max_new_tokens=10)
    dec = Decoder(tiny_lm(v_t), tiny_lm(v_s), bridge, cfg)
    teacher, student = dec.cache_users([[3, v_s - 1, 4], [5, 6, 7, 8]])
    assert student.tokens_per_row == 4 + 10 + CACHE_CHUNK + 1
    assert teacher.tokens_per_row == 5 + 10 + CACHE_CHUNK + 1 + 4 * 2  # `</think>` in the prompt is 3 teacher tokens


# ---------------------------------------------------------------- the cache grows by chunks
def capacity(layer):
    return layer._kbuf.shape[-2]


def test_cache_buffers_never_hold_more_than_a_chunk_of_spare_columns():
    """Appends, row drops, merges and left trims keep capacity < live width + CACHE_CHUNK (doubling held up to 2x)."""
    gen = torch.Generator().manual_seed(0)
    layer = GrowingLayer()
    for _ in range(3):  # 3 x 400 positions
        k = torch.randn(4, 2, 400, 8, generator=gen)
        layer.update(k, k)
        assert capacity(layer) - layer.get_seq_length() < CACHE_CHUNK
    assert capacity(layer) == 1280  # 1,200 live: doubling would hold 2,400
    layer.batch_select_indices(torch.tensor([0, 2, 3]))  # a row leaves: was re-allocated at 2x
    assert capacity(layer) == 1280 and layer.keys.shape == (3, 2, 1200, 8)
    layer.drop_left(700)
    assert capacity(layer) == 512 and layer.get_seq_length() == 500
    other = GrowingLayer()
    new_rows = torch.randn(2, 2, 30, 8, generator=gen)
    other.update(new_rows, new_rows)
    before = layer.keys.clone()
    layer.stack_below(other, 500)  # a refill: new rows merged below, left-padded with zeros
    assert capacity(layer) == 512 and layer.keys.shape == (5, 2, 500, 8)
    assert torch.equal(layer.keys[:3], before) and torch.equal(layer.keys[3:, :, 470:], new_rows)
    assert not layer.keys[3:, :, :470].any()


def test_decoder_states_stay_within_a_chunk_of_their_width():
    model = tiny_lm()
    state, other = ModelState(model, 0), ModelState(model, 0)
    state.feed([list(range(2, 40)) * 8, [3, 4]])  # 304 and 2 tokens
    other.feed([[5, 6, 7]])
    state.extend(other)
    state.keep(torch.tensor([1, 2]))  # the long row leaves: left columns trimmed
    for _ in range(3):
        state.feed([[9], [10]])
    for layer in state.cache.layers:
        assert layer.get_seq_length() == state.mask.shape[1] == 6
        assert capacity(layer) == CACHE_CHUNK
