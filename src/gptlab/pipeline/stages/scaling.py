"""The scaling stage: fit L(N, D) = E + A/N^α + B/D^β over the finished runs of this configuration family on
this val split (read from MLflow), forecast what reaching each GPT-2 takes → ``reports/scaling.{json,md}`` and
two plots, recorded as an MLflow run of its own.

Its input is the tracking store, which DVC cannot hash: the stage is ``always_changed`` in dvc.yaml, and its
outputs are deterministic (a seeded bootstrap), so the report after it re-runs only when the fit changed.
Too few runs is not a failure: the files say "not enough runs: …" and which sweep to run.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from gptlab.errors import ConfigError, GptlabError
from gptlab.fileio import read_json
from gptlab.pipeline.commandline import stage_main
from gptlab.pipeline.config import load_config
from gptlab.pipeline.paths import Paths
from gptlab.pipeline.scaling import ScalingPaths, read_optional, study, write
from gptlab.settings import Config
from gptlab.tracking.results import finished_training_runs
from gptlab.tracking.runs import recording
from gptlab.tracking.store import Store

log = logging.getLogger(__name__)


def seed_config(paths: Paths) -> Config | None:
    """params.yaml's own experiment (the seed), whose longer runs the forecast prices; None if it cannot load."""
    try:
        return load_config(paths.root / "params.yaml", ["profile=seed"])
    except ConfigError:
        return None


def run(cfg: Config, paths: Paths) -> dict[str, Any]:
    meta = paths.tokens / "meta.json"
    if not meta.is_file():
        raise GptlabError(f"{meta} is missing: the fit reads runs scored on this val split. Tokenize first: "
                          f"`dvc repro tokenize` (with this profile: `dvc exp run -S profile={cfg.profile} tokenize`)")
    val_sha256 = read_json(meta)["val_sha256"]
    store = Store.at(paths.root)
    runs = finished_training_runs(store, cfg.tracking.experiment)
    result = study(cfg, runs=runs, val_sha256=val_sha256, baselines=read_optional(paths.baselines / "metrics.json"),
                   seed=seed_config(paths))
    out = ScalingPaths.under(paths.reports)
    write(result, out)
    tags = {"gptlab.val_sha256": val_sha256, "gptlab.scaling.fitted": str(result["fitted"]).lower()}
    with recording(store, cfg, "scaling", name="scaling fit", tags=tags) as tracker:
        metrics: dict[str, float] = {"scaling/runs": result["runs"]}
        if result["fitted"]:
            metrics.update({f"scaling/{k}": v for k, v in result["law"].items()})
            metrics["scaling/rms_residual"] = result["rms_residual"]
        tracker.log_metrics(metrics)
        tracker.log_artifacts(*out.files(), artifact_path="scaling")
    if result["fitted"]:
        log.info("scaling: fitted %d runs: %s (RMS residual %.2f%%)", result["runs"], result["law"],
                 100 * result["rms_residual"])
    else:
        log.warning("scaling: %s", result["reason"])
    return {"report": str(out.markdown), "fitted": result["fitted"], "runs": result["runs"],
            **({"law": result["law"]} if result["fitted"] else {"reason": result["reason"]})}


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
