"""Perplexity over the whole validation split, in deterministic non-overlapping windows, plus the unigram floor.

With a ``stride`` (``eval.stride``) the windows overlap instead, as transformers' perplexity guide
("Perplexity of fixed-length models") computes it: windows of ``context`` inputs start every ``stride`` tokens
and each scores only the targets the previous window did not, so a target sees at least ``context - stride + 1``
tokens of history (the first window's targets excepted). ``stride == context`` gives the non-overlapping windows.

Every model is scored by this code: ours, and the GPT-2 baselines after :mod:`gptlab.hf` loads them into our
GPT. The forward runs under ``torch.inference_mode`` (no autograd bookkeeping), in batches larger than training's,
with bf16 autocast where supported, and without a host sync per batch; ``benchmarks/bench_eval.py`` measures it
against a training step.

The unigram floor is the perplexity of a model that ignores context: token frequencies of the train split
(add-one smoothed) scored on exactly the tokens the language model is scored on. A model that does not beat
it has learned nothing about context.

:func:`score_windows` also keeps what the intervals need (:mod:`gptlab.core.stats`): the summed loss of every
(window, document) piece of the split, where documents are the val split's own (each ends with
``<|endoftext|>``), with its token and UTF-8 byte counts. Bits per byte (total nats / ln 2 / bytes) follow from
it; it is tokenizer-independent, so models with other vocabularies compare fairly.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gptlab.core.hardware import autocast
from gptlab.core.model import GPT
from gptlab.data.loader import sequential_windows, to_device
from gptlab.data.tokenizer import EOT
from gptlab.errors import DataError
from gptlab.fileio import atomic_path

UPCAST_BYTES = 1 << 30  # float32 logits upcast at once when scoring: rows × T × V × 4 bytes stays under 1 GiB


@dataclass(frozen=True)
class Perplexity:
    loss: float
    """Mean cross-entropy in nats per token."""
    ppl: float
    tokens: int
    """Tokens scored."""
    seconds: float = 0.0
    stride: int | None = None
    """``eval.stride`` of the windows: None for non-overlapping windows."""

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor, *, greedy: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, T, V) logits, (B, T) targets → (B, T) float32 log-probabilities of the targets and, with ``greedy``,
    (B, T) bool: the target is the most likely token.

    Upcasts a few rows at a time, so a bf16 batch of 50K-way logits is never copied to float32 whole.
    """
    B, T, V = logits.shape
    rows = max(1, UPCAST_BYTES // (T * V * 4))
    logp = torch.empty((B, T), dtype=torch.float32, device=logits.device)
    hits = torch.empty((B, T), dtype=torch.bool, device=logits.device) if greedy else None
    for i in range(0, B, rows):
        chunk = logits[i : i + rows].float()  # (b, T, V)
        target = targets[i : i + rows]  # (b, T)
        # Rows of (b·T, V), not the (b, V, T) layout: torch's CPU kernel for a class dimension that is not last
        # loses precision (up to ~2e-3 nats per token on torch 2.13; tests/core/test_evaluate.py).
        logp[i : i + rows] = -F.cross_entropy(chunk.reshape(-1, V), target.reshape(-1), reduction="none").view_as(target)
        if hits is not None:
            hits[i : i + rows] = chunk.argmax(dim=-1) == target
    return logp, hits


@dataclass(frozen=True)
class WindowScores:
    """The summed loss of every (window, document) piece of a scored split, in order: what a bootstrap over
    documents and a paired comparison of two models on the same tokens need (one row per piece)."""

    window: np.ndarray
    """(S,) int64: index of the window (``context`` targets each, the last may be shorter)."""
    doc: np.ndarray
    """(S,) int64: document of the split, counted from 0 in the split's order."""
    tokens: np.ndarray
    """(S,) int64: targets scored in this piece."""
    nats: np.ndarray
    """(S,) float64: their summed cross-entropy in nats."""
    bytes: np.ndarray
    """(S,) int64: UTF-8 bytes those targets decode to (``<|endoftext|>`` counts 0)."""
    context: int
    seconds: float = 0.0
    stride: int | None = None
    """``eval.stride`` of the windows (None: non-overlapping); with a stride, ``window`` counts strided windows."""

    FIELDS = ("window", "doc", "tokens", "nats", "bytes")

    @property
    def perplexity(self) -> Perplexity:
        count = int(self.tokens.sum())
        mean = float(self.nats.sum()) / count
        return Perplexity(loss=mean, ppl=math.exp(mean), tokens=count, seconds=self.seconds, stride=self.stride)

    def per_document(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(nats, tokens, bytes) summed per document, index = document id."""
        n = int(self.doc.max()) + 1 if len(self.doc) else 0
        return (np.bincount(self.doc, weights=self.nats, minlength=n),
                np.bincount(self.doc, weights=self.tokens, minlength=n).astype(np.int64),
                np.bincount(self.doc, weights=self.bytes, minlength=n).astype(np.int64))

    def save(self, path: Path) -> None:
        """An ``.npz`` of the five arrays and ``context`` (plain arrays: loads with ``allow_pickle=False``)."""
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **{k: getattr(self, k) for k in self.FIELDS}, context=np.int64(self.context),
                     seconds=np.float64(self.seconds))

    @classmethod
    def load(cls, path: str | Path) -> WindowScores:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in (*cls.FIELDS, "context") if k not in z]
            if missing:
                raise DataError(f"{path} is not a per-window loss file (no {missing}): re-run the stage that wrote it")
            return cls(**{k: z[k] for k in cls.FIELDS}, context=int(z["context"]),
                       seconds=float(z["seconds"]) if "seconds" in z else 0.0)


def pieces(tokens: np.ndarray, logp: np.ndarray, *, context: int, eot: int, token_bytes: np.ndarray | None,
           n: int, window: np.ndarray | None = None) -> WindowScores:
    """Group per-target log-probabilities of ``tokens[1:n]`` into (window, document) pieces.

    Target ``j`` (token ``j + 1``) is in window ``j // context`` (:func:`sequential_windows`' order) and in the
    document that holds token ``j + 1``: the number of ``<|endoftext|>`` before it (a document's own EOT is its last
    token, so predicting the end of a document counts for that document). Strided windows pass their own
    ``window`` index of each target.
    """
    ids = np.asarray(tokens[:n])
    targets = ids[1:]
    doc = np.cumsum(ids == eot)[:-1]  # EOTs among tokens 0 … j: the document of target j (token j + 1)
    if window is None:
        window = np.arange(len(targets)) // context
    start = np.flatnonzero(np.r_[True, (np.diff(window) != 0) | (np.diff(doc) != 0)])
    nbytes = (token_bytes[targets] if token_bytes is not None else np.zeros(len(targets), np.int64)).astype(np.int64)
    return WindowScores(
        window=window[start].astype(np.int64), doc=doc[start].astype(np.int64),
        tokens=np.diff(np.r_[start, len(targets)]).astype(np.int64),
        nats=-np.add.reduceat(logp.astype(np.float64), start), bytes=np.add.reduceat(nbytes, start),
        context=context,
    )


@torch.inference_mode()
def score_windows(
    model: GPT,
    tokens: np.ndarray,
    *,
    context: int,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    max_tokens: int | None = None,
    eot: int = EOT,
    token_bytes: np.ndarray | None = None,
    stride: int | None = None,
) -> WindowScores:
    """Score every token of ``tokens`` after the first, each exactly once, with windows of ``context`` (strided
    windows overlapping by ``context - stride`` with a ``stride``); keep the loss of every (window, document)
    piece. ``token_bytes[id]``: UTF-8 bytes of a token (for bits per byte)."""
    if context > model.config.block_size:
        raise ValueError(f"context {context} exceeds the model's block_size {model.config.block_size}")
    n = len(tokens) if max_tokens is None else min(len(tokens), max_tokens + 1)
    if n < 2:
        raise DataError("no tokens to score: the validation split needs at least 2 tokens")
    was_training = model.training
    model.eval()
    # Every target's log-probability stays on the device (4 bytes a token): one copy to the host at the end.
    logp_all = torch.empty(n - 1, dtype=torch.float32, device=device)
    window = np.empty(n - 1, dtype=np.int64) if stride is not None else None
    at = 0
    start = time.perf_counter()
    with autocast(device, dtype):
        if stride is None:
            for x, y in sequential_windows(tokens, block_size=context, batch_size=batch_size, max_tokens=max_tokens):
                yt = to_device(y, device)
                logp, _ = target_logprobs(model(to_device(x, device)).logits, yt)
                logp_all[at : at + yt.numel()] = logp.reshape(-1)
                at += yt.numel()
        else:
            row = 0
            for x, y, scored in strided_windows(tokens, context=context, stride=stride, batch_size=batch_size,
                                                max_tokens=max_tokens):
                logp, _ = target_logprobs(model(to_device(x, device)).logits, to_device(y, device))  # (B, T)
                for i, k in enumerate(scored.tolist()):  # each window's last k targets are new, in order
                    logp_all[at : at + k] = logp[i, logp.shape[1] - k :]
                    window[at : at + k] = row
                    at, row = at + k, row + 1
    model.train(was_training)
    assert at == n - 1, "the windows score every target once"
    scores = pieces(tokens, logp_all.cpu().numpy(), context=context, eot=eot, token_bytes=token_bytes, n=n,
                    window=window)
    return dataclasses.replace(scores, seconds=time.perf_counter() - start, stride=stride)


def perplexity(
    model: GPT,
    tokens: np.ndarray,
    *,
    context: int,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    max_tokens: int | None = None,
    stride: int | None = None,
) -> Perplexity:
    """Score every token of ``tokens`` after the first, each exactly once, with windows of ``context``
    (overlapping by ``context - stride`` tokens when a ``stride`` is given)."""
    return score_windows(model, tokens, context=context, batch_size=batch_size, device=device, dtype=dtype,
                         max_tokens=max_tokens, stride=stride).perplexity


def strided_windows(
    tokens: np.ndarray, *, context: int, stride: int, batch_size: int, max_tokens: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(x, y, scored)`` batches of windows starting every ``stride`` tokens; ``scored[i]`` is how many of row
    i's last targets are new (not scored by an earlier window). Rows of one batch have one length; a shorter
    last window comes alone."""
    if not 0 < stride <= context:
        raise ValueError(f"stride {stride} must be in 1..context ({context})")
    n = len(tokens) if max_tokens is None else min(len(tokens), max_tokens + 1)
    windows, scored_until = [], 1  # token 0 is never a target
    for begin in range(0, max(n - 1, 0), stride):
        end = min(begin + context + 1, n)
        windows.append((begin, end, end - scored_until))
        scored_until = end
        if end == n:
            break
    full = [w for w in windows if w[1] - w[0] == context + 1]
    for i in range(0, len(full), batch_size):
        chunk = full[i : i + batch_size]
        rows = np.stack([np.asarray(tokens[b:e]) for b, e, _ in chunk])
        yield rows[:, :-1], rows[:, 1:], np.array([k for _, _, k in chunk])
    for b, e, k in windows[len(full) :]:
        row = np.asarray(tokens[b:e])[None, :]
        yield row[:, :-1], row[:, 1:], np.array([k])



def unigram_floor(counts: np.ndarray, tokens: np.ndarray, *, max_tokens: int | None = None) -> Perplexity:
    """Perplexity of add-one-smoothed train-split unigram frequencies on the tokens :func:`perplexity` scores."""
    n = len(tokens) if max_tokens is None else min(len(tokens), max_tokens + 1)
    targets = np.asarray(tokens[1:n], dtype=np.int64)
    log_probs = np.log(counts.astype(np.float64) + 1.0) - math.log(counts.sum() + len(counts))
    mean = float(-log_probs[targets].mean())
    return Perplexity(loss=mean, ppl=math.exp(mean), tokens=len(targets))
