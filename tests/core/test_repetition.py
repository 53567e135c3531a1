from __future__ import annotations

import pytest

from gptlab.core.repetition import distinct_n, repeated_ngram_fraction, repetition


def test_distinct_n_pools_the_samples_of_a_model():
    samples = [[1, 2, 1, 2], [3, 4]]
    # unigrams 1 2 1 2 3 4 → 4 distinct of 6; bigrams (1 2)(2 1)(1 2)(3 4) → 3 distinct of 4
    assert distinct_n(samples, 1) == pytest.approx(4 / 6)
    assert distinct_n(samples, 2) == pytest.approx(3 / 4)
    assert distinct_n([[7]], 2) is None


def test_repeated_4grams_count_repeats_within_a_sample():
    looping = [1, 2, 3, 4] * 3  # 9 4-grams, 4 distinct: 5 of 9 repeat an earlier one
    assert repeated_ngram_fraction(looping) == pytest.approx(5 / 9)
    assert repeated_ngram_fraction([1, 2, 3, 4, 5]) == 0.0
    assert repeated_ngram_fraction([1, 2]) is None


def test_repetition_summary_averages_rep4_over_samples_that_have_4grams():
    summary = repetition([[1, 2, 3, 4] * 3, [5, 6, 7, 8, 9], [10]])
    assert summary["rep_4"] == pytest.approx((5 / 9 + 0.0) / 2)
    assert summary["samples"] == 3 and summary["tokens"] == 12 + 5 + 1
    assert summary["distinct_1"] == pytest.approx(10 / 18)
