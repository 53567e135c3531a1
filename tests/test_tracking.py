"""MLflow for real, on a sqlite store in a temp dir: runs, params, metrics, pyfunc, registry, aliases."""

from __future__ import annotations

import math

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from gptlab import tracking
from gptlab.config import replace
from gptlab.stages import Paths, register_model, train_model


@pytest.fixture
def trained(tiny_cfg, tokens_dir, project):
    cfg = replace(tiny_cfg, train={"max_iters": 20, "eval_interval": 10})
    paths = Paths(project)
    run = train_model(cfg, paths)
    return cfg, paths, run


def test_a_training_run_records_params_metrics_and_provenance(trained):
    cfg, paths, run = trained
    client = MlflowClient(tracking.tracking_uri(paths.root))
    data = client.get_run(run.run_id).data
    for key, value in cfg.flat().items():
        assert data.params[key] == str(value)[:6000]
    assert data.params["profile"] == "demo"
    history = client.get_metric_history(run.run_id, "train/loss")
    assert [m.step for m in history] == [1, 11, 20] and all(math.isfinite(m.value) for m in history)
    assert [m.step for m in client.get_metric_history(run.run_id, "val/loss")] == [10, 20]
    for key in ("lr", "tokens_seen", "tokens_per_sec", "val/ppl"):
        assert key in data.metrics
    assert data.tags["gptlab.stage"] == "train" and "mlflow.source.git.commit" in data.tags
    assert data.tags["gptlab.version.torch"]
    # The store is the embedded default at the project root, artifacts beside it.
    assert (paths.root / "mlflow.db").is_file()
    assert client.get_run(run.run_id).info.artifact_uri.startswith((paths.root / "mlartifacts").resolve().as_uri())


def test_buffered_tracker_delivers_every_metric(trained):
    _, paths, run = trained
    client = tracking.configure(paths.root)
    tracker = tracking.MlflowTracker(client, run.run_id, flush_seconds=3600)
    for step in range(1500):
        tracker.log_metrics({"bench/a": step, "bench/b": -step}, step=step)
    tracker.flush()
    assert len(client.get_metric_history(run.run_id, "bench/a")) == 1500


def test_register_promote_and_generate_from_the_champion(trained):
    cfg, paths, run = trained
    registered = register_model(cfg, paths, run.run_id)
    client = tracking.configure(paths.root)
    assert str(client.get_model_version_by_alias("gptlab", "candidate").version) == registered["version"]
    assert tracking.promote("gptlab", root=paths.root) == registered["version"]
    assert str(client.get_model_version_by_alias("gptlab", "champion").version) == registered["version"]
    model = mlflow.pyfunc.load_model("models:/gptlab@champion")
    out = model.predict(["The future of AI is", "def"], params={"max_new_tokens": 5})
    assert len(out) == 2 and all(isinstance(t, str) and t for t in out)
    assert model.predict(["The future of AI is"], params={"max_new_tokens": 5}) == out[:1]  # seeded
    frame = model.predict(pd.DataFrame({"prompt": ["The future of AI is"]}), params={"max_new_tokens": 5})
    assert list(frame) == out[:1]  # a one-column DataFrame works too
    params = {p.name: p.default for p in model.metadata.signature.params.params}
    g = cfg.generate
    assert params == {"max_new_tokens": g.max_new_tokens, "temperature": g.temperature, "top_k": g.top_k,
                      "top_p": g.top_p, "seed": g.seed}


def test_promoting_a_missing_version_lists_what_exists(trained):
    cfg, paths, run = trained
    register_model(cfg, paths, run.run_id)
    with pytest.raises(tracking.TrackingError, match=r"cannot promote gptlab version 7.*Versions in .*: 1 \("):
        tracking.promote("gptlab", version="7", root=paths.root)
