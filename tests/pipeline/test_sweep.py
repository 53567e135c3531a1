"""The sweep's plan (points, their `dvc exp run --queue` commands) and the scaling study over its runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from gptlab.core.scaling import Law, non_embedding_params
from gptlab.pipeline.config import load_config
from gptlab.pipeline.scaling import ScalingPaths, study, summary_lines, write
from gptlab.pipeline.sweep import done_runs, plan
from gptlab.tracking.results import FinishedRun

SHA = "ab" * 32


def fake_run(cfg, *, run_id: str, loss: float, sha: str = SHA) -> FinishedRun:
    """A finished training run as MLflow returns it: every param as the training logged it (str of each)."""
    params = {"profile": cfg.profile, **{k: str(v)[:6000] for k, v in cfg.flat().items()}}
    return FinishedRun(run_id, params, {"eval/val_loss": loss, "train/loss": loss + 0.1},
                       {"gptlab.stage": "train", "gptlab.val_sha256": sha})


def test_the_plan_is_every_size_times_every_budget_with_overrides_in_the_profile_file(project: Path):
    points = plan(project / "params.yaml", ["profile=scaling", "train.lr=0.002"])
    cfg = load_config(project / "params.yaml", ["profile=scaling"])
    assert len(points) == len(cfg.scaling.sizes) * len(cfg.scaling.max_iters) == 9
    first = points[0]
    assert first.name == "scaling-1x2x32-50"
    assert first.command() == [
        "dvc", "exp", "run", "--queue", "-n", "scaling-1x2x32-50", "-S", "profile=scaling",
        "-S", "profiles/scaling.yaml:train.lr=0.002",
        "-S", "profiles/scaling.yaml:model.n_layer=1", "-S", "profiles/scaling.yaml:model.n_head=2",
        "-S", "profiles/scaling.yaml:model.n_embd=32", "-S", "profiles/scaling.yaml:train.max_iters=50",
        "evaluate",
    ]
    last = points[-1]
    assert (last.cfg.model.n_embd, last.cfg.train.max_iters, last.cfg.train.lr) == (128, 200, 0.002)
    assert last.N == non_embedding_params(n_layer=2, n_embd=128, bias=False)
    assert last.D == 200 * 8 * 1 * 64


def test_a_point_is_done_only_when_a_run_has_exactly_its_settings(project: Path):
    params = project / "params.yaml"
    points = plan(params, ["profile=scaling"])
    runs = [fake_run(points[0].cfg, run_id="a", loss=5.0),
            fake_run(load_config(params, ["profile=scaling", "model.n_layer=1", "model.n_head=2", "model.n_embd=32",
                                          "train.max_iters=100", "train.lr=0.01"]), run_id="other-lr", loss=4.0),
            # a watch-only setting (log_interval) does not make a different run
            fake_run(load_config(params, ["profile=scaling", "model.n_layer=2", "model.n_head=2", "model.n_embd=64",
                                          "train.max_iters=50", "train.log_interval=5"]), run_id="b", loss=4.5)]
    done = done_runs(points, runs)
    assert {name: run.run_id for name, run in done.items()} == {"scaling-1x2x32-50": "a", "scaling-2x2x64-50": "b"}


def test_the_study_fits_the_sweeps_runs_and_forecasts_with_intervals(project: Path, tmp_path: Path):
    params = project / "params.yaml"
    cfg = load_config(params, ["profile=scaling", "scaling.bootstrap=8"])
    points = plan(params, ["profile=scaling"])
    truth = Law(E=3.0, A=60.0, alpha=0.4, B=300.0, beta=0.45)
    runs = [fake_run(p.cfg, run_id=p.name, loss=float(truth.loss(p.N, p.D))) for p in points]
    runs.append(fake_run(points[0].cfg, run_id="other-split", loss=1.0, sha="cd" * 32))  # not this val split
    seed = load_config(params, ["profile=seed"])
    baselines = {"val_sha256": SHA, "baselines": {"gpt2": {"display": "gpt2", "measured": True, "contexts": {
        "64": {"val": {"measured": True, "loss": 3.3}}}}}}
    result = study(cfg, runs=runs, val_sha256=SHA, baselines=baselines, seed=seed)
    assert result["fitted"] and result["runs"] == 9 and "other-split" not in result["run_ids"]
    for name in ("alpha", "beta"):
        assert result["law"][name] == pytest.approx(getattr(truth, name), rel=1e-3)
    assert result["rms_residual"] < 1e-6
    lo, hi = result["law_95"]["E"]
    assert lo - 1e-9 <= result["law"]["E"] <= hi + 1e-9
    gpt2 = result["forecast"]["targets"][0]
    assert gpt2["name"] == "gpt2" and gpt2["source"] == "measured on this val split @64"
    assert float(truth.loss(gpt2["optimal_N"], gpt2["optimal_D"])) == pytest.approx(3.3, rel=1e-4)
    assert gpt2["beyond_grid"] > 1  # a 3.3 loss lies beyond these tiny runs: said, not hidden
    # The published rows are labelled, and a loss under the law's floor E is never reached.
    published = [t for t in result["forecast"]["targets"] if t["source"].startswith("published")]
    assert [t["optimal_flops"] is None for t in published] == [False, True, True, True]  # 2.84 … 2.54 < E = 3.0
    [s20k, *_] = result["forecast"]["seed"]
    assert s20k["iters"] == 20000 and s20k["D"] == 20000 * seed.tokens_per_step and s20k["beyond_grid"] > 100
    assert not result["seed_same_data"]  # the seed trains on OpenWebText, these runs on the demo corpus

    out = ScalingPaths.under(tmp_path)
    write(result, out)
    saved = json.loads(out.json.read_text())
    assert saved["law"] == pytest.approx(result["law"])
    text = out.markdown.read_text()
    assert "| alpha |" in text and "extrapolated" in text and "different corpus" in text
    for png in (out.loss_png, out.isoflop_png):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("the seed configuration at 50,000 iterations" in line for line in summary_lines(saved))


def test_too_few_runs_write_not_enough_runs_and_what_to_run(project: Path, tmp_path: Path):
    params = project / "params.yaml"
    cfg = load_config(params, ["profile=scaling"])
    points = plan(params, ["profile=scaling"])[:3]  # one size, three budgets
    runs = [fake_run(p.cfg, run_id=p.name, loss=5.0 - i / 10) for i, p in enumerate(points)]
    result = study(cfg, runs=runs, val_sha256=SHA, baselines=None, seed=None)
    assert not result["fitted"]
    assert result["reason"].startswith("not enough runs: 3 finished run(s)")
    assert "1 distinct model sizes" in result["reason"] and "gptlab sweep run -S profile=scaling" in result["reason"]
    out = ScalingPaths.under(tmp_path)
    write(result, out)
    assert "not enough runs" in out.markdown.read_text()
    assert out.loss_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # DVC needs every declared plot file
    assert summary_lines(json.loads(out.json.read_text()))[2].startswith("not enough runs")
    assert math.isfinite(json.loads(out.json.read_text())["points"][0]["loss"])


def test_scaling_settings_are_checked_with_the_fix(project: Path):
    from gptlab.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        load_config(project / "params.yaml", ["scaling.sizes=[{n_layer: 2, n_head: 3, n_embd: 64}]",
                                              "scaling.max_iters=[100, 100]", "scaling.mfu=1.5"])
    text = str(e.value)
    assert "`scaling.sizes[0]` must have n_layer, n_head, n_embd > 0 and n_head dividing n_embd" in text
    assert "`scaling.max_iters` must list distinct step counts > 0, got [100, 100]" in text
    assert "`scaling.mfu` must be in (0, 1]" in text
    # A profile may leave the scaling section out: it takes params.yaml's.
    (project / "profiles" / "noscaling.yaml").write_text(
        "".join(f"{s}: {{}}\n" for s in ("data", "tokenize", "model", "train", "eval", "generate", "tracking")))
    assert load_config(project / "params.yaml", ["profile=noscaling"]).scaling.max_iters == (5000, 20000, 50000)
