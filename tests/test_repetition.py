from __future__ import annotations

import pytest

from gptlab.repetition import distinct_n, repeated_ngram_fraction, repetition


def test_distinct_n_pools_the_samples_of_a_model():
    texts = ["the cat the cat", "a dog"]
    # unigrams: the cat the cat a dog → 4 distinct of 6; bigrams: (the cat)(cat the)(the cat)(a dog) → 3 of 4
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(["one"], 2) is None


def test_repeated_4grams_count_repeats_within_a_sample():
    looping = "a b c d a b c d a b c d"  # 9 4-grams, 4 distinct: 5 of 9 repeat an earlier one
    assert repeated_ngram_fraction(looping) == pytest.approx(5 / 9)
    assert repeated_ngram_fraction("one two three four five") == 0.0
    assert repeated_ngram_fraction("too short") is None


def test_repetition_summary_averages_rep4_over_samples_that_have_4grams():
    summary = repetition(["a b c d a b c d a b c d", "one two three four five", "short"])
    assert summary["rep_4"] == pytest.approx((5 / 9 + 0.0) / 2)
    assert summary["samples"] == 3 and summary["words"] == 12 + 5 + 1
    assert summary["distinct_1"] == pytest.approx(10 / 18)
