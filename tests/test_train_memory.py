"""Memory of the full fine-tunes (issue 29, item 4): rsdlib.memory.plan_training decides FSDP."""

import pytest

from rsdlib.memory import GIB, PAPER_STUDENTS, TRAIN_FSDP, plan_training, training_memory_rows

H100 = 80 * 10**9


def test_small_students_train_whole_and_the_4b_ones_sharded():
    plans = {m: plan_training(int(n), 8, H100, block_size=8192, vocab_rows=v) for m, (n, v) in PAPER_STUDENTS.items()}
    assert plans["Qwen/Qwen3-0.6B"].fsdp == "" and plans["meta-llama/Llama-3.2-1B-Instruct"].fsdp == ""
    for big in ("Qwen/Qwen3-4B", "microsoft/Phi-4-mini-instruct", "microsoft/Phi-4-mini-reasoning"):
        assert plans[big].fsdp == TRAIN_FSDP and plans[big].fits
    # 16 bytes per parameter (fp32 weights + gradients + AdamW's two moments), the field notes' ~60 GB
    assert plans["Qwen/Qwen3-4B"].state_bytes == int(4.02e9) * 16
    assert 55 < plans["microsoft/Phi-4-mini-instruct"].state_bytes / GIB < 60


def test_one_gpu_says_a_4b_full_fine_tune_does_not_fit():
    plan = plan_training(int(3.84e9), 1, H100, block_size=8192, vocab_rows=200_064)
    assert not plan.fits and plan.fsdp == "" and "does NOT fit" in plan.describe()
    assert plan_training(int(0.6e9), 1, H100).fits


def test_sharding_divides_the_states_not_the_headroom():
    one = plan_training(int(4e9), 2, 40 * 10**9, block_size=1024, vocab_rows=1000)
    four = plan_training(int(4e9), 4, 40 * 10**9, block_size=1024, vocab_rows=1000)
    headroom = one.per_gpu_bytes - one.state_bytes // 2
    assert four.per_gpu_bytes == four.state_bytes // 4 + headroom


def test_bad_arguments_and_the_readme_rows():
    with pytest.raises(ValueError):
        plan_training(0, 1)
    rows = training_memory_rows()
    assert [r["model"] for r in rows] == list(PAPER_STUDENTS)
