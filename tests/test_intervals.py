"""Intervals, paired differences and minimum detectable effects of rsdlib.metrics (issue 16).

Known values (Wilson for 3/6 against scipy and the closed form, the bootstrap of a constant), a
constructed paired example, determinism, and coverage on simulated data: over a few hundred simulated
datasets about 95% of the intervals must cover the true value.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from rsdlib.metrics import (
    Interval,
    accuracy_difference_se,
    avg_at_k,
    bootstrap_accuracy,
    bootstrap_average_accuracy,
    bootstrap_mean,
    bootstrap_ratio,
    minimum_detectable_effect,
    paired_accuracy_difference,
    paired_ratio_difference,
    wilson_interval,
)


def test_wilson_three_of_six_known_value():
    ci = wilson_interval(3, 6)
    assert ci.estimate == 0.5 and ci.n == 6 and ci.method == "wilson"
    assert ci.low == pytest.approx(0.18761, abs=1e-5) and ci.high == pytest.approx(0.81239, abs=1e-5)
    ref = stats.binomtest(3, 6).proportion_ci(confidence_level=0.95, method="wilson")
    assert (ci.low, ci.high) == pytest.approx((ref.low, ref.high), abs=1e-12)


@pytest.mark.parametrize("k, n", [(0, 6), (6, 6), (1, 1), (17, 40)])
def test_wilson_matches_scipy_and_edges(k, n):
    ci = wilson_interval(k, n)
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert (ci.low, ci.high) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert 0.0 <= ci.low <= ci.estimate <= ci.high <= 1.0
    assert ci.high - ci.low > 0  # not degenerate at 0/n or n/n, unlike Wald


def test_wilson_refuses_bad_counts_and_empty_is_nan():
    with pytest.raises(ValueError, match="successes <= n"):
        wilson_interval(7, 6)
    assert math.isnan(wilson_interval(0, 0).low)


def test_bootstrap_of_a_constant_is_that_constant():
    for ci in (bootstrap_mean([3.5] * 20), bootstrap_ratio([2] * 10, [8] * 10)):
        assert ci.low == ci.high == ci.estimate
        assert ci.se == 0.0
    assert bootstrap_mean([3.5] * 20).estimate == 3.5
    assert bootstrap_ratio([2] * 10, [8] * 10).estimate == 0.25


def test_bootstrap_accuracy_estimate_is_avg_at_k_and_problems_are_the_unit():
    correct = [[1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 1, 0]]
    ci = bootstrap_accuracy(correct)
    assert ci.estimate == pytest.approx(avg_at_k(correct)) and ci.n == 3
    # resampling problems: the replicate means can only be averages of the per-problem scores 1, 0, 0.5,
    # so with 3 problems the bounds are multiples of 1/6; resampling samples (12 units) would not be
    assert round(ci.low * 6, 9) == int(round(ci.low * 6)) and round(ci.high * 6, 9) == int(round(ci.high * 6))
    # more samples per problem do not shrink the interval when problems are all-or-nothing
    wide = bootstrap_accuracy([[1] * 64, [0] * 64, [1] * 64, [0] * 64])
    narrow_if_samples_were_units = bootstrap_accuracy([[1], [0], [1], [0]])
    assert (wide.low, wide.high) == (narrow_if_samples_were_units.low, narrow_if_samples_were_units.high)


def test_intervals_are_seeded():
    x = np.random.default_rng(5).normal(size=30)
    assert bootstrap_mean(x, seed=3) == bootstrap_mean(x, seed=3)
    assert bootstrap_mean(x, seed=3) != bootstrap_mean(x, seed=4)
    c = np.random.default_rng(6).random((12, 4)) < 0.4
    assert bootstrap_accuracy(c) == bootstrap_accuracy(c)


def test_ratio_pools_tokens_not_trace_ratios():
    # one long trace with no sub-1% token, one short trace with all its tokens sub-1%
    ci = bootstrap_ratio([0, 2], [98, 2])
    assert ci.estimate == pytest.approx(0.02)  # pooled 2/100, not the mean of ratios 0.5
    assert ci.low == 0.0 and ci.high == 1.0  # a draw of the short trace twice gives 4/4


def test_paired_accuracy_difference_constructed_example():
    # 8 problems; the model gains on problems p0-p3 every time and never loses: the difference is +0.5
    base = {"MATH500": {f"p{i}": [False] for i in range(8)}}
    model = {"MATH500": {f"p{i}": [i < 4] for i in range(8)}}
    diff = paired_accuracy_difference(model, base)
    ci = diff["MATH500"]
    assert ci.estimate == pytest.approx(0.5) and ci.n == 8 and ci.method == "paired bootstrap"
    assert 0 < ci.low < 0.5 < ci.high <= 1
    assert ci.excludes_zero
    assert diff["Average"].estimate == pytest.approx(0.5)
    # the same results twice: estimate 0, and 8 problems cannot rule out a difference: not [0, 0]
    same = paired_accuracy_difference(model, model)["MATH500"]
    assert same.estimate == 0.0 and same.low < 0 < same.high and not same.excludes_zero
    assert same.method.startswith("wilson (no variation")


def test_no_variation_is_not_certainty():
    # 0 of 6 problems solved: the bootstrap alone would say [0, 0]; Wilson's 0/6 interval instead
    ci = bootstrap_accuracy([[False]] * 6)
    assert ci.estimate == 0.0 and ci.low == 0.0
    assert ci.high == pytest.approx(wilson_interval(0, 6).high) and ci.method.startswith("wilson (no variation")
    # the average of benchmarks with 1, 1, 2, 6 problems, none solved: Wilson at the effective n = 16 / 2.667 = 6
    avg = bootstrap_average_accuracy({"a": [[0]], "b": [[0]], "c": [[0]] * 2, "d": [[0]] * 6})
    assert avg.high == pytest.approx(wilson_interval(0, 6).high)
    # all-equal differences of +1 on 4 problems: Wilson's 4/4 on [-1, 1]
    d = paired_accuracy_difference({"B": {f"p{i}": [True] for i in range(4)}},
                                   {"B": {f"p{i}": [False] for i in range(4)}})["B"]
    assert d.estimate == 1.0 and d.high == 1.0 and d.low == pytest.approx(-1 + 2 * wilson_interval(4, 4).low)
    assert d.excludes_zero


def test_paired_difference_cancels_what_problems_share():
    # both models solve the same easy problems; the model additionally solves one hard one.
    # Unpaired, the two accuracies' intervals overlap widely; paired, the difference is +1/10 on every
    # replicate that draws that problem, never negative.
    rng = np.random.default_rng(0)
    easy = rng.random(10) < 0.5
    base = {"B": {f"p{i}": [bool(easy[i])] for i in range(10)}}
    hard = next(i for i in range(10) if not easy[i])
    model = {"B": {f"p{i}": [bool(easy[i]) or i == hard] for i in range(10)}}
    ci = paired_accuracy_difference(model, base)["B"]
    assert ci.estimate == pytest.approx(0.1) and ci.low >= 0.0
    a, b = bootstrap_accuracy([model["B"][k] for k in sorted(model["B"])]), bootstrap_accuracy(
        [base["B"][k] for k in sorted(base["B"])])
    assert a.low < b.high  # the separate intervals overlap


def test_paired_difference_refuses_unpaired_problems():
    with pytest.raises(ValueError, match="same problems"):
        paired_accuracy_difference({"B": {"p1": [True]}}, {"B": {"p2": [True]}})
    with pytest.raises(ValueError, match="benchmarks differ"):
        paired_accuracy_difference({"A": {"p1": [True]}}, {"B": {"p1": [True]}})


def test_average_accuracy_averages_benchmarks_unweighted():
    ci = bootstrap_average_accuracy({"A": [[1], [0]], "B": [[0]] * 8})
    assert ci.estimate == pytest.approx(0.25) and ci.n == 10 and ci.method == "bootstrap"
    # the A half of each replicate is one of 0, 1/2, 1 (B is constant 0): bounds are among 0, 1/4, 1/2
    assert {ci.low, ci.high} <= {0.0, 0.25, 0.5}
    # every problem at 1/2 (a constant to the bootstrap): no-variation interval, not [0.5, 0.5]
    flat = bootstrap_average_accuracy({"A": [[1, 0], [1, 0]], "B": [[1, 0]] * 8})
    assert flat.estimate == 0.5 and flat.low < 0.5 < flat.high


def test_paired_ratio_difference_constructed_example():
    # teacher: 2 sub-1% tokens of 100 per problem; RSD: none; 5 problems
    ci = paired_ratio_difference([2] * 5, [100] * 5, [0] * 5, [100] * 5)
    assert ci.estimate == pytest.approx(0.02) and ci.low == ci.high == pytest.approx(0.02)
    assert ci.excludes_zero
    mixed = paired_ratio_difference([2, 0, 0], [100, 100, 100], [0, 0, 1], [100, 100, 100])
    assert mixed.estimate == pytest.approx(1 / 300) and not mixed.excludes_zero


def test_minimum_detectable_effect():
    assert minimum_detectable_effect(1.0) == pytest.approx(stats.norm.ppf(0.975) + stats.norm.ppf(0.8))
    assert minimum_detectable_effect(0.1) == pytest.approx(0.2802, abs=1e-4)
    # one benchmark of n problems, p = 0.5: se = sqrt(2 * 0.25 / n)
    assert accuracy_difference_se([50]) == pytest.approx(math.sqrt(0.5 / 50))
    assert accuracy_difference_se({"A": 50, "B": 50}) == pytest.approx(math.sqrt(0.5 / 50) / math.sqrt(2))
    # more problems, smaller detectable effect
    mde = [minimum_detectable_effect(accuracy_difference_se([n])) for n in (500, 6)]
    assert mde[0] < mde[1]


def test_interval_scaled_and_excludes_zero():
    ci = Interval(0.1, 0.05, 0.2, 10, "bootstrap", se=0.03)
    pct = ci.scaled(100)
    assert (pct.estimate, pct.low, pct.high, pct.se) == pytest.approx((10, 5, 20, 3))
    assert ci.excludes_zero and not Interval(0.1, -0.05, 0.2, 10, "bootstrap").excludes_zero


# ----------------------------------------------------------------------------------------------
# Coverage on simulated data: ~95% of intervals contain the true value
# ----------------------------------------------------------------------------------------------
DATASETS = 300


def _coverage(hits: list[bool]) -> float:
    return sum(hits) / len(hits)


def test_coverage_wilson():
    rng = np.random.default_rng(1)
    true = 0.3
    hits = [wilson_interval(int(k), 40).low <= true <= wilson_interval(int(k), 40).high
            for k in rng.binomial(40, true, size=DATASETS)]
    assert 0.91 <= _coverage(hits) <= 0.99


def test_coverage_bootstrap_accuracy_over_problems():
    # problems differ in difficulty (beta-distributed), 4 samples each: the samples of a problem are
    # correlated, so an interval that treated samples as independent would undercover
    rng = np.random.default_rng(2)
    true = 2 / (2 + 3)  # mean of Beta(2, 3)
    hits = []
    for d in range(DATASETS):
        difficulty = rng.beta(2, 3, size=60)  # (P,)
        correct = rng.random((60, 4)) < difficulty[:, None]  # (P, 4)
        ci = bootstrap_accuracy(correct, resamples=1000, seed=d)
        hits.append(ci.low <= true <= ci.high)
    assert 0.90 <= _coverage(hits) <= 0.99


def test_coverage_bootstrap_ratio_over_traces():
    # traces of random length; a trace's sub-1% rate varies around the pooled truth
    rng = np.random.default_rng(3)
    hits = []
    for d in range(DATASETS):
        lengths = rng.integers(50, 400, size=80)
        rates = rng.beta(2, 98, size=80)  # mean 0.02, independent of length
        lows = rng.binomial(lengths, rates)
        ci = bootstrap_ratio(lows, lengths, resamples=1000, seed=d)
        hits.append(ci.low <= 0.02 <= ci.high)
    assert 0.90 <= _coverage(hits) <= 0.99


def test_coverage_paired_difference():
    rng = np.random.default_rng(4)
    population = rng.beta(2, 2, size=1_000_000)
    true = float(np.mean(np.clip(population + 0.1, 0, 1) - population))  # the population difference
    hits = []
    for d in range(DATASETS):
        difficulty = rng.beta(2, 2, size=60)
        base = rng.random((60, 2)) < difficulty[:, None]
        model = rng.random((60, 2)) < np.clip(difficulty + 0.1, 0, 1)[:, None]
        ids = [f"p{i}" for i in range(60)]
        ci = paired_accuracy_difference({"B": dict(zip(ids, model))}, {"B": dict(zip(ids, base))},
                                        resamples=1000, seed=d)["B"]
        hits.append(ci.low <= true <= ci.high)
    assert 0.90 <= _coverage(hits) <= 0.99
