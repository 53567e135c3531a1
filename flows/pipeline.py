"""The pipeline flow: scheduled retraining from data to registry, ending with the promotion gate.

`dvc repro` rebuilds whatever changed since the last run (new data re-runs everything; a params or code change
only what it affects) and records it in dvc.lock; then the gate decides whether the new `candidate` becomes
`champion` (re-scoring the champion first when the val data changed). `prefect.yaml` deploys it on a schedule
to a GPU work pool; `python -m flows.pipeline` runs it once, here.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE

from gptlab.errors import GptlabError
from gptlab.pipeline.config import load_config
from gptlab.pipeline.paths import Paths
from gptlab.pipeline.promotion import gate
from gptlab.settings import Config

log = logging.getLogger(__name__)


def _dvc(args: list[str], root: Path) -> str:
    # The dvc next to this interpreter: the project's environment, whatever the worker's PATH says.
    dvc = Path(sys.executable).with_name("dvc")
    result = subprocess.run([str(dvc) if dvc.exists() else "dvc", *args], cwd=root, capture_output=True, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if result.returncode != 0:
        raise GptlabError(f"`dvc {' '.join(args)}` failed in {root} (exit {result.returncode}):\n"
                           + "\n".join((result.stdout + result.stderr).strip().splitlines()[-30:]))
    return result.stdout + result.stderr


# Remote storage can flake: retry the transfers, never the training.
@task(name="dvc-pull", cache_policy=NONE, retries=2, retry_delay_seconds=30)
def pull_task(root: Path) -> None:
    _dvc(["pull", "--allow-missing"], root)


@task(name="dvc-push", cache_policy=NONE, retries=2, retry_delay_seconds=30)
def push_task(root: Path) -> None:
    _dvc(["push"], root)


@task(name="dvc-repro", cache_policy=NONE)
def repro_task(root: Path, overrides: list[str]) -> list[str]:
    """``dvc repro`` (or ``dvc exp run -S …`` with overrides); returns the stages that ran."""
    args = ["repro"] if not overrides else ["exp", "run", *[x for o in overrides for x in ("-S", o)]]
    out = _dvc(args, root)
    ran = [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")]
    log.info("dvc: %s", ", ".join(ran) or "nothing changed")
    return ran


@task(name="promotion-gate", cache_policy=NONE, retries=2, retry_delay_seconds=10)
def gate_task(cfg: Config, paths: Paths, force: bool) -> dict[str, Any]:
    return gate(cfg, paths, force=force)


@flow(name="gptlab-pipeline")
def pipeline_flow(
    params: str = "params.yaml",
    overrides: list[str] | None = None,
    pull: bool = False,
    push: bool = False,
    force_promote: bool = False,
) -> dict[str, Any]:
    """Rebuild what changed (``dvc repro``), then gate ``candidate`` → ``champion``.

    ``pull`` / ``push``: fetch data from / store outputs in the DVC remote (teams; see README).
    """
    overrides = overrides or []
    root = Path(params).parent
    load_config(params, overrides)  # every config problem before any work
    if pull:
        pull_task(root)
    ran = repro_task(root, overrides)
    if push:
        push_task(root)
    cfg = load_config(params)  # after `dvc exp run -S`, params.yaml holds the overrides
    promotion = gate_task(cfg, Paths(root), force_promote)
    return {"stages_run": ran, "promotion": promotion}


if __name__ == "__main__":
    from flows.common import main

    main(pipeline_flow, __doc__)
