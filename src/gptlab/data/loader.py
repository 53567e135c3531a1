"""Batches from token shards: random training windows and deterministic evaluation windows."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptlab.data.shards import DTYPE, FIX, HEADER_BYTES, ShardError, read_header, read_shard, verify_shard
from gptlab.errors import DataError
from gptlab.fileio import read_json


@dataclass(frozen=True)
class TokenSet:
    """The shards of one tokenize run, as ``meta.json`` lists them."""

    root: Path
    meta: dict[str, Any]

    @classmethod
    def open(cls, root: str | Path = "data/tokens", *, verify: bool = False) -> TokenSet:
        """Check every shard's header (and, with ``verify``, its sha256) against ``meta.json``."""
        root = Path(root)
        if not (root / "meta.json").is_file():
            raise ShardError(f"{root}/meta.json does not exist: {FIX}")
        meta = read_json(root / "meta.json")
        for shard in meta["shards"]:
            path = root / shard["name"]
            count = read_header(path)
            if count != shard["tokens"]:
                raise ShardError(f"{path} holds {count} tokens, meta.json says {shard['tokens']}: {FIX}")
            if verify:
                verify_shard(path, shard["sha256"])
        return cls(root, meta)

    def paths(self, split: str) -> list[Path]:
        return [self.root / s["name"] for s in self.meta["shards"] if s["split"] == split]

    def tokens(self, split: str) -> int:
        return int(self.meta["tokens"][split])

    def unigram_counts(self) -> np.ndarray:
        return np.load(self.root / "unigram_counts.npy")


def to_device(x: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(x.astype(np.int64))
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class RandomWindows:
    """Seeded random ``(x, y)`` windows of ``block_size`` tokens across all shards of a split.

    Every window start in every shard is equally likely (a shard is drawn in proportion to its number of
    window starts, then a start within it); a window never crosses a shard's end. Each distributed rank draws
    from its own stream (seed, rank), so ranks see different windows. The generator state is part of
    :meth:`state_dict`, so a resumed run draws the same batches. Windows are read with plain file reads into
    one preallocated batch: no memory map stays open, so memory does not creep over a long run.
    """

    def __init__(self, paths: list[Path], *, block_size: int, batch_size: int, seed: int, rank: int = 0):
        if not paths:
            raise ShardError(f"no token shards to draw training windows from: {FIX}")
        self.paths = [Path(p) for p in paths]
        self.block_size = block_size
        self.batch_size = batch_size
        self.rank = rank
        self.lengths = np.array([read_header(p) for p in self.paths], dtype=np.int64)
        starts = np.clip(self.lengths - block_size, 0, None)  # window starts per shard: 0 … len - block_size - 1
        if starts.sum() == 0:
            raise ShardError(
                f"no shard of {self.paths[0].parent} has more than model.block_size={block_size} tokens "
                f"(largest: {int(self.lengths.max(initial=0))}): lower model.block_size or use more data"
            )
        self.weights = starts / starts.sum()
        self.rng = np.random.default_rng([seed, rank])

    def next_numpy(self) -> tuple[np.ndarray, np.ndarray]:
        shard_ids = self.rng.choice(len(self.paths), size=self.batch_size, p=self.weights)
        offsets = self.rng.integers(0, self.lengths[shard_ids] - self.block_size, dtype=np.int64)
        windows = np.empty((self.batch_size, self.block_size + 1), dtype=DTYPE)
        nbytes = windows.shape[1] * DTYPE.itemsize
        for shard in np.unique(shard_ids):
            with open(self.paths[shard], "rb") as f:
                for row in np.flatnonzero(shard_ids == shard):
                    f.seek(HEADER_BYTES + int(offsets[row]) * DTYPE.itemsize)
                    if f.readinto(memoryview(windows[row]).cast("B")) != nbytes:
                        raise ShardError(f"{self.paths[shard]} is shorter than its header says (changed while "
                                         f"training?): {FIX}")
        return windows[:, :-1], windows[:, 1:]

    def next(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.next_numpy()
        return to_device(x, device), to_device(y, device)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "rank": self.rank, "lengths": self.lengths.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "lengths" in state and list(state["lengths"]) != self.lengths.tolist():
            raise DataError(
                "the training shards differ from the ones this loader state was saved with "
                f"({len(state['lengths'])} shards / {sum(state['lengths'])} tokens then, {len(self.lengths)} / "
                f"{int(self.lengths.sum())} now): resume with the same data/tokens (`dvc checkout`), or start fresh"
            )
        self.rng.bit_generator.state = state["rng"]


def sequential_windows(
    tokens: np.ndarray, *, block_size: int, batch_size: int, max_tokens: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Non-overlapping windows that predict every token after the first exactly once, in order.

    Full windows come in batches of ``batch_size``; a shorter final window comes alone, so the whole
    split is covered with no padding and no token scored twice.
    """
    n = len(tokens) if max_tokens is None else min(len(tokens), max_tokens + 1)
    starts = list(range(0, n - 1, block_size))
    full = [s for s in starts if s + block_size + 1 <= n]
    for i in range(0, len(full), batch_size):
        rows = np.stack([np.asarray(tokens[s : s + block_size + 1]) for s in full[i : i + batch_size]])
        yield rows[:, :-1], rows[:, 1:]
    if len(full) < len(starts):
        tail = np.asarray(tokens[starts[-1] : n])[None, :]
        yield tail[:, :-1], tail[:, 1:]


def spread_windows(tokens: np.ndarray, *, block_size: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` windows at evenly spaced offsets across ``tokens``: a fixed, representative sample of a split
    (periodic val-loss estimates use the same windows every time, so the curve carries no sampling noise)."""
    if len(tokens) <= block_size:
        raise ShardError(f"{len(tokens)} tokens cannot fill one window of model.block_size={block_size}: {FIX}")
    starts = np.linspace(0, len(tokens) - block_size - 1, num=count).astype(np.int64)
    rows = np.stack([np.asarray(tokens[s : s + block_size + 1]) for s in starts])
    return rows[:, :-1], rows[:, 1:]


def val_tokens(token_set: TokenSet) -> np.ndarray:
    """The whole validation split as one array (memory-mapped when it is a single shard)."""
    parts = [read_shard(p) for p in token_set.paths("val")]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
