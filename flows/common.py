"""What every flow's command line shares: config arguments, logging, exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from gptlab.cli import add_config_args, configure_logging, run_guarded


def main(flow: Callable[..., Any], description: str) -> None:
    """``python -m flows.X [--params P] [-S K=V ...]``: run ``flow`` and exit with gptlab's exit codes."""
    parser = argparse.ArgumentParser(prog=f"python -m {flow.__module__}", description=description)
    add_config_args(parser)
    args = parser.parse_args()
    configure_logging()
    sys.exit(run_guarded(lambda: flow(params=str(args.params), overrides=list(args.overrides))))
