"""How repetitive generated text is: distinct-n over all samples, and repeated 4-grams within each sample.

Counted in GPT-2 BPE tokens of the continuation (the prompt excluded), as Welleck et al. do; every model
compared here shares that tokenizer, so the numbers compare across models (and whitespace or punctuation
loops, which words would hide, count).

- ``distinct_n`` (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural Conversation Models"):
  distinct n-grams / all n-grams, pooled over the samples of one model. Higher is more varied.
- ``rep_4`` (Welleck et al. 2019, "Neural Text Generation with Unlikelihood Training", seq-rep-4): per sample,
  the share of its 4-grams that repeat an earlier 4-gram of the same sample, averaged over samples. 0 means no
  4-gram occurs twice; the looping text small models are known for scores high.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any


def ngrams(tokens: Sequence[Hashable], n: int) -> list[tuple[Hashable, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(samples: Sequence[Sequence[Hashable]], n: int) -> float | None:
    """Distinct n-grams / n-grams over all ``samples``; None when they hold no n-gram."""
    grams = [g for sample in samples for g in ngrams(sample, n)]
    return len(set(grams)) / len(grams) if grams else None


def repeated_ngram_fraction(sample: Sequence[Hashable], n: int = 4) -> float | None:
    """Share of the n-grams of ``sample`` that already occurred earlier in it; None when it has none."""
    grams = ngrams(sample, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else None


def repetition(samples: Sequence[Sequence[Hashable]]) -> dict[str, Any]:
    """The repetition metrics of one model's samples, given as token sequences (None where too short to say)."""
    rep = [r for r in (repeated_ngram_fraction(s, 4) for s in samples) if r is not None]
    return {
        "distinct_1": distinct_n(samples, 1),
        "distinct_2": distinct_n(samples, 2),
        "rep_4": sum(rep) / len(rep) if rep else None,
        "samples": len(samples),
        "tokens": sum(len(s) for s in samples),
    }
