"""The statistics behind every interval and p-value, on synthetic data whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gptlab.core.stats import (
    accuracy_interval,
    bootstrap_ratio,
    mean_stderr,
    paired_difference,
    seed_summary,
)


def _documents(rng: np.random.Generator, n: int, *, mean_loss: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-document (total nats, tokens): lengths vary, and each document has its own difficulty, so tokens
    within a document are correlated (what a token-level bootstrap would get wrong)."""
    tokens = rng.integers(20, 400, size=n).astype(np.float64)
    difficulty = rng.normal(mean_loss, 0.5, size=n)
    nats = tokens * difficulty + rng.normal(0, 1.0, size=n) * np.sqrt(tokens)
    return nats, tokens


def test_the_document_bootstrap_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    covered = 0
    trials = 200
    for i in range(trials):
        nats, tokens = _documents(rng, 60)
        iv = bootstrap_ratio(nats, tokens, samples=1000, seed=i)
        assert iv.lo < iv.value < iv.hi
        covered += iv.lo <= 3.0 <= iv.hi  # the true per-token mean: E[difficulty] = 3
    assert 0.89 <= covered / trials <= 0.99, covered


def test_the_interval_is_seeded_and_maps_through_exp():
    rng = np.random.default_rng(1)
    nats, tokens = _documents(rng, 40)
    a, b = bootstrap_ratio(nats, tokens, samples=500), bootstrap_ratio(nats, tokens, samples=500)
    assert a == b  # the same inputs give the same interval
    assert a.value == pytest.approx(nats.sum() / tokens.sum())
    ppl = a.map(math.exp)
    assert ppl.lo == pytest.approx(math.exp(a.lo)) and ppl.hi == pytest.approx(math.exp(a.hi))
    one = bootstrap_ratio(nats[:1], tokens[:1])
    assert one.lo is None and one.hi is None  # one document: no interval, never a fake zero-width one


def test_paired_p_values_are_roughly_uniform_when_nothing_differs():
    rng = np.random.default_rng(2)
    p = []
    for i in range(200):
        nats, tokens = _documents(rng, 50)
        # Two models of equal quality: each adds its own independent noise to the shared document difficulty.
        a = nats + rng.normal(0, 3.0, size=50) * np.sqrt(tokens)
        b = nats + rng.normal(0, 3.0, size=50) * np.sqrt(tokens)
        p.append(paired_difference(a, b, tokens, samples=500, seed=i).p_improvement)
    p = np.array(p)
    assert 0.03 <= (p < 0.1).mean() <= 0.18  # ~10 % below 0.1 under the null
    assert 0.38 <= (p < 0.5).mean() <= 0.62
    assert (p < 0.01).mean() <= 0.04


def test_a_clear_improvement_gets_a_tiny_p_and_an_interval_below_zero():
    rng = np.random.default_rng(3)
    nats, tokens = _documents(rng, 30)
    better = nats - 0.05 * tokens + rng.normal(0, 0.5, size=30) * np.sqrt(tokens)  # 0.05 nats/token lower
    d = paired_difference(better, nats, tokens)
    assert d.delta == pytest.approx((better.sum() - nats.sum()) / tokens.sum())
    assert d.hi < 0 and d.lo < d.delta < d.hi
    assert d.p_improvement < 1e-3 and d.p_two_sided < 1e-3
    worse = paired_difference(nats, better, tokens)
    assert worse.p_improvement > 0.99  # "the reference improves on the candidate" is not an improvement
    assert worse.p_two_sided < 1e-3


def test_pairing_sees_a_small_shift_that_unpaired_intervals_overlap():
    rng = np.random.default_rng(4)
    nats, tokens = _documents(rng, 80)
    better = nats - 0.02 * tokens  # the same documents, each 0.02 nats/token easier
    ia, ib = bootstrap_ratio(better, tokens), bootstrap_ratio(nats, tokens)
    assert ia.hi > ib.lo  # the two intervals overlap: unpaired, nothing could be concluded
    d = paired_difference(better, nats, tokens)
    assert d.hi < 0 and d.p_improvement < 1e-3


def test_several_seeds_count_seed_noise():
    rng = np.random.default_rng(5)
    nats, tokens = _documents(rng, 60)
    # Three seeds of a candidate that is 0.01 nats/token better, but whose seeds scatter by ±0.03 nats/token.
    seeds = np.stack([nats + (-0.01 + s) * tokens for s in (-0.03, 0.0, 0.03)])
    one_run = paired_difference(seeds[1], nats, tokens, samples=2000)
    three = paired_difference(seeds, nats, tokens, samples=2000)
    assert three.runs == (3, 1) and three.delta == pytest.approx(one_run.delta)
    assert (three.hi - three.lo) > 3 * (one_run.hi - one_run.lo)  # seed noise widens the interval


def test_accuracy_stderr_is_lm_evals():
    scores = np.array([1, 0, 1, 1, 0, 1, 0, 0, 1, 1], dtype=float)
    sample_std = math.sqrt(((scores - scores.mean()) ** 2).sum() / (len(scores) - 1))
    assert mean_stderr(scores.mean(), len(scores)) == pytest.approx(sample_std / math.sqrt(len(scores)))
    iv = accuracy_interval(0.6, 10)
    assert iv.lo == pytest.approx(0.6 - 1.959964 * mean_stderr(0.6, 10), rel=1e-6) and iv.hi <= 1.0
    assert accuracy_interval(1.0, 1).lo is None
    assert seed_summary([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 3}
    assert seed_summary([1.5]) == {"mean": 1.5, "std": None, "n": 1}
