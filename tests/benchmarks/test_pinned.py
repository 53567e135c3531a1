"""Benchmarks measure what they say: the seed profile unless told otherwise, whatever the workspace's params.yaml
is on (`make demo` leaves it on `profile: demo`)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from ..conftest import REPO

SEED_SHAPE = {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 512}


@pytest.fixture
def after_make_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A checkout whose params.yaml is where `make demo` leaves it: on `profile: demo`; benchmarks/ beside it."""
    text, n = re.subn(r"^profile: *\S+", "profile: demo", (REPO / "params.yaml").read_text(), count=1, flags=re.M)
    assert n == 1
    (tmp_path / "params.yaml").write_text(text)
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    shutil.copytree(REPO / "benchmarks", tmp_path / "benchmarks", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.syspath_prepend(str(tmp_path / "benchmarks"))  # as `python benchmarks/x.py` puts it first
    for name in ("pinned", "bench_train", "bench_eval"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return tmp_path


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _shape(model) -> dict[str, int]:
    return {k: getattr(model, k) for k in SEED_SHAPE}


def test_bench_train_measures_the_seed_model_after_make_demo(after_make_demo, tmp_path):
    bench = _load(after_make_demo / "benchmarks" / "bench_train.py")
    cfg = bench.seed_config(tmp_path / "run", 8, 4)
    assert _shape(cfg.model) == SEED_SHAPE, "bench_train measured the workspace's demo profile, not the seed model"
    assert cfg.tokens_per_step == 8 * 512 * 2


def test_benchmarks_pin_the_profile_they_are_told(after_make_demo):
    pinned = _load(after_make_demo / "benchmarks" / "pinned.py")
    assert _shape(pinned.pinned_config().model) == SEED_SHAPE
    demo = pinned.pinned_config("demo").model
    assert (demo.n_layer, demo.n_embd) == (2, 128)


def test_the_description_is_read_from_the_model_that_ran():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from pinned import describe
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    from gptlab.core.model import GPT
    from gptlab.settings import ModelConfig

    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=50304, dropout=0.0, bias=False))
    line = describe(model, device=torch.device("cpu"), dtype=torch.bfloat16, compiled=False)
    assert line.startswith("model 1/2/32, context 16, vocab 50304, 1.6M params")
    assert "float32 weights, autocast bfloat16, eager" in line and f"{torch.get_num_threads()} threads" in line
    assert "load average" in line
