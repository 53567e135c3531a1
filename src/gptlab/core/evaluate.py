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
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gptlab.core.hardware import autocast
from gptlab.core.model import GPT
from gptlab.data.loader import sequential_windows, to_device
from gptlab.errors import DataError

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


@torch.inference_mode()
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
    if context > model.config.block_size:
        raise ValueError(f"context {context} exceeds the model's block_size {model.config.block_size}")
    if stride is not None:
        return _strided_perplexity(model, tokens, context=context, stride=stride, batch_size=batch_size,
                                   device=device, dtype=dtype, max_tokens=max_tokens)
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device: no sync per batch
    count = 0
    start = time.perf_counter()
    with autocast(device, dtype):
        for x, y in sequential_windows(tokens, block_size=context, batch_size=batch_size, max_tokens=max_tokens):
            yt = to_device(y, device)
            logp, _ = target_logprobs(model(to_device(x, device)).logits, yt)
            total -= logp.sum(dtype=torch.float64)
            count += yt.numel()
    model.train(was_training)
    if count == 0:
        raise DataError("no tokens to score: the validation split needs at least 2 tokens")
    mean = total.item() / count
    return Perplexity(loss=mean, ppl=math.exp(mean), tokens=count, seconds=time.perf_counter() - start)


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


def _strided_perplexity(
    model: GPT, tokens: np.ndarray, *, context: int, stride: int, batch_size: int, device: torch.device,
    dtype: torch.dtype, max_tokens: int | None,
) -> Perplexity:
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    start = time.perf_counter()
    with autocast(device, dtype):
        for x, y, scored in strided_windows(tokens, context=context, stride=stride, batch_size=batch_size,
                                            max_tokens=max_tokens):
            logp, _ = target_logprobs(model(to_device(x, device)).logits, to_device(y, device))  # (B, T)
            T = y.shape[1]
            mask = torch.arange(T, device=device)[None, :] >= (T - torch.from_numpy(scored).to(device))[:, None]
            total -= torch.where(mask, logp.double(), 0.0).sum()
            count += int(scored.sum())
    model.train(was_training)
    if count == 0:
        raise DataError("no tokens to score: the validation split needs at least 2 tokens")
    mean = total.item() / count
    return Perplexity(loss=mean, ppl=math.exp(mean), tokens=count, seconds=time.perf_counter() - start,
                      stride=stride)


def unigram_floor(counts: np.ndarray, tokens: np.ndarray, *, max_tokens: int | None = None) -> Perplexity:
    """Perplexity of add-one-smoothed train-split unigram frequencies on the tokens :func:`perplexity` scores."""
    n = len(tokens) if max_tokens is None else min(len(tokens), max_tokens + 1)
    targets = np.asarray(tokens[1:n], dtype=np.int64)
    log_probs = np.log(counts.astype(np.float64) + 1.0) - math.log(counts.sum() + len(counts))
    mean = float(-log_probs[targets].mean())
    return Perplexity(loss=mean, ppl=math.exp(mean), tokens=len(targets))
