"""What every command line shares (the ``gptlab`` CLI, each stage module, the flows, the torchrun worker):
config arguments, logging, and one way to turn an error a user can fix into a message and an exit code.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gptlab.errors import ConfigError, GptlabError
from gptlab.pipeline.config import load_config
from gptlab.pipeline.paths import Paths
from gptlab.settings import Config

EXIT_CONFIG, EXIT_FAILED = 2, 1


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (``main`` may run inside a host that swaps it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # noqa: ANN201 - logging's attribute
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001
        pass


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=[_StderrHandler()],
        force=True,
    )
    for name in ("gptlab", "__main__"):  # a stage run as `python -m gptlab.pipeline.stages.X` logs as __main__
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("alembic", "mlflow", "urllib3", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", type=Path,
                        help="params file; profiles/ beside it holds the overlays (default: params.yaml)")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. -S train.max_iters=100 -S profile=demo (repeatable)")


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.params, args.overrides)


def run_guarded(fn: Callable[[], Any]) -> int:
    """Run ``fn``; an error the user can fix becomes one message on stderr and a non-zero exit code."""
    try:
        result = fn()
    except ConfigError as e:
        print(f"gptlab: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("gptlab: interrupted", file=sys.stderr)
        return 130
    except GptlabError as e:
        if os.environ.get("GPTLAB_TRACEBACK"):
            raise
        print(f"gptlab: {type(e).__name__}: {e}\n(set GPTLAB_TRACEBACK=1 for the traceback)", file=sys.stderr)
        return EXIT_FAILED
    if result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0


def stage_main(run: Callable[[Config, Paths], Any], description: str | None,
               argv: Sequence[str] | None = None) -> int:
    """``python -m gptlab.pipeline.stages.X [--params P] [-S K=V …]``: one stage, as DVC runs it."""
    parser = argparse.ArgumentParser(prog=f"python -m {run.__module__}", description=description)
    add_config_args(parser)
    args = parser.parse_args(argv)
    configure_logging()
    return run_guarded(lambda: run(config_from_args(args), Paths(args.params.parent)))
