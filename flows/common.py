"""What every flow's command line shares: config arguments, logging, exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from prefect.context import refresh_global_settings_context

from gptlab.pipeline.commandline import add_config_args, configure_logging, prepare_environment, run_guarded
from gptlab.pipeline.config import load_config


def main(flow: Callable[..., Any], description: str) -> None:
    """``python -m flows.X [--params P] [-S K=V ...]``: run ``flow`` and exit with gptlab's exit codes."""
    parser = argparse.ArgumentParser(prog=f"python -m {flow.__module__}", description=description)
    add_config_args(parser)
    args = parser.parse_args()
    prepare_environment(args.params.parent)
    # Prefect read its settings when the flow module imported it, before PREFECT_HOME could be chosen: again.
    refresh_global_settings_context()
    configure_logging()

    def run() -> Any:
        load_config(args.params, args.overrides)  # config problems before Prefect starts: one message, exit 2
        return flow(params=str(args.params), overrides=list(args.overrides))

    sys.exit(run_guarded(run))
