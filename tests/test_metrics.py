"""rsdlib.metrics: estimators on hand-computed values, token metrics on a hand-computed example,
batched teacher-forced scoring against a slow per-token reference on a tiny random Qwen2."""

from __future__ import annotations

import math

import pytest
import torch
from _tiny import tiny_lm

from rsdlib.metrics import (
    avg_at_k,
    maj_at_k,
    majority_answer,
    mean_pass_at_k,
    pass_at_k,
    perplexity,
    score_traces,
    sub_threshold_ratio,
    summarize_dataset,
    surprisal,
    token_logprobs_and_entropy,
)


# ----------------------------------------------------------------------------------------------
# Estimators
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "n,c,k,expected",
    [
        (5, 2, 1, 0.4),  # c / n
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (10, 3, 5, 11 / 12),  # 1 - C(7,5)/C(10,5) = 1 - 21/252
        (4, 0, 2, 0.0),
        (4, 3, 2, 1.0),  # n - c < k
        (64, 64, 1, 1.0),
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_binomial_formula():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 2, 5)


def test_avg_at_k_hand_values():
    correct = [[1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]]
    assert avg_at_k(correct) == pytest.approx((0.75 + 0 + 1) / 3)
    assert avg_at_k(correct, k=2) == pytest.approx((0.5 + 0 + 1) / 3)
    assert avg_at_k(torch.tensor(correct, dtype=torch.bool)) == pytest.approx(0.5833333333)
    # rows of different lengths: each problem's own fraction
    assert avg_at_k([[True], [True, False, False, False]]) == pytest.approx((1 + 0.25) / 2)
    with pytest.raises(ValueError):
        avg_at_k([[1, 0]], k=4)
    # pass@1 averaged over problems equals avg@n
    assert mean_pass_at_k(correct, 1) == pytest.approx(avg_at_k(correct))


def test_maj_at_k_hand_values():
    answers = [["1", "2", "2"], ["3", "3", "4"], ["5", "6", None], [None, None, None]]
    # p0: "2" wins (right); p1: "3" wins (wrong); p2: tie 5/6 -> first seen "5" (wrong); p3: no vote
    assert maj_at_k(answers, ["2", "4", "6", "6"]) == pytest.approx(1 / 4)
    assert maj_at_k(answers, ["2", "4", "5", "6"]) == pytest.approx(2 / 4)
    # k=1 uses only the first sample
    assert maj_at_k(answers, ["1", "3", "5", "6"], k=1) == pytest.approx(3 / 4)
    # judged by per-sample correctness instead of golds: the winner's first sample decides
    correct = [[0, 1, 1], [1, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert maj_at_k(answers, correct=correct) == pytest.approx(2 / 4)
    # a custom equivalence ("0.5" counts as "1/2")
    assert maj_at_k([["0.5", "0.5", "1"]], ["1/2"], is_equivalent=lambda a, g: float(eval(g)) == float(a)) == 1.0
    assert majority_answer([" 7", "8", "7 "]) == "7"
    assert majority_answer(["b", "a", "a", "b"]) == "b"  # tie: first seen
    with pytest.raises(ValueError):
        maj_at_k(answers)


# ----------------------------------------------------------------------------------------------
# Token metrics: a hand-computed example
# ----------------------------------------------------------------------------------------------
def test_token_metrics_hand_example():
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.005, 0.495, 0.5]])  # (T=2, V=3)
    logits = probs.log() + 3.0  # a shift does not change the softmax
    targets = torch.tensor([0, 0])
    logprobs, entropy = token_logprobs_and_entropy(logits, targets)
    assert logprobs.shape == (2,) and entropy.shape == (2,)
    assert logprobs.tolist() == pytest.approx([math.log(0.5), math.log(0.005)], rel=1e-5)
    h1 = -(0.005 * math.log(0.005) + 0.495 * math.log(0.495) + 0.5 * math.log(0.5))
    assert entropy.tolist() == pytest.approx([1.5 * math.log(2), h1], rel=1e-5)
    assert surprisal(logprobs).tolist() == pytest.approx([math.log(2), -math.log(0.005)], rel=1e-5)
    # PPL = exp(mean surprisal) = 1 / sqrt(0.5 * 0.005) = 20
    assert perplexity(logprobs) == pytest.approx(20.0, rel=1e-5)
    assert sub_threshold_ratio(logprobs.exp(), 0.01) == pytest.approx(0.5)
    assert sub_threshold_ratio(logprobs.exp(), 0.001) == 0.0
    assert perplexity(logprobs, mask=torch.tensor([True, False])) == pytest.approx(2.0, rel=1e-5)
    # temperature 2: probabilities proportional to sqrt(p)
    lp2, _ = token_logprobs_and_entropy(logits, targets, temperature=2.0)
    s = probs.sqrt()
    assert lp2.tolist() == pytest.approx((s[:, 0] / s.sum(-1)).log().tolist(), rel=1e-5)
    # batched leading dims are kept: (B, T, V) -> (B, T)
    lp3, ent3 = token_logprobs_and_entropy(logits.expand(4, 2, 3), targets.expand(4, 2))
    assert lp3.shape == (4, 2) and torch.allclose(ent3[2], entropy)


# ----------------------------------------------------------------------------------------------
# score_traces against a slow per-token reference on a tiny random Qwen2
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_qwen2():
    model = tiny_lm(100, seed=0, init=None, max_positions=256, eos_token_id=None)
    with torch.no_grad():  # sharpen the random head so some tokens fall below 1%
        model.lm_head.weight.mul_(8.0)
    return model


def slow_reference(model, prompt, completion, temperature=1.0, threshold=0.01):
    """One unpadded forward per completion token, last position only."""
    logprobs, entropies = [], []
    with torch.no_grad():
        for t, token in enumerate(completion):
            ids = torch.tensor([list(prompt) + list(completion[:t])])
            logits = model(input_ids=ids).logits[0, -1] / temperature  # (V,)
            logp = torch.log_softmax(logits.double(), -1)
            logprobs.append(float(logp[token]))
            entropies.append(float(-(logp.exp() * logp).sum()))
    n = len(completion)
    return {
        "token_logprobs": logprobs,
        "token_entropy": entropies,
        "perplexity": math.exp(-sum(logprobs) / n),
        "sub_threshold_ratio": sum(math.exp(x) < threshold for x in logprobs) / n,
        "n_tokens": n,
    }


def _random_traces(seed=1, n=7):
    g = torch.Generator().manual_seed(seed)
    prompts, completions = [], []
    for i in range(n):
        p_len = int(torch.randint(1, 9, (1,), generator=g))
        c_len = int(torch.randint(1, 14, (1,), generator=g))
        prompts.append(torch.randint(1, 100, (p_len,), generator=g).tolist())
        completions.append(torch.randint(1, 100, (c_len,), generator=g).tolist())
    return prompts, completions


@pytest.mark.parametrize("batch_size,chunk_tokens,temperature", [(3, 4, 1.0), (8, None, 1.0), (1, 1024, 0.7)])
def test_score_traces_matches_slow_reference(tiny_qwen2, batch_size, chunk_tokens, temperature):
    prompts, completions = _random_traces()
    out = score_traces(
        tiny_qwen2, prompts, completions, batch_size=batch_size, chunk_tokens=chunk_tokens, temperature=temperature
    )
    assert len(out) == len(prompts)
    any_low = False
    for res, p, c in zip(out, prompts, completions):
        ref = slow_reference(tiny_qwen2, p, c, temperature=temperature)
        assert res["n_tokens"] == len(c) == len(res["token_logprobs"]) == len(res["token_entropy"])
        assert res["token_logprobs"] == pytest.approx(ref["token_logprobs"], abs=1e-4)
        assert res["token_entropy"] == pytest.approx(ref["token_entropy"], abs=1e-4)
        assert res["surprisal"] == pytest.approx([-x for x in ref["token_logprobs"]], abs=1e-4)
        assert res["perplexity"] == pytest.approx(ref["perplexity"], rel=1e-4)
        assert res["sub_threshold_ratio"] == pytest.approx(ref["sub_threshold_ratio"])
        any_low |= ref["sub_threshold_ratio"] > 0
    assert any_low, "the example should contain sub-1% tokens"


def test_score_traces_one_forward_per_batch(tiny_qwen2):
    prompts, completions = _random_traces(seed=2, n=7)
    calls = []
    handle = tiny_qwen2.model.register_forward_hook(lambda mod, args, out: calls.append(1))
    try:
        score_traces(tiny_qwen2, prompts, completions, batch_size=3)
    finally:
        handle.remove()
    assert len(calls) == 3  # ceil(7 / 3), not one per token


def test_score_traces_edge_cases(tiny_qwen2):
    out = score_traces(tiny_qwen2, [[5, 6], [7]], [[], [8, 9]])
    assert out[0]["n_tokens"] == 0 and math.isnan(out[0]["perplexity"])
    assert out[1]["n_tokens"] == 2
    with pytest.raises(ValueError, match="empty"):
        score_traces(tiny_qwen2, [[]], [[1, 2]])


# ----------------------------------------------------------------------------------------------
# Table 2 / Table 6 summaries
# ----------------------------------------------------------------------------------------------
def _records(mode="rsd"):
    cfg = {"mode": mode}
    return [
        {"problem_id": "p1", "status": "correct", "kept": True, "student_prob_raw": [0.5, 0.005, 0.9],
         "fallback": [False, True, False], "config": cfg},
        {"problem_id": "p1", "status": "correct", "kept": False, "student_prob_raw": [0.001] * 5,
         "fallback": [True] * 5, "config": cfg},
        {"problem_id": "p2", "status": "wrong", "kept": False, "student_prob_raw": [0.001] * 4,
         "fallback": [True] * 4, "config": cfg},
        {"problem_id": "p3", "status": "correct", "kept": True, "student_prob_raw": [0.2, 0.3, 0.009, 0.5, 0.6],
         "fallback": [False, False, False, False, True], "config": cfg},
    ]


def test_summarize_dataset_hand_example():
    row = summarize_dataset(_records(), name="RSD", n_problems=4)
    assert row["Datasets"] == "RSD"
    assert row["Correctly solved"] == "2/4"
    # only kept traces: fallback 2 of 8 tokens; sub-1% 2 of 8 pooled tokens (mean of ratios would be 26.67)
    assert row["Fallback rate (%)"] == 25.0
    assert row["Sub-1% tokens (%)"] == 25.0
    assert row["Average token count"] == 4
    assert row["n_traces"] == 2 and row["n_tokens"] == 8 and row["n_sub_threshold"] == 2
    # default n_problems: distinct ids in the records
    assert summarize_dataset(_records())["Correctly solved"] == "2/3"


def test_summarize_dataset_not_applicable_and_status_fallback():
    teacher = summarize_dataset(_records(mode="teacher"), n_problems=1000)
    assert teacher["Fallback rate (%)"] == "Not Applicable" and teacher["Correctly solved"] == "2/1000"
    # no "kept" field: the dataset is every correct sample (here p1 twice and p3)
    recs = [{k: v for k, v in r.items() if k != "kept"} for r in _records()]
    row = summarize_dataset(recs, threshold=0.01)
    assert row["n_traces"] == 3 and row["n_tokens"] == 13
    assert row["Sub-1% tokens (%)"] == round(100 * 7 / 13, 2)
    # s1K-1.1-like records: text only, scored probabilities under "student_prob", no fallback lists
    s1k = [{"problem_id": f"q{i}", "status": "correct", "student_prob": [0.5, 0.001], "n_tokens": 2} for i in range(3)]
    row = summarize_dataset(s1k)
    assert row["Correctly solved"] == "3/3" and row["Fallback rate (%)"] == "Not Applicable"
    assert row["Sub-1% tokens (%)"] == 50.0 and row["prob_field"] == "student_prob"
    # NaN probabilities (student not run) are not counted
    nan = [{"problem_id": "a", "status": "correct", "student_prob": [float("nan")] * 3, "fallback": [False] * 3}]
    assert summarize_dataset(nan)["Sub-1% tokens (%)"] == "Not Available"
