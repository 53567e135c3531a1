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


# Off unless the user turned them on: MLflow's and DVC's usage telemetry, Prefect's server analytics heartbeat
# (whose writes to a shared sqlite file raised `database is locked` mid-training), and DO_NOT_TRACK for the rest.
TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1",
                 "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
PREFECT_HOME = Path(".gptlab") / "prefect"
BPE_CACHE = Path(".cache") / "tiktoken"  # where `make tokenizer` (gptlab seed-tokenizer) seeds GPT-2's BPE


def checkout_root() -> Path | None:
    """The source checkout gptlab runs from (an editable install: `make env`), if it is one."""
    import gptlab

    root = Path(gptlab.__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "dvc.yaml").is_file() else None


def prepare_environment(root: str | Path) -> None:
    """What every entry point does first (the gptlab CLI, each stage module, the flows, the torchrun worker, the
    benchmarks), so that a command run by hand behaves as it does under make, for the project at ``root``:

    - telemetry off (:data:`TELEMETRY_OFF`, each unless already set);
    - tiktoken reads the project's seeded ``.cache/tiktoken`` unless TIKTOKEN_CACHE_DIR says otherwise (the
      project's, the repository a queued DVC experiment came from, or the checkout gptlab runs from);
    - Prefect's ephemeral server keeps its database in ``ROOT/.gptlab/prefect``, unless PREFECT_API_URL (a
      server) or PREFECT_HOME says where: one per project, and one per queued experiment (each runs in its own
      copy), instead of ``~/.prefect`` shared by every project and every concurrent run; its start may take
      up to 120 s (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, unless set).
    """
    from gptlab.fileio import state_root

    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)
    root = Path(root)
    if not any(os.environ.get(var) for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR")):
        # (data.tokenizer is not imported here: the download stage would then depend on it in dvc.yaml)
        for candidate in dict.fromkeys(filter(None, [root, state_root(root), checkout_root()])):
            if (candidate / BPE_CACHE).is_dir():
                os.environ["TIKTOKEN_CACHE_DIR"] = str((candidate / BPE_CACHE).resolve())
                break
    if not os.environ.get("PREFECT_API_URL") and not os.environ.get("PREFECT_HOME"):
        home = (root / PREFECT_HOME).resolve()
        home.mkdir(parents=True, exist_ok=True)  # Prefect makes its home when imported, which may be earlier
        os.environ["PREFECT_HOME"] = str(home)
    # The ephemeral server creates its database on first start (each queued experiment's is new): Prefect's
    # 20 s default is not always enough on two busy cores.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


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
    prepare_environment(args.params.parent)
    configure_logging()
    return run_guarded(lambda: run(config_from_args(args), Paths(args.params.parent)))
