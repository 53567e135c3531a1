"""Files written atomically get the mode a plain open() gives under the umask, like the shards beside them
(a temp file renamed into place used to keep mkstemp's 0600: another user's `gptlab train` could not read the
shards' meta on a shared box)."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import pytest

from gptlab.fileio import atomic_dir, atomic_path, write_json
from gptlab.pipeline.paths import Paths
from gptlab.pipeline.stages import evaluate
from gptlab.pipeline.stages.train import train_model
from gptlab.settings import replace


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_atomic_writes_get_the_mode_open_gives_under_the_umask(tmp_path: Path, mask: int):
    with umask(mask):
        (tmp_path / "plain.json").write_text("{}")
        write_json(tmp_path / "atomic.json", {})
        with atomic_path(tmp_path / "bytes.bin") as tmp:
            tmp.write_bytes(b"x")
        with atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "inside.txt").write_text("x")
        (tmp_path / "plain-dir").mkdir()
    assert mode(tmp_path / "atomic.json") == mode(tmp_path / "bytes.bin") == mode(tmp_path / "plain.json") \
        == 0o666 & ~mask
    assert mode(tmp_path / "folder") == mode(tmp_path / "plain-dir") == 0o777 & ~mask
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp left behind


def test_the_pipeline_outputs_are_readable_like_the_shards_beside_them(tiny_cfg, tokens_dir: Path, project: Path):
    cfg = replace(tiny_cfg, train={"max_iters": 4, "eval_interval": 2})
    paths = Paths(project)
    with umask(0o022):
        train_model(cfg, paths)
        evaluate.run(cfg, paths)
    shards = sorted(tokens_dir.glob("*.bin"))
    assert shards and all(mode(s) == 0o644 for s in shards)
    for path in (tokens_dir / "meta.json", paths.root / "metrics" / "eval.json", paths.root / "metrics" / "train.json",
                 paths.root / "metrics" / "train_curve.csv", paths.model / "meta.json"):
        assert mode(path) == 0o644, f"{path}: {oct(mode(path))}"
    assert mode(paths.model) == 0o755
