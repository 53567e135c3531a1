"""The report stage: the comparison table regenerated from the measurements, plots and samples side by side
→ ``reports/``, recorded in the training's MLflow run."""

from __future__ import annotations

import math
import sys
from typing import Any

from gptlab.fileio import read_json
from gptlab.pipeline.commandline import stage_main
from gptlab.pipeline.intervals import WINDOWS_FILE
from gptlab.pipeline.paths import Paths
from gptlab.pipeline.report import build_report
from gptlab.pipeline.scaling import ScalingPaths, read_optional, summary_lines
from gptlab.pipeline.seeds import seed_runs
from gptlab.settings import Config
from gptlab.tracking.runs import recording
from gptlab.tracking.store import Store


def run(cfg: Config, paths: Paths) -> dict[str, Any]:
    store = Store.at(paths.root)
    val_sha256 = read_json(paths.metrics / "eval.json")["val_sha256"]
    out = build_report(
        train_metrics=paths.metrics / "train.json", eval_metrics=paths.metrics / "eval.json",
        curve=paths.metrics / "train_curve.csv", out_dir=paths.reports,
        generate_metrics=paths.metrics / "generate.json", baselines=paths.baselines / "metrics.json",
        samples=paths.samples / "samples.json", baseline_samples=paths.baselines / "samples.json",
        plateau_evals=cfg.eval.plateau_evals,
        windows=paths.metrics / WINDOWS_FILE, baseline_windows=paths.baselines,
        seeds=seed_runs(store, cfg, val_sha256),
        sections=summary_lines(read_optional(ScalingPaths.under(paths.reports).json)),
    )
    run_ref = read_json(paths.metrics / "train.json").get("mlflow_run_id")  # a dep of this stage; models/ is not
    with recording(store, cfg, "report", attach=run_ref) as tracker:
        tracker.log_artifacts(*out.files(), artifact_path="report")
    evaluation = read_json(paths.metrics / "eval.json")
    ppl = evaluation["model"]["ppl"]
    return {
        "report": str(out.markdown),
        "val_ppl": ppl,
        "unigram_ppl": evaluation["unigram"]["ppl"],
        "learned": ppl < evaluation["unigram"]["ppl"] and math.isfinite(ppl),
    }


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
