"""The training loop: gradient accumulation, warmup + cosine/linear decay, AdamW, autocast, periodic eval,
atomic checkpoints. It reports through a :class:`Tracker` and imports no tracking library.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from gptlab.checkpoint import Checkpoint, save_checkpoint
from gptlab.config import Config, TrainConfig
from gptlab.data.loader import RandomWindows, TokenSet, spread_windows, to_device, val_tokens
from gptlab.model import GPT

log = logging.getLogger(__name__)


class Tracker(Protocol):
    """What the loop needs from experiment tracking (MLflow in production, :class:`NullTracker` in tests)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


class NullTracker:
    """Tracks nothing: the loop never has to ask whether tracking is on."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass


@dataclass
class TrainResult:
    checkpoint: Checkpoint
    params: int
    steps: int
    tokens_seen: int
    final_train_loss: float
    final_val_loss: float
    best_val_loss: float
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine or linear decay to ``min_lr`` at ``max_iters``."""
    if step < cfg.warmup_iters:
        return cfg.lr * (step + 1) / (cfg.warmup_iters + 1)
    if step >= cfg.max_iters:
        return cfg.min_lr
    progress = (step - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters)  # 0 → 1
    if cfg.lr_schedule == "cosine":
        scale = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        scale = 1.0 - progress
    return cfg.min_lr + scale * (cfg.lr - cfg.min_lr)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name!r} but CUDA is not available here: use `-S train.device=cpu`")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def estimate_val_loss(model: GPT, windows: list[tuple[torch.Tensor, torch.Tensor]], ctx) -> float:
    """Mean loss over a fixed set of val windows (the same at every eval)."""
    model.eval()
    losses = []
    for x, y in windows:
        with ctx:
            losses.append(model(x, y).loss.item())
    model.train()
    return float(np.mean(losses))


def check_data(cfg: Config, tokens: TokenSet) -> None:
    """Problems between the config and the token files, raised before any training step."""
    problems = []
    if tokens.meta["vocab_size"] > cfg.model.vocab_size:
        problems.append(f"the tokens use {tokens.meta['vocab_size']} ids but model.vocab_size={cfg.model.vocab_size}")
    for split in ("train", "val"):
        if tokens.tokens(split) <= cfg.model.block_size:
            problems.append(
                f"the {split} split has {tokens.tokens(split)} tokens, not more than model.block_size="
                f"{cfg.model.block_size}: lower model.block_size or use more data"
            )
    if problems:
        raise ValueError("the config does not fit the data:\n" + "\n".join(f"  - {p}" for p in problems))


def train(
    cfg: Config,
    *,
    tokens_dir: str | Path = "data/tokens",
    out_dir: str | Path = "models",
    tracker: Tracker | None = None,
    meta: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``cfg.model`` on the shards in ``tokens_dir``; write the final checkpoint to ``out_dir``."""
    tracker = tracker or NullTracker()
    t = cfg.train
    tokens = TokenSet.open(tokens_dir)
    check_data(cfg, tokens)
    device = resolve_device(t.device)
    dtype = resolve_dtype(t.dtype, device)
    ctx = autocast(device, dtype)
    seed_everything(t.seed)

    model = GPT(cfg.model).to(device)
    optimizer = model.configure_optimizer(
        lr=t.lr, weight_decay=t.weight_decay, betas=(t.beta1, t.beta2), device_type=device.type
    )
    train_batches = RandomWindows(
        tokens.paths("train"), block_size=cfg.model.block_size, batch_size=t.batch_size, seed=t.seed
    )
    vx, vy = spread_windows(val_tokens(tokens), block_size=cfg.model.block_size, count=t.eval_iters * t.batch_size)
    val_windows = [
        (to_device(vx[i : i + t.batch_size], device), to_device(vy[i : i + t.batch_size], device))
        for i in range(0, len(vx), t.batch_size)
    ]
    log.info(
        "train: %.2fM parameters, %d tokens per step, %d steps on %s (%s)",
        model.num_params() / 1e6, cfg.tokens_per_step, t.max_iters, device, str(dtype).removeprefix("torch."),
    )

    history: list[dict[str, float]] = []
    tokens_seen = 0
    best_val = val_loss = train_loss = float("nan")
    start = time.perf_counter()
    window_start, window_tokens = start, 0
    x, y = train_batches.next(device)
    for step in range(t.max_iters):
        lr = learning_rate(step, t)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = 0.0
        for _micro in range(t.grad_accum):
            with ctx:
                loss = model(x, y).loss / t.grad_accum  # mean over the whole step's sequences
            x, y = train_batches.next(device)  # prefetch the next batch while the backward runs
            loss.backward()
            loss_sum += loss.item()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens_seen += cfg.tokens_per_step
        window_tokens += cfg.tokens_per_step
        train_loss = loss_sum
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"train loss is {train_loss} at step {step}: lower train.lr or check the data")

        last = step == t.max_iters - 1
        record: dict[str, float] = {}
        if step % t.log_interval == 0 or last:
            now = time.perf_counter()
            record.update(
                {"train/loss": train_loss, "lr": lr, "tokens_seen": tokens_seen,
                 "tokens_per_sec": window_tokens / max(now - window_start, 1e-9)}
            )
            window_start, window_tokens = now, 0
        if (step + 1) % t.eval_interval == 0 or last:
            val_loss = estimate_val_loss(model, val_windows, ctx)
            best_val = min(best_val, val_loss) if math.isfinite(best_val) else val_loss
            record.update({"val/loss": val_loss, "val/ppl": math.exp(val_loss)})
            log.info("step %d: train loss %.4f, val loss %.4f, lr %.2e", step + 1, train_loss, val_loss, lr)
        if record:
            history.append({"step": step + 1, **record})
            tracker.log_metrics(record, step=step + 1)

    seconds = time.perf_counter() - start
    ckpt = save_checkpoint(
        out_dir,
        model=model,
        optimizer=optimizer,
        state={"step": t.max_iters, "loader": train_batches.state_dict()},
        meta={
            **(meta or {}),
            "step": t.max_iters,
            "tokens_seen": tokens_seen,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "best_val_loss": best_val,
            "seconds": seconds,
            "config": cfg.to_dict(),
            "tokens_meta": {k: tokens.meta[k] for k in ("tokenizer", "source", "val_sha256", "tokens")},
        },
    )
    return TrainResult(ckpt, model.num_params(), t.max_iters, tokens_seen, train_loss, val_loss, best_val, seconds, history)
