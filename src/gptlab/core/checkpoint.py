"""Checkpoints: a directory with ``model.safetensors`` (weights), ``meta.json`` (human-readable: config, step,
losses, hashes) and ``optimizer.pt`` (optimizer and loop state, loaded with ``weights_only=True``).

A checkpoint is written to a temp directory and renamed into place, so a reader (or a resumed run) never
sees a half-written one. Loading checks the weights' sha256 recorded in ``meta.json``.

Resumable runs keep a series of them, ``step-00001000/``, ``step-00002000/``, … in one folder;
:func:`latest_checkpoint` returns the newest intact one, skipping any that a crash or a disk damaged.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from gptlab.core.model import GPT
from gptlab.errors import GptlabError
from gptlab.fileio import atomic_dir, read_json, sha256_file, write_json
from gptlab.settings import ModelConfig

log = logging.getLogger(__name__)

WEIGHTS, META, OPTIMIZER = "model.safetensors", "meta.json", "optimizer.pt"
TIED = "lm_head.weight"  # the same tensor as transformer.wte.weight; stored once
FORMAT_VERSION = 1
STEP_DIR = re.compile(r"^step-(\d+)$")
# What atomic_dir leaves behind when the process dies mid-write: `.step-….tmp` (unfinished) and `.step-….old`.
LEFTOVER = re.compile(r"^\.step-\d+\.(.+\.tmp|old)$")


class CheckpointError(GptlabError, ValueError):
    """A checkpoint that is missing, incomplete or corrupt; the message names the file and the fix."""


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    meta: dict[str, Any]

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig(**self.meta["model"])

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def save_checkpoint(
    path: str | Path,
    *,
    model: GPT,
    meta: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    state: dict[str, Any] | None = None,
) -> Checkpoint:
    """Write weights (+ optimizer and loop ``state``) and ``meta`` atomically; returns the checkpoint.

    ``model`` must be the plain module (not ``torch.compile``'s or DDP's wrapper), so keys stay portable.
    """
    path = Path(path)
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k != TIED}
    with atomic_dir(path) as tmp:
        # One metadata key: safetensors writes its metadata map in hash order, which varies from save to save
        # with two or more keys, so identical weights got different file hashes (the version is in meta.json).
        safetensors.torch.save_file(weights, tmp / WEIGHTS, metadata={"format": "gptlab"})
        if optimizer is not None or state is not None:
            torch.save({"optimizer": optimizer.state_dict() if optimizer else None, "state": state}, tmp / OPTIMIZER)
        full_meta = {
            **meta,
            "format_version": FORMAT_VERSION,
            "model": dataclasses.asdict(model.config),
            "weights_sha256": sha256_file(tmp / WEIGHTS),
        }
        write_json(tmp / META, full_meta)
    return Checkpoint(path, full_meta)


def open_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    fix = "re-run `gptlab train` (or `dvc repro train`, or `dvc pull` to restore it)"
    for name in (META, WEIGHTS):
        if not (path / name).is_file():
            raise CheckpointError(f"{path / name} does not exist: not a complete gptlab checkpoint; {fix}")
    meta = read_json(path / META)
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path / META}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    return Checkpoint(path, meta)


def load_weights(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors (on CPU, without the tied ``lm_head.weight``) after checking their sha256."""
    weights_path = ckpt.path / WEIGHTS
    actual = sha256_file(weights_path)
    if actual != ckpt.meta["weights_sha256"]:
        raise CheckpointError(
            f"{weights_path} has sha256 {actual[:12]}…, {META} records {ckpt.meta['weights_sha256'][:12]}…: "
            "the file is corrupt or was replaced. Restore it (`dvc pull` / `dvc checkout`) or re-train"
        )
    try:
        return safetensors.torch.load_file(weights_path, device="cpu")
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for a foreign file
        raise CheckpointError(
            f"{weights_path} is not a safetensors file ({e}): gptlab loads weights only from safetensors, never "
            "from a pickle (unpickling can run code). Re-train, or restore the file (`dvc checkout`)"
        ) from e


def load_state_into(model: GPT, weights: dict[str, torch.Tensor], source: Path) -> None:
    """Copy ``weights`` (as :func:`load_weights` returns them) into ``model``; every key must match."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if set(missing) - {TIED} or unexpected:
        raise CheckpointError(f"{source / WEIGHTS}: missing {sorted(set(missing) - {TIED})}, unexpected {unexpected}")


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[GPT, Checkpoint]:
    """Build the model from a checkpoint after checking the weights' sha256."""
    ckpt = open_checkpoint(path)
    model = GPT(ckpt.model_config)
    load_state_into(model, load_weights(ckpt), ckpt.path)
    return model.to(device), ckpt


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Optimizer and loop state; ``weights_only=True`` so an untrusted file cannot run code."""
    file = Path(path) / OPTIMIZER
    if not file.is_file():
        raise CheckpointError(f"{file} does not exist: this checkpoint cannot resume training")
    return torch.load(file, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------ a resumable series


@dataclass(frozen=True)
class TrainingCheckpoint:
    """A checkpoint read whole, ready to resume from: meta, verified weights and the optimizer/loop state."""

    checkpoint: Checkpoint
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return self.checkpoint.step


def step_path(root: str | Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def checkpoint_steps(root: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``step-N`` folder under ``root``, newest first (complete or not)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return sorted(found, reverse=True)


def latest_checkpoint(root: str | Path) -> TrainingCheckpoint | None:
    """The newest checkpoint under ``root`` whose files are complete and intact, or None.

    A damaged one (truncated, hash mismatch, unreadable state) is skipped with a warning, and the one before
    it is tried: a crash or a full disk costs the steps since the previous checkpoint, never the run.
    """
    for _step, path in checkpoint_steps(root):
        try:
            ckpt = open_checkpoint(path)
            weights = load_weights(ckpt)
            state = load_training_state(path)
        except Exception as e:  # noqa: BLE001 - a damaged file fails in many ways (torch's unpickler: IndexError…)
            log.warning("skipping checkpoint %s: %s: %s", path, type(e).__name__, e)
            continue
        if not isinstance(state.get("state"), dict) or "step" not in state["state"]:
            log.warning("skipping checkpoint %s: %s holds no training-loop state", path, OPTIMIZER)
            continue
        return TrainingCheckpoint(ckpt, weights, state)
    return None


def remove_leftovers(root: str | Path) -> list[Path]:
    """Delete the temp folders of checkpoint writes that a killed process never finished; returns them."""
    root = Path(root)
    removed = [p for p in root.iterdir() if p.is_dir() and LEFTOVER.match(p.name)] if root.is_dir() else []
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def prune(root: str | Path, *, keep: int) -> None:
    """Keep the ``keep`` newest ``step-N`` checkpoints under ``root``; delete the older ones."""
    for _step, path in checkpoint_steps(root)[keep:]:
        shutil.rmtree(path, ignore_errors=True)
