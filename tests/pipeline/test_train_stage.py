"""The train stage around the core loop: where its starting weights come from, how it is launched."""

from __future__ import annotations

import pytest

from gptlab.core.checkpoint import load_model
from gptlab.core.distributed import DistributedError
from gptlab.pipeline.paths import Paths
from gptlab.pipeline.stages.train import load_init, register, train_model
from gptlab.settings import replace
from gptlab.tracking.store import Store

from ..core.test_train import _first_step_loss


def test_several_processes_need_torchrun(tiny_cfg, project):
    with pytest.raises(DistributedError, match=r"nproc_per_node=2 but this process was not started by torchrun.*flows"):
        train_model(replace(tiny_cfg, train={"nproc_per_node": 2}), Paths(project))


def test_init_names_scratch_a_checkpoint_relative_to_the_project_or_a_hugging_face_folder(tiny_cfg, project, tmp_path):
    from ..conftest import save_tiny_gpt2

    assert load_init(tiny_cfg, Paths(project)) is None
    folder = save_tiny_gpt2(tmp_path / "hf")
    model = load_init(replace(tiny_cfg, train={"init": f"hf:{folder}"}), Paths(project))
    assert model.config.n_embd == 16 and model.config.block_size == 24


def test_init_from_a_registered_model_version_fine_tunes_it(tiny_cfg, tokens_dir, project):
    """`train.init=models:/gptlab@candidate`: the stage downloads the version from MLflow and starts from it."""
    paths = Paths(project)
    base = replace(tiny_cfg, train={"max_iters": 6, "eval_interval": 6})
    register(base, paths, train_model(base, paths).run)
    registered, _ = load_model(paths.model)
    cfg = replace(tiny_cfg, train={"max_iters": 2, "eval_interval": 2, "log_interval": 1, "seed": 5,
                                   "init": "models:/gptlab@candidate"})
    train_model(cfg, paths)
    client = Store.at(project).client()
    runs = client.search_runs([client.get_experiment_by_name("gptlab").experiment_id], order_by=["start_time DESC"])
    first = client.get_metric_history(runs[0].info.run_id, "train/loss")[0]
    assert first.step == 1 and first.value == pytest.approx(_first_step_loss(registered, cfg, tokens_dir), abs=1e-5)
    assert runs[0].data.params["train.init"] == "models:/gptlab@candidate"


def test_a_queued_experiment_keeps_its_state_in_the_repository_it_came_from(tmp_path, monkeypatch):
    """`dvc queue start` runs an experiment in a temp copy (.dvc/tmp/exps/…) that is deleted afterwards."""
    from gptlab.fileio import state_root

    repo = tmp_path / "repo"
    copy = repo / ".dvc" / "tmp" / "exps" / "tmpabc"
    copy.mkdir(parents=True)
    monkeypatch.setenv("DVC_ROOT", str(repo))
    assert state_root(copy) == repo and state_root(repo) == repo
    assert Store.at(copy).uri == Store.embedded_uri(repo) and Store.at(copy).outbox == repo / ".gptlab" / "outbox"
    assert Paths(copy).checkpoints == repo / "models" / "checkpoints"
    assert Paths(copy).model == copy / "models" / "final"  # DVC outs stay in the experiment's workspace
    elsewhere = tmp_path / "other"
    assert state_root(elsewhere) == elsewhere  # not under DVC_ROOT's temp dir: itself
    monkeypatch.delenv("DVC_ROOT")
    assert state_root(copy) == copy
