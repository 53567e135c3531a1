"""How repetitive generated text is: distinct-n over all samples, and repeated 4-grams within each sample.

Words are whitespace-separated pieces of the continuation (the prompt excluded), so the numbers read the same
for every model whatever its tokenizer.

- ``distinct_n`` (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural Conversation Models"):
  distinct n-grams / all n-grams, pooled over the samples of one model. Higher is more varied.
- ``rep_4`` (Welleck et al. 2019, "Neural Text Generation with Unlikelihood Training", seq-rep-4): per sample,
  the share of its 4-grams that repeat an earlier 4-gram of the same sample, averaged over samples. 0 means no
  4-gram occurs twice; the looping text small models are known for scores high.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Distinct n-grams / n-grams over all ``texts``; None when they hold no n-gram."""
    grams = [g for text in texts for g in ngrams(text.split(), n)]
    return len(set(grams)) / len(grams) if grams else None


def repeated_ngram_fraction(text: str, n: int = 4) -> float | None:
    """Share of the n-grams of ``text`` that already occurred earlier in it; None when it has none."""
    grams = ngrams(text.split(), n)
    return 1.0 - len(set(grams)) / len(grams) if grams else None


def repetition(texts: Sequence[str]) -> dict[str, Any]:
    """The repetition metrics of one model's samples (None where the samples are too short to say)."""
    rep = [r for r in (repeated_ngram_fraction(t, 4) for t in texts) if r is not None]
    return {
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "rep_4": sum(rep) / len(rep) if rep else None,
        "samples": len(texts),
        "words": sum(len(t.split()) for t in texts),
    }
