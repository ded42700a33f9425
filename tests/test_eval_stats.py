"""The paired bootstrap over problems: known differences, no difference, and coverage in a small simulation."""

import math

import numpy as np
import pytest

from echovl.eval.stats import paired_bootstrap


def sampled_scores(rng, p, k):
    """Per-problem mean of k Bernoulli(p_i) samples."""
    return rng.binomial(k, p) / k


def test_big_difference_excludes_zero():
    rng = np.random.default_rng(1)
    p = rng.uniform(0.1, 0.6, size=300)
    a, b = sampled_scores(rng, p, 4), sampled_scores(rng, np.clip(p + 0.3, 0, 1), 4)
    interval = paired_bootstrap([a], [b], resamples=2000, seed=0)
    assert interval.difference == pytest.approx(b.mean() - a.mean())
    assert 0 < interval.low < interval.difference < interval.high
    assert interval.excludes_zero
    # and the other way round
    assert paired_bootstrap([b], [a], resamples=2000).high < 0


def test_identical_models_give_zero_and_equal_models_cover_zero():
    rng = np.random.default_rng(2)
    p = rng.uniform(0, 1, size=200)
    a = sampled_scores(rng, p, 8)
    same = paired_bootstrap([a], [a.copy()], resamples=1000)
    assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0) and not same.excludes_zero
    b = sampled_scores(rng, p, 8)  # same true accuracies, independent samples
    interval = paired_bootstrap([a], [b], resamples=2000, seed=3)
    assert interval.low < 0 < interval.high


def test_pairing_removes_problem_difficulty():
    """Two models that differ by one fixed problem on each of many problems of very mixed difficulty: the paired
    interval is narrow although each model's accuracy alone varies a lot over problem draws."""
    difficulty = np.repeat([0.0, 1.0], 100)
    a = difficulty.copy()
    b = difficulty.copy()
    b[0] = 1.0  # B also solves one hard problem
    interval = paired_bootstrap([a], [b], resamples=4000, seed=0)
    assert interval.difference == pytest.approx(1 / 200)
    assert interval.high - interval.low <= 0.02  # an unpaired interval would be about 0.28 wide


def test_average_over_benchmarks_resamples_each_separately():
    rng = np.random.default_rng(4)
    small_a, small_b = np.zeros(30), np.ones(30)  # +1.0 on a 30-problem benchmark
    big = sampled_scores(rng, rng.uniform(size=500), 1)
    interval = paired_bootstrap([small_a, big], [small_b, big.copy()], resamples=1000)
    assert interval.difference == pytest.approx(0.5)  # mean of +1.0 and 0.0, not weighted by size
    assert interval.low == pytest.approx(0.5) and interval.high == pytest.approx(0.5)


def test_coverage_in_a_simulation():
    """Draw 200 problems from a population with a known mean difference, sample k = 4 answers per problem from
    each model, and check how often the 95% interval covers the population's difference (fixed seed)."""
    rng = np.random.default_rng(0)
    population = 100_000
    p_a = rng.beta(2, 3, size=population)
    p_b = np.clip(p_a + rng.normal(0.03, 0.1, size=population), 0, 1)
    truth = (p_b - p_a).mean()
    trials, covered = 300, 0
    for trial in range(trials):
        idx = rng.integers(0, population, size=200)
        a, b = sampled_scores(rng, p_a[idx], 4), sampled_scores(rng, p_b[idx], 4)
        interval = paired_bootstrap([a], [b], resamples=1000, seed=trial)
        covered += interval.low <= truth <= interval.high
    assert 0.90 <= covered / trials <= 0.98  # 0.94 over 1800 trials of three seeds


def test_bad_input():
    with pytest.raises(ValueError, match="same number"):
        paired_bootstrap([np.ones(3)], [])
    with pytest.raises(ValueError, match="aligned"):
        paired_bootstrap([np.ones(3)], [np.ones(4)])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap([np.ones(3)], [np.ones(3)], confidence=1.0)


def test_student_t_quantiles_match_the_table():
    from echovl.eval.stats import student_t_quantile

    # two-sided 95% critical values from a printed t table
    for df, value in ((1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042), (120, 1.980)):
        assert student_t_quantile(0.975, df) == pytest.approx(value, abs=1e-3)
    assert student_t_quantile(0.95, 10) == pytest.approx(1.812, abs=1e-3)
    assert student_t_quantile(0.025, 4) == pytest.approx(-2.776, abs=1e-3)
    with pytest.raises(ValueError):
        student_t_quantile(1.0, 3)


def test_paired_t_interval_worked_by_hand():
    from echovl.eval.stats import paired_t_interval

    # differences 1, 2, 3: mean 2, sd 1, half width 4.3027 / sqrt(3) = 2.4841
    interval = paired_t_interval([0.0, 0.0, 0.0], [1.0, 2.0, 3.0])
    assert interval.difference == 2.0 and (interval.low, interval.high) == pytest.approx((-0.4841, 4.4841), abs=1e-4)
    assert not interval.excludes_zero
    assert paired_t_interval([0.0, 1.0], [1.0, 2.0]).low == pytest.approx(1.0)  # no spread: a point
    single = paired_t_interval([0.2], [0.5])
    assert single.difference == pytest.approx(0.3) and math.isnan(single.low)
    with pytest.raises(ValueError):
        paired_t_interval([1.0], [1.0, 2.0])
