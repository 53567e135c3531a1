"""The training loop: gradient accumulation, warmup + cosine/linear decay, AdamW, autocast, torch.compile,
data-parallel training (DDP under torchrun), periodic eval, MFU, and checkpoints a killed run resumes from
exactly. It reports through a :class:`Tracker` and imports no tracking library.

Exact resume: every ``train.checkpoint_interval`` steps, rank 0 writes (atomically) the weights, the optimizer,
the step, every rank's RNG states (python, numpy, torch, CUDA) and data-loader position, the best val loss
and the history of logged metrics. A run restarted with the same configuration continues from the newest
intact checkpoint and takes the same steps, on the same batches, as a run that was never interrupted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from gptlab.core.checkpoint import (
    Checkpoint,
    CheckpointError,
    TrainingCheckpoint,
    latest_checkpoint,
    load_state_into,
    prune,
    remove_leftovers,
    save_checkpoint,
    step_path,
)
from gptlab.core.distributed import Dist, all_gather_objects, all_reduce_sum, broadcast_object
from gptlab.core.hardware import autocast, mfu, peak_flops, resolve_device, resolve_dtype
from gptlab.core.model import GPT
from gptlab.data.loader import RandomWindows, TokenSet, spread_windows, to_device, val_tokens
from gptlab.errors import GptlabError
from gptlab.settings import Config, TrainConfig

log = logging.getLogger(__name__)

# Settings that change how a run is watched or where it runs, not the steps it takes: a run killed with one
# value resumes under another (e.g. more frequent logging). Every other model/train setting names a new run.
NOT_IN_RUN_KEY = frozenset(
    {"device", "compile", "peak_flops", "nproc_per_node", "checkpoint_interval", "resume", "eval_interval",
     "eval_iters", "log_interval"}
)
KEEP_CHECKPOINTS = 2  # the newest, and the one before it in case the newest turns out damaged


class TrainingError(GptlabError, ValueError):
    """A training that cannot run as configured, or that diverged; the message names the fix."""


class Tracker(Protocol):
    """What the loop needs from experiment tracking (MLflow in production, :class:`NullTracker` in tests)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


class NullTracker:
    """Tracks nothing: the loop never has to ask whether tracking is on."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass


@dataclass
class Progress:
    """The loop's running totals: saved in every checkpoint, restored on resume."""

    step: int = 0
    tokens_seen: int = 0
    train_loss: float = float("nan")
    val_loss: float = float("nan")
    best_val_loss: float = float("nan")
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    """Every record sent to the tracker, with its step: the loss curve, and what a resumed run re-sends."""


@dataclass
class TrainResult:
    checkpoint: Checkpoint | None
    """The final checkpoint (None on ranks other than 0, which write none)."""
    params: int
    steps: int
    tokens_seen: int
    final_train_loss: float
    final_val_loss: float
    best_val_loss: float
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int = 0
    """Step this process started from (0: a fresh run)."""
    tokens_per_sec: float | None = None
    """Median throughput over this process's logging windows (eval and checkpoint time excluded); None if it
    took no step."""
    mfu: float | None = None
    tracking_seconds: float = 0.0
    """Time spent handing metrics to the tracker (buffered MLflow calls included)."""
    checkpoint_seconds: float = 0.0
    """Time spent writing periodic checkpoints."""
    loop_seconds: float = 0.0
    """Wall time of this process's training loop (eval and checkpoints included)."""
    compiled: bool = False
    """Whether the loop ran ``torch.compile``d (``train.compile`` resolved)."""
    dtype: str = "float32"
    """The autocast dtype it ran (``train.dtype`` resolved)."""


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every random stream the loop can touch, in a form ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state(legacy=False)
    np_state["state"] = {"key": np_state["state"]["key"].tolist(), "pos": int(np_state["state"]["pos"])}
    return {
        "python": random.getstate(),
        "numpy": np_state,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    np_state = dict(state["numpy"])
    np_state["state"] = {"key": np.asarray(np_state["state"]["key"], dtype=np.uint32), "pos": np_state["state"]["pos"]}
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def run_key(cfg: Config, tokens: TokenSet, world_size: int) -> str:
    """A short hash of everything that decides a run's trajectory: the model, the optimisation settings (not
    those in :data:`NOT_IN_RUN_KEY`), the token shards and the number of processes. Runs resume only into
    checkpoints with the same key, so a changed setting never continues a different run's checkpoints."""
    blob = {
        "model": dataclasses.asdict(cfg.model),
        "train": {k: v for k, v in dataclasses.asdict(cfg.train).items() if k not in NOT_IN_RUN_KEY},
        "world_size": world_size,
        "shards": [shard.get("sha256", shard["name"]) for shard in tokens.meta["shards"]],
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def find_resume(run_dir: str | Path, policy: str) -> TrainingCheckpoint | None:
    """Rank 0, before training: the checkpoint to continue (``resume: auto``), or None for a fresh start.

    Leftovers of checkpoint writes a kill interrupted are removed; ``resume: never`` removes the run's
    checkpoints too, so a later ``auto`` cannot mix two runs.
    """
    run_dir = Path(run_dir)
    for leftover in remove_leftovers(run_dir):
        log.info("removed %s: a checkpoint write that was interrupted", leftover)
    if policy == "never":
        if run_dir.exists():
            log.info("train.resume=never: removing the earlier checkpoints in %s", run_dir)
            shutil.rmtree(run_dir)
        return None
    return latest_checkpoint(run_dir)


def copy_init_weights(model: GPT, source: GPT, origin: str) -> None:
    """Start ``model`` from ``source``'s weights. Same architecture required; a shorter context is allowed
    (position embeddings cropped, as nanoGPT's crop_block_size); dropout may differ."""
    ours, theirs = model.config, source.config
    fixes = [
        f"-S model.{key}={json.dumps(getattr(theirs, key))}"
        for key in ("n_layer", "n_head", "n_embd", "vocab_size", "bias")
        if getattr(ours, key) != getattr(theirs, key)
    ]
    if ours.block_size > theirs.block_size:
        fixes.append(f"-S model.block_size={theirs.block_size}")
    if fixes:
        shape = ", ".join(f"{k}={getattr(theirs, k)}" for k in ("n_layer", "n_head", "n_embd", "vocab_size", "bias",
                                                                 "block_size"))
        raise TrainingError(
            f"train.init={origin} has a different architecture ({shape}) than the `model` section: "
            f"set {' '.join(fixes)} (a profile can hold them)"
        )
    state = source.state_dict()
    state["transformer.wpe.weight"] = state["transformer.wpe.weight"][: ours.block_size]
    model.load_state_dict(state)


@torch.no_grad()
def estimate_val_loss(model: torch.nn.Module, windows: list[tuple[torch.Tensor, torch.Tensor]], ctx,
                      dist: Dist | None = None) -> float:
    """Mean loss over a fixed set of val windows (the same at every eval), the batches shared among ranks."""
    rank, world = (dist.rank, dist.world_size) if dist else (0, 1)
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=windows[0][0].device)  # (sum of batch losses, batches)
    for x, y in windows[rank::world]:
        with ctx:
            sums[0] += model(x, y).loss.double()
        sums[1] += 1
    if dist:
        all_reduce_sum(dist, sums)
    model.train()
    return float(sums[0] / sums[1])


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
        raise TrainingError("the config does not fit the data:\n" + "\n".join(f"  - {p}" for p in problems))


# `train.compile: auto`: compile when the time compiling saves exceeds the time it costs.
#   saved = COMPILE_SAVES × estimated eager run time;  cost = COMPILE_SECONDS.
# COMPILE_SECONDS: inductor's first compile of the seed model (forward + backward) took ~60 s on 2 CPU cores
# (benchmarks/bench_train.py's warmup) and tens of seconds on a GPU. COMPILE_SAVES: compiling cut the seed
# model's CPU step by a third (1.69× → 2.58× of the reference, issue 12) and nanoGPT reports ~45% on an A100;
# the rule takes 0.3 for both. The eager run time is estimated from FLOPs, at a throughput deliberately on the
# high side (a short estimate only errs towards eager): ASSUMED_CPU_FLOPS is ~5× what 2 cores of a Xeon with
# AVX512-BF16 reach on the seed model eager (974 tokens/s × 194 MFLOP/token ≈ 0.19 TFLOP/s), a GPU is taken at
# 60% of its table peak (100 TFLOP/s when it is not in the table). So the seed run (20,000 steps × 32,768 tokens
# × 194 MFLOP ≈ 1.3e17 FLOP: ~35 h at 1 TFLOP/s, saving ~10 h; ~3.6 min at 60% of an H200, saving 64 s) compiles
# on either; the demo (120 × 2,048 tokens × 41 MFLOP ≈ 1e13 FLOP: ~10 s, saving ~3 s of a 60 s compile) and the
# tests' tiny runs stay eager.
COMPILE_SECONDS = 60.0
COMPILE_SAVES = 0.3
ASSUMED_CPU_FLOPS = 1e12
ASSUMED_GPU_FLOPS = 100e12
GPU_SHARE_OF_PEAK = 0.6


def estimated_eager_seconds(flops: float, device: torch.device, peak: float | None = None) -> float:
    """A quick (short-side) guess of how long ``flops`` training FLOPs take eagerly on ``device``."""
    if device.type == "cuda":
        rate = GPU_SHARE_OF_PEAK * peak if peak else ASSUMED_GPU_FLOPS
    else:
        rate = ASSUMED_CPU_FLOPS
    return flops / rate


def use_compile(setting: bool | str, device: torch.device, *, run_flops: float | None = None,
                peak: float | None = None) -> bool:
    """``train.compile``: true/false as set; ``auto`` compiles when the run is long enough to repay compiling:
    ``COMPILE_SAVES × estimated eager seconds of run_flops > COMPILE_SECONDS`` (see the numbers above).
    Without ``run_flops`` (nothing known about the run), ``auto`` stays eager."""
    if setting != "auto":
        return bool(setting)
    if run_flops is None:
        return False
    return COMPILE_SAVES * estimated_eager_seconds(run_flops, device, peak) > COMPILE_SECONDS


def run_flops(cfg: Config, *, steps: int | None = None) -> float:
    """Training FLOPs of ``steps`` optimizer steps (default: the whole run) of ``cfg`` over all processes."""
    per_token = GPT.flops_per_token_of(cfg.model)
    return per_token * cfg.tokens_per_step * (cfg.train.max_iters if steps is None else steps)


class TrainingLoss(torch.nn.Module):
    """The training objective as one module: forward, the fp32 upcast and the cross-entropy, divided by
    ``scale`` (the micro-batches per step). ``torch.compile`` of this sees the whole objective, so the (B, T, V)
    logits are never a graph output and inductor may fuse the upcast into the loss's reduction rather than keep
    bf16 and fp32 copies of 50K-way logits (a probe in issue 12 measured 3.10× against compiling the model
    alone at 2.58×; ``benchmarks/profile_train.py`` compares the two by op)."""

    def __init__(self, model: GPT, *, scale: float = 1.0):
        super().__init__()
        self.model = model
        self.scale = scale

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.model(idx, targets).loss / self.scale


def train(
    cfg: Config,
    *,
    tokens: TokenSet,
    out_dir: str | Path,
    tracker: Tracker | None = None,
    meta: dict[str, Any] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: TrainingCheckpoint | None = None,
    init: GPT | None = None,
    dist: Dist | None = None,
    compile_backend: str = "inductor",
) -> TrainResult:
    """Train ``cfg.model`` on the shards of ``tokens``; rank 0 writes the final checkpoint to ``out_dir``.

    ``checkpoint_dir``: where this run's periodic checkpoints go (see :func:`run_key`); none without it.
    ``resume`` (rank 0): a checkpoint from :func:`find_resume` to continue. ``init`` (rank 0): the starting
    weights ``train.init`` names (required unless it is ``scratch``). ``dist``: this process's place in a
    torchrun job. ``compile_backend``: torch.compile's backend when ``train.compile`` resolves to true
    (``benchmarks/gpu_check.py --smoke`` passes ``aot_eager``: the same tracing without inductor's C++ build).
    """
    tracker = tracker or NullTracker()
    t = cfg.train
    d = dist or Dist(device=resolve_device(t.device))
    check_data(cfg, tokens)
    if d.is_main and resume is None and init is None and t.init != "scratch":
        raise ValueError(f"train.init={t.init!r}: pass the model it names as init= (the train stage loads it)")
    if t.grad_accum % d.world_size:
        raise TrainingError(
            f"train.grad_accum={t.grad_accum} cannot be split over {d.world_size} processes: use a multiple of "
            f"{d.world_size} (and a batch_size that keeps batch_size × grad_accum)"
        )
    local_accum = t.grad_accum // d.world_size  # the step's batch is the same however many processes share it
    device = d.device
    dtype = resolve_dtype(t.dtype, device)
    ctx = autocast(device, dtype)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores (Ampere+), as nanoGPT
        torch.backends.cudnn.allow_tf32 = True
    key = run_key(cfg, tokens, d.world_size)

    seed_everything(t.seed)
    raw = GPT(cfg.model)  # every rank builds the same initial weights; DDP also broadcasts rank 0's
    if d.is_main:
        if resume is not None:
            load_state_into(raw, resume.weights, resume.checkpoint.path)
        elif init is not None:
            copy_init_weights(raw, init, t.init)
    raw.to(device)
    optimizer = raw.configure_optimizer(
        lr=t.lr, weight_decay=t.weight_decay, betas=(t.beta1, t.beta2), device_type=device.type
    )
    loader = RandomWindows(
        tokens.paths("train"), block_size=cfg.model.block_size, batch_size=t.batch_size, seed=t.seed, rank=d.rank
    )
    if d.enabled:
        torch.manual_seed(t.seed + d.rank)  # dropout differs per rank; the weights were drawn above, identically

    # Rank 0 read the checkpoint; the other ranks receive it, so no filesystem needs to be shared.
    carried = broadcast_object(d, None if resume is None else resume.state)
    progress = Progress()
    if carried is not None:
        saved = carried["state"]
        if saved.get("world_size") != d.world_size or saved.get("run_key") != key:
            raise CheckpointError(
                f"{resume.checkpoint.path if resume else 'the checkpoint'} was written by a run with "
                f"{saved.get('world_size')} processes and key {saved.get('run_key')}; this run has {d.world_size} "
                f"and {key}: remove it, or start over with `-S train.resume=never`"
            )
        optimizer.load_state_dict(carried["optimizer"])
        progress = Progress(**saved["progress"])
        mine = saved["ranks"][d.rank]
        loader.load_state_dict(mine["loader"])
        set_rng_state(mine["rng"], device)
        if d.is_main:
            log.info("resuming at step %d of %d from %s", progress.step, t.max_iters, resume.checkpoint.path)
    resumed_from = progress.step

    peak = peak_flops(device, t.peak_flops)
    compiled = use_compile(t.compile, device, run_flops=run_flops(cfg, steps=t.max_iters - progress.step) / d.world_size,
                           peak=peak)
    objective = TrainingLoss(raw, scale=local_accum)
    model = torch.compile(objective, backend=compile_backend) if compiled else objective
    # nanoGPT's order: compile, then wrap, so eval can call the compiled module without DDP's hooks.
    ddp = None
    if d.enabled:
        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    forward = ddp if ddp is not None else model
    # Eval mode is a second graph to compile: worth it on a GPU, not for a CPU's few eval batches.
    eval_model = torch.compile(raw, backend=compile_backend) if compiled and device.type == "cuda" else raw

    vx, vy = spread_windows(val_tokens(tokens), block_size=cfg.model.block_size, count=t.eval_iters * t.batch_size)
    val_windows = [
        (to_device(vx[i : i + t.batch_size], device), to_device(vy[i : i + t.batch_size], device))
        for i in range(0, len(vx), t.batch_size)
    ]
    flops_per_token = raw.flops_per_token(cfg.model.block_size)
    if d.is_main:
        log.info(
            "train: %.2fM parameters, %d tokens per step (%d × %d sequences × %d processes), %d steps on %s (%s%s)%s",
            raw.num_params() / 1e6, cfg.tokens_per_step, local_accum, t.batch_size, d.world_size, t.max_iters,
            device, str(dtype).removeprefix("torch."), ", compiled" if compiled else "",
            f"; MFU against {peak / 1e12:.0f} TFLOP/s per device" if peak else "",
        )
    for record in progress.history:  # a resumed run re-sends what it logged; the tracker skips what it holds
        tracker.log_metrics({k: v for k, v in record.items() if k != "step"}, step=int(record["step"]))

    tracking_seconds = checkpoint_seconds = 0.0
    throughputs: list[float] = []
    last_mfu: float | None = None
    loop_start = process_start = time.perf_counter()
    window_start, window_tokens, paused = loop_start, 0, 0.0
    loader_state = loader.state_dict()
    x, y = loader.next(device)
    for step in range(progress.step, t.max_iters):
        lr = learning_rate(step, t)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        for micro in range(local_accum):
            if ddp is not None:
                ddp.require_backward_grad_sync = micro == local_accum - 1  # all-reduce once per step
            with ctx:
                loss = forward(x, y)  # mean over the step's sequences, divided by local_accum
            if micro == local_accum - 1:
                loader_state = loader.state_dict()  # a checkpoint after this step resumes from here
            x, y = loader.next(device)  # prefetch the next batch while the backward runs
            loss.backward()
            loss_sum += loss.detach()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(raw.parameters(), t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        progress.step = done
        progress.tokens_seen += cfg.tokens_per_step
        window_tokens += cfg.tokens_per_step

        last = done == t.max_iters
        log_now = step % t.log_interval == 0 or last
        checkpoint_now = (
            checkpoint_dir is not None and not last and t.checkpoint_interval > 0 and done % t.checkpoint_interval == 0
        )
        record: dict[str, float] = {}
        if log_now or checkpoint_now:  # reading the loss waits for the GPU: only when it is needed
            progress.train_loss = all_reduce_sum(d, loss_sum).item() / d.world_size
            if not math.isfinite(progress.train_loss):
                raise TrainingError(
                    f"train loss is {progress.train_loss} at step {done}: lower train.lr or check the data"
                )
        if log_now:
            now = time.perf_counter()
            tokens_per_sec = window_tokens / max(now - window_start - paused, 1e-9)
            record = {"train/loss": progress.train_loss, "lr": lr, "tokens_seen": progress.tokens_seen,
                      "tokens_per_sec": tokens_per_sec}
            last_mfu = mfu(flops_per_token, tokens_per_sec, peak, devices=d.world_size)
            if last_mfu is not None:
                record["mfu"] = last_mfu
            throughputs.append(tokens_per_sec)
            window_start, window_tokens, paused = now, 0, 0.0
            if d.is_main:
                log.info("step %d/%d: loss %.4f, lr %.2e, %.0f tokens/s%s", done, t.max_iters, progress.train_loss,
                         lr, tokens_per_sec, f", MFU {last_mfu:.1%}" if last_mfu is not None else "")
        if done % t.eval_interval == 0 or last:
            began = time.perf_counter()
            progress.val_loss = estimate_val_loss(eval_model, val_windows, ctx, d)
            if not progress.best_val_loss <= progress.val_loss:  # also true while best is still nan
                progress.best_val_loss = progress.val_loss
            record.update({"val/loss": progress.val_loss, "val/ppl": math.exp(progress.val_loss)})
            if d.is_main:
                log.info("step %d: val loss %.4f", done, progress.val_loss)
            paused += time.perf_counter() - began
        if record:
            progress.history.append({"step": done, **record})
            began = time.perf_counter()
            tracker.log_metrics(record, step=done)
            tracking_seconds += time.perf_counter() - began
        if checkpoint_now:
            began = time.perf_counter()
            progress.seconds += began - loop_start
            loop_start = began
            ranks = all_gather_objects(d, {"rng": rng_state(device), "loader": loader_state})
            if d.is_main:
                _save(step_path(checkpoint_dir, done), raw, optimizer, progress, ranks, d, key, cfg, tokens, meta)
                prune(checkpoint_dir, keep=KEEP_CHECKPOINTS)
            elapsed = time.perf_counter() - began
            checkpoint_seconds += elapsed
            paused += elapsed

    now = time.perf_counter()
    progress.seconds += now - loop_start
    ckpt = None
    ranks = all_gather_objects(d, {"rng": rng_state(device), "loader": loader_state})
    if d.is_main:
        ckpt = _save(Path(out_dir), raw, optimizer, progress, ranks, d, key, cfg, tokens, meta)
        if checkpoint_dir is not None:
            # Complete: the final checkpoint holds everything (it can resume, too). Keeping the series would
            # let a later run with the same settings "resume" a finished run whose starting weights (an alias
            # that moved since, a hub model) may no longer be what those settings name.
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return TrainResult(
        checkpoint=ckpt, params=raw.num_params(), steps=t.max_iters, tokens_seen=progress.tokens_seen,
        final_train_loss=progress.train_loss, final_val_loss=progress.val_loss,
        best_val_loss=progress.best_val_loss, seconds=progress.seconds, history=progress.history,
        resumed_from=resumed_from, tokens_per_sec=statistics.median(throughputs) if throughputs else None,
        mfu=last_mfu, tracking_seconds=tracking_seconds, checkpoint_seconds=checkpoint_seconds,
        loop_seconds=now - process_start, compiled=compiled, dtype=str(dtype).removeprefix("torch."),
    )


def _save(path: Path, raw: GPT, optimizer: torch.optim.Optimizer, progress: Progress,
          ranks: list[dict[str, Any]] | None, d: Dist, key: str, cfg: Config, tokens: TokenSet,
          meta: dict[str, Any] | None) -> Checkpoint:
    """One checkpoint: the plain module's weights (never compile's or DDP's wrapper), optimizer, loop state."""
    return save_checkpoint(
        path,
        model=raw,
        optimizer=optimizer,
        state={"step": progress.step, "progress": dataclasses.asdict(progress), "ranks": ranks,
               "world_size": d.world_size, "run_key": key},
        meta={
            **(meta or {}),
            "step": progress.step,
            "tokens_seen": progress.tokens_seen,
            "train_loss": progress.train_loss,
            "val_loss": progress.val_loss,
            "best_val_loss": progress.best_val_loss,
            "seconds": progress.seconds,
            "run_key": key,
            "world_size": d.world_size,
            "config": cfg.to_dict(),
            "tokens_meta": {k: tokens.meta[k] for k in ("tokenizer", "source", "val_sha256", "tokens")},
        },
    )
