"""Perplexity over the whole validation split, in deterministic non-overlapping windows, plus the unigram floor.

The unigram floor is the perplexity of a model that ignores context: token frequencies of the train split
(add-one smoothed) scored on exactly the tokens the language model is scored on. A model that does not beat
it has learned nothing about context.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gptlab.data.loader import sequential_windows
from gptlab.model import GPT
from gptlab.train import autocast


@dataclass(frozen=True)
class Perplexity:
    loss: float
    """Mean cross-entropy in nats per token."""
    ppl: float
    tokens: int
    """Tokens scored."""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@torch.no_grad()
def perplexity(
    model: GPT,
    tokens: np.ndarray,
    *,
    context: int,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    max_tokens: int | None = None,
) -> Perplexity:
    """Score every token of ``tokens`` after the first, each exactly once, with windows of ``context``."""
    if context > model.config.block_size:
        raise ValueError(f"context {context} exceeds the model's block_size {model.config.block_size}")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    start = time.perf_counter()
    with autocast(device, dtype):
        for x, y in sequential_windows(tokens, block_size=context, batch_size=batch_size, max_tokens=max_tokens):
            xt = torch.from_numpy(x.astype(np.int64)).to(device)
            yt = torch.from_numpy(y.astype(np.int64)).to(device)
            logits = model(xt).logits
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), yt.view(-1), reduction="sum")
            total += loss.item()
            count += yt.numel()
    model.train(was_training)
    if count == 0:
        raise ValueError("no tokens to score: the validation split needs at least 2 tokens")
    mean = total / count
    return Perplexity(loss=mean, ppl=math.exp(mean), tokens=count, seconds=time.perf_counter() - start)


def unigram_floor(counts: np.ndarray, tokens: np.ndarray, *, max_tokens: int | None = None) -> Perplexity:
    """Perplexity of add-one-smoothed train-split unigram frequencies on the tokens :func:`perplexity` scores."""
    n = len(tokens) if max_tokens is None else min(len(tokens), max_tokens + 1)
    targets = np.asarray(tokens[1:n], dtype=np.int64)
    log_probs = np.log(counts.astype(np.float64) + 1.0) - math.log(counts.sum() + len(counts))
    mean = float(-log_probs[targets].mean())
    return Perplexity(loss=mean, ppl=math.exp(mean), tokens=len(targets))
