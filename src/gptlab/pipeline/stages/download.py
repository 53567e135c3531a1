"""The download stage: the corpus ``data.source`` names → ``data/raw/`` (an interrupted hub download resumes)."""

from __future__ import annotations

import sys
from typing import Any

from gptlab.data.download import download
from gptlab.pipeline.commandline import stage_main
from gptlab.pipeline.paths import Paths
from gptlab.settings import Config


def run(cfg: Config, paths: Paths) -> dict[str, Any]:
    result = download(cfg.data, paths.raw)
    return {"documents": result.documents, "rows": result.rows, "skipped": result.skipped}


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
