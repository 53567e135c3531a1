"""Checkpoints: a directory with ``model.safetensors`` (weights), ``meta.json`` (human-readable: config, step,
losses, hashes) and ``optimizer.pt`` (optimizer and loop state, loaded with ``weights_only=True``).

A checkpoint is written to a temp directory and renamed into place, so a reader (or a resumed run) never
sees a half-written one. Loading checks the weights' sha256 recorded in ``meta.json``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from gptlab.config import ModelConfig
from gptlab.fileio import atomic_dir, read_json, sha256_file, write_json
from gptlab.model import GPT

WEIGHTS, META, OPTIMIZER = "model.safetensors", "meta.json", "optimizer.pt"
TIED = "lm_head.weight"  # the same tensor as transformer.wte.weight; stored once
FORMAT_VERSION = 1


class CheckpointError(ValueError):
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
        # One metadata key: safetensors writes metadata in hash-map order, so with two keys identical weights
        # could give files with different bytes (and sha256) from one save to the next.
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


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[GPT, Checkpoint]:
    """Build the model from a checkpoint after checking the weights' sha256."""
    ckpt = open_checkpoint(path)
    weights_path = ckpt.path / WEIGHTS
    actual = sha256_file(weights_path)
    if actual != ckpt.meta["weights_sha256"]:
        raise CheckpointError(
            f"{weights_path} has sha256 {actual[:12]}…, {META} records {ckpt.meta['weights_sha256'][:12]}…: "
            "the file is corrupt or was replaced. Restore it (`dvc pull` / `dvc checkout`) or re-train"
        )
    model = GPT(ckpt.model_config)
    try:
        state = safetensors.torch.load_file(weights_path, device="cpu")
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for a foreign file
        raise CheckpointError(
            f"{weights_path} is not a safetensors file ({e}): gptlab loads weights only from safetensors, never "
            "from a pickle (unpickling can run code). Re-train, or restore the file (`dvc checkout`)"
        ) from e
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) != {TIED} or unexpected:
        raise CheckpointError(f"{weights_path}: missing {sorted(set(missing) - {TIED})}, unexpected {unexpected}")
    return model.to(device), ckpt


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Optimizer and loop state; ``weights_only=True`` so an untrusted file cannot run code."""
    file = Path(path) / OPTIMIZER
    if not file.is_file():
        raise CheckpointError(f"{file} does not exist: this checkpoint cannot resume training")
    return torch.load(file, map_location="cpu", weights_only=True)
