"""A version registered by the gptlab before the layered layout still loads, serves and feeds the registry.

The store is made in the test by that gptlab itself: its source at the last commit of the flat layout
(`git archive`), run in a subprocess, trains nothing (a seeded random model is enough) and registers the
checkpoint as version 1, exactly as its `train` stage did. Today's code then reads that store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from gptlab.core.checkpoint import load_model
from gptlab.tracking import registry
from gptlab.tracking.store import Store

from ..conftest import REPO

pytestmark = pytest.mark.slow

FLAT_LAYOUT = "cff6ee8fff5a5fdd7e415bde6eeed63dfa065bf2"  # the last commit before src/gptlab/{core,hf,tracking,…}

REGISTER = """
import sys
from pathlib import Path
import torch
from gptlab import tracking
from gptlab.checkpoint import save_checkpoint
from gptlab.config import load_config
from gptlab.data.tokenizer import ranks_file
from gptlab.model import GPT

root = Path(sys.argv[1])
cfg = load_config(root / "params.yaml", ["profile=demo", "model.n_layer=1", "model.n_embd=32", "model.n_head=2",
                                         "model.block_size=32"])
torch.manual_seed(0)
save_checkpoint(root / "models" / "final", model=GPT(cfg.model), meta={"step": 0, "config": cfg.to_dict()})
with tracking.training_run(cfg, root=root) as tracker:
    run_id = tracker.run_id
version = tracking.log_and_register(cfg, run_id=run_id, checkpoint_dir=root / "models" / "final",
                                    tokenizer_file=ranks_file("gpt2"), root=root)
tracking.set_version_tags("gptlab", version.version, {"val_ppl": "123.4", "val_sha256": "ab" * 32}, root)
print(version.version)
"""


@pytest.fixture
def old_store(tmp_path: Path, bpe_cache: Path) -> Path:
    if subprocess.run(["git", "cat-file", "-e", f"{FLAT_LAYOUT}^{{commit}}"], cwd=REPO).returncode != 0:
        pytest.skip(f"commit {FLAT_LAYOUT[:12]} is not in this clone (a shallow clone): `git fetch --unshallow`")
    old = tmp_path / "old"
    old.mkdir()
    archive = subprocess.run(["git", "archive", "--format=tar", FLAT_LAYOUT, "src", "params.yaml", "profiles"],
                             cwd=REPO, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    project = tmp_path / "project"
    project.mkdir()
    for name in ("params.yaml", "profiles"):
        os.rename(old / name, project / name)
    done = subprocess.run([sys.executable, "-c", REGISTER, str(project)], cwd=project, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(old / "src")})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "1"
    return project


def test_a_version_registered_before_the_layered_layout_loads_and_serves(old_store: Path):
    store = Store.at(old_store)
    store.client()  # points MLflow's fluent API at the old store
    prompts = ["The future of AI is"]
    # In a process where today's gptlab is already imported (its entry file imports gptlab.tracking).
    model = mlflow.pyfunc.load_model("models:/gptlab/1")
    [text] = model.predict(prompts, params={"max_new_tokens": 6})
    assert isinstance(text, str)
    # In a fresh process, as `mlflow models serve` loads it: the model's own copy of the old code runs.
    fresh = subprocess.run(
        [sys.executable, "-c", "import json, sys, mlflow; m = mlflow.pyfunc.load_model('models:/gptlab/1'); "
         "print(json.dumps(m.predict(json.loads(sys.argv[1]), params={'max_new_tokens': 6})))", json.dumps(prompts)],
        cwd=old_store, capture_output=True, text=True, env={**os.environ, "MLFLOW_TRACKING_URI": store.uri},
    )
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert json.loads(fresh.stdout.strip().splitlines()[-1]) == [text]  # same weights, same seed, same text


def test_an_old_version_feeds_todays_registry_commands(old_store: Path, tmp_path: Path):
    store = Store.at(old_store)
    [row] = registry.list_models(store, "gptlab")
    assert row["version"] == "1" and row["aliases"] == "candidate" and row["val_ppl"] == 123.4
    checkpoint = registry.download_checkpoint(store, "models:/gptlab@candidate", tmp_path / "dl")
    model, ckpt = load_model(checkpoint)  # what rescoring and `train.init: models:/…` do
    assert model.config.n_embd == 32 and ckpt.step == 0
