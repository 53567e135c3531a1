"""Uncertainty for every measured number: seeded bootstrap intervals over documents, lm-eval's binomial stderr
for accuracies, and paired differences with a p-value. numpy only.

Why documents and not windows or tokens: the windows of one document share its topic, style and difficulty, so
their losses are correlated; resampling windows (or tokens) as if independent understates the uncertainty.
The cluster bootstrap resamples whole documents with replacement and recomputes the statistic, a ratio of sums
(total nats / total tokens, total nats / total bytes), from each resample (Efron & Tibshirani 1993, ch. 6;
Davison & Hinkley 1997, §3.8 on clustered data). Intervals are percentile intervals (transformation-invariant,
so the interval of ``exp(loss)`` is ``exp`` of the loss interval).

Paired differences (candidate − champion, ours − GPT-2) resample the *same* documents for both models, so what
the two have in common (a hard document is hard for both) cancels: the paired bootstrap (Koehn 2004; Efron &
Tibshirani 1993, §16.4). The p-value tests "no improvement" (Δ ≥ 0) against the shifted bootstrap
distribution: ``p = (1 + #{Δ* − Δ̂ ≤ Δ̂}) / (B + 1)`` one-sided, ``#{|Δ* − Δ̂| ≥ |Δ̂|}`` two-sided
(Berg-Kirkpatrick et al. 2012, "An Empirical Investigation of Statistical Significance in NLP"). With several
seeds per side, a replicate also resamples each side's runs (a two-level bootstrap), so seed noise counts too.

Every function takes its seed and sample count explicitly, so the same files always give the same interval.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

SAMPLES = 10_000  # bootstrap replicates: p-values resolve to 1e-4, well below the gate's alpha = 0.01
SEED = 20_250_611  # fixed: the same per-window files give the same intervals and p-values
LEVEL = 0.95
CHUNK_CELLS = 4_000_000  # replicates × documents resampled at once: bounded memory (~32 MB of indices)
Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile bootstrap interval (``lo``/``hi`` are None with < 2 documents)."""

    value: float
    lo: float | None
    hi: float | None

    def map(self, f) -> Interval:
        """The interval of a monotone increasing function of the statistic (e.g. ``exp`` for perplexity)."""
        return Interval(f(self.value), None if self.lo is None else f(self.lo), None if self.hi is None else f(self.hi))


@dataclass(frozen=True)
class Difference:
    """Candidate − reference of a per-token mean (e.g. val loss in nats), paired over the same documents."""

    delta: float
    lo: float | None
    hi: float | None
    p_improvement: float | None
    """One-sided p of "no improvement" (Δ ≥ 0): small when the candidate is credibly lower (better)."""
    p_two_sided: float | None
    """Two-sided p of "no difference" (Δ = 0)."""
    documents: int
    runs: tuple[int, int]
    """Seed runs on each side (candidate, reference)."""
    samples: int

    def to_dict(self) -> dict[str, float | int | None]:
        d = asdict(self)
        d["runs_candidate"], d["runs_reference"] = d.pop("runs")
        return d


def _chunks(samples: int, documents: int):
    step = max(1, CHUNK_CELLS // max(documents, 1))
    for start in range(0, samples, step):
        yield min(step, samples - start)


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_ratio(numerator: np.ndarray, denominator: np.ndarray, *, samples: int = SAMPLES, seed: int = SEED,
                    level: float = LEVEL) -> Interval:
    """``Σ numerator / Σ denominator`` over documents (one entry each), with its cluster-bootstrap interval."""
    return bootstrap_ratios([(numerator, denominator)], samples=samples, seed=seed, level=level)[0]


def bootstrap_ratios(pairs: list[tuple[np.ndarray, np.ndarray]], *, samples: int = SAMPLES, seed: int = SEED,
                     level: float = LEVEL) -> list[Interval]:
    """:func:`bootstrap_ratio` of several statistics over the same documents, from the same resamples (one
    draw of indices: the intervals of loss and bits per byte cost little more than one)."""
    arrays = [(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)) for a, b in pairs]
    n = len(arrays[0][0])
    for num, den in arrays:
        if num.shape != den.shape or num.ndim != 1 or len(num) != n:
            raise ValueError(f"one numerator and one denominator per document, got shapes {num.shape}, {den.shape}")
    values = [float(num.sum() / den.sum()) for num, den in arrays]
    if n < 2:
        return [Interval(v, None, None) for v in values]
    rng = np.random.default_rng(seed)
    out = np.empty((len(arrays), samples))
    done = 0
    for size in _chunks(samples, n):
        idx = rng.integers(0, n, size=(size, n), dtype=np.int32)  # int32: half the memory traffic of int64
        for k, (num, den) in enumerate(arrays):
            out[k, done : done + size] = num[idx].sum(axis=1) / den[idx].sum(axis=1)
        done += size
    return [Interval(v, *_percentiles(row, level)) for v, row in zip(values, out, strict=True)]


def paired_difference(candidate: np.ndarray, reference: np.ndarray, tokens: np.ndarray, *, samples: int = SAMPLES,
                      seed: int = SEED, level: float = LEVEL) -> Difference:
    """Δ = candidate − reference of the per-token mean (``Σ nats / Σ tokens``), paired over documents.

    ``candidate`` and ``reference``: total nats per document, shape ``(D,)`` for one run or ``(runs, D)`` for
    several seed runs of one configuration (each side's mean over its runs is compared); ``tokens``: tokens
    scored per document, ``(D,)``, the same for both (they were scored on the same val tokens).
    """
    a = np.atleast_2d(np.asarray(candidate, dtype=np.float64))
    b = np.atleast_2d(np.asarray(reference, dtype=np.float64))
    t = np.asarray(tokens, dtype=np.float64)
    n = len(t)
    if a.shape[1] != n or b.shape[1] != n:
        raise ValueError(f"per-document nats must cover the same {n} documents, got {a.shape} and {b.shape}")
    total = t.sum()
    delta = float(a.sum(axis=1).mean() / total - b.sum(axis=1).mean() / total)
    runs = (a.shape[0], b.shape[0])
    if n < 2:
        return Difference(delta, None, None, None, None, n, runs, 0)
    rng = np.random.default_rng(seed)
    out = np.empty(samples)
    done = 0
    for size in _chunks(samples, n):
        idx = rng.integers(0, n, size=(size, n), dtype=np.int32)
        tok = t[idx].sum(axis=1)  # (size,)
        means = []
        for side in (a, b):
            per_run = side[:, idx].sum(axis=2)  # (runs, size): each run's resampled total
            if side.shape[0] > 1:  # the second level: resample this side's seed runs too
                pick = rng.integers(0, side.shape[0], size=(size, side.shape[0]))
                per_run = np.take_along_axis(per_run.T, pick, axis=1).T
            means.append(per_run.mean(axis=0) / tok)
        out[done : done + size] = means[0] - means[1]
        done += size
    lo, hi = _percentiles(out, level)
    shifted = out - delta  # the null distribution of Δ̂ around Δ = 0
    p_one = (1 + int(np.count_nonzero(shifted <= delta))) / (samples + 1)
    p_two = (1 + int(np.count_nonzero(np.abs(shifted) >= abs(delta)))) / (samples + 1)
    return Difference(delta, lo, hi, p_one, p_two, n, runs, samples)


def mean_stderr(p: float, n: int) -> float | None:
    """Standard error of an accuracy ``p`` over ``n`` items, as lm-evaluation-harness reports it: the sample
    standard deviation of the 0/1 scores over √n, which is ``√(p(1 − p) / (n − 1))`` (lm_eval.api.metrics)."""
    if n < 2:
        return None
    return math.sqrt(p * (1.0 - p) / (n - 1))


def accuracy_interval(p: float, n: int) -> Interval:
    """``p ± 1.96 stderr`` (normal approximation, clipped to [0, 1]); None bounds with < 2 items."""
    se = mean_stderr(p, n)
    if se is None:
        return Interval(p, None, None)
    return Interval(p, max(0.0, p - Z95 * se), min(1.0, p + Z95 * se))


def seed_summary(values: list[float]) -> dict[str, float | int | None]:
    """Mean, sample standard deviation (n − 1) and n of one metric over the seed runs of a configuration."""
    x = np.asarray(values, dtype=np.float64)
    return {"mean": float(x.mean()) if len(x) else None, "std": float(x.std(ddof=1)) if len(x) > 1 else None,
            "n": int(len(x))}
