"""Intervals beside every measured number and paired differences between models, from per-window losses.

The evaluate and baselines stages keep each model's per-(window, document) losses on the val split
(:class:`~gptlab.core.evaluate.WindowScores`, ``.npz``); this module turns them into the numbers the metrics
files, the report and the promotion gate show: val loss / ppl / bits per byte with 95 % bootstrap intervals
over documents, accuracies with lm-eval's stderr, and candidate − reference differences with a p-value
(:mod:`gptlab.core.stats` says how and why). Interval bounds are plain numeric keys (``ppl_lo``, ``ppl_hi``)
so DVC and MLflow read them as metrics.
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from gptlab.core.evaluate import WindowScores
from gptlab.core.stats import (
    LEVEL,
    SAMPLES,
    Difference,
    accuracy_interval,
    bootstrap_ratios,
    mean_stderr,
    paired_difference,
)
from gptlab.data.tokenizer import get_encoding, token_byte_lengths
from gptlab.errors import DataError

LN2 = math.log(2.0)
WINDOWS_FILE = "val_windows.npz"  # ours: metrics/val_windows.npz (a DVC out of the evaluate stage)
BASELINE_WINDOWS = "windows"  # baselines/windows/<name>-ctx<context>.npz (a DVC out of the baselines stage)


@functools.lru_cache(maxsize=4)
def token_bytes(tokenizer: str) -> np.ndarray:
    """UTF-8 bytes of every token id of ``tokenize.tokenizer`` (for bits per byte)."""
    return token_byte_lengths(get_encoding(tokenizer))


def with_interval(name: str, lo: float | None, hi: float | None) -> dict[str, float | None]:
    return {f"{name}_lo": lo, f"{name}_hi": hi}


def val_metrics(scores: WindowScores) -> dict[str, Any]:
    """Loss, perplexity and bits per byte of one model on the val split, each with its 95 % interval (a seeded
    bootstrap over the split's documents), and what they were computed over."""
    start = time.perf_counter()
    nats, tokens, nbytes = scores.per_document()
    has_bytes = nbytes.sum() > 0
    # One draw of resampled documents for both: loss and bits per byte come from the same resamples.
    loss, *bpb = bootstrap_ratios([(nats, tokens), *([(nats / LN2, nbytes)] if has_bytes else [])])
    ppl = loss.map(math.exp)
    out: dict[str, Any] = {"loss": loss.value, **with_interval("loss", loss.lo, loss.hi),
                           "ppl": ppl.value, **with_interval("ppl", ppl.lo, ppl.hi)}
    if has_bytes:
        out.update(bits_per_byte=bpb[0].value, **with_interval("bits_per_byte", bpb[0].lo, bpb[0].hi),
                   bytes=int(nbytes.sum()))
    out.update(tokens=int(tokens.sum()), documents=len(tokens), seconds=scores.seconds,
               interval_level=LEVEL, bootstrap_samples=SAMPLES, bootstrap_seconds=time.perf_counter() - start)
    return out


def accuracy_metrics(acc: float, n: int, name: str = "acc") -> dict[str, float | None]:
    """``{"acc_stderr", "acc_lo", "acc_hi"}`` for an accuracy over ``n`` items (lm-eval's stderr)."""
    iv = accuracy_interval(acc, n)
    return {f"{name}_stderr": mean_stderr(acc, n), **with_interval(name, iv.lo, iv.hi)}


def windows_name(name: str, context: int | str) -> str:
    """The file name of one baseline's per-window losses at one context (under ``baselines/windows/``)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return f"{safe}-ctx{context}.npz"


def baseline_windows(folder: Path, name: str, context: int | str) -> Path:
    """Where the baselines stage keeps one baseline's per-window losses at one context."""
    return folder / BASELINE_WINDOWS / windows_name(name, context)


def compare(candidate: WindowScores | list[WindowScores], reference: WindowScores | list[WindowScores]
            ) -> Difference:
    """Candidate − reference val loss (nats/token), paired over the documents both scored (the same val tokens).

    Each side may be several seed runs of one configuration. Contexts may differ: every target token is scored
    once at any context, so the per-document token counts agree whenever the val tokens are the same.
    """
    sides = []
    tokens = None
    for runs in (candidate, reference):
        runs = runs if isinstance(runs, list) else [runs]
        per_doc = [r.per_document() for r in runs]
        for _, toks, _ in per_doc:
            if tokens is None:
                tokens = toks
            elif len(toks) != len(tokens) or not np.array_equal(toks, tokens):
                raise DataError(
                    f"the two models were not scored on the same val tokens ({int(tokens.sum())} tokens in "
                    f"{len(tokens)} documents vs {int(toks.sum())} in {len(toks)}): a paired comparison needs "
                    "both scored on the same val split (`gptlab rescore` re-scores a registered version)"
                )
        sides.append(np.stack([nats for nats, _, _ in per_doc]))
    assert tokens is not None
    return paired_difference(sides[0], sides[1], tokens)


def difference_metrics(d: Difference) -> dict[str, Any]:
    """The numbers of a paired difference in val loss, and the same in perplexity terms (ratio − 1)."""
    return {"loss_delta": d.delta, **with_interval("loss_delta", d.lo, d.hi),
            "ppl_ratio": math.exp(d.delta),
            **with_interval("ppl_ratio", None if d.lo is None else math.exp(d.lo),
                            None if d.hi is None else math.exp(d.hi)),
            "p_improvement": d.p_improvement, "p_two_sided": d.p_two_sided, "documents": d.documents,
            "runs_candidate": d.runs[0], "runs_reference": d.runs[1], "bootstrap_samples": d.samples}
