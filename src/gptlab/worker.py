"""What each torchrun process runs when the train stage launches DDP training (``python -m gptlab.worker``).

Every rank trains; rank 0 writes the checkpoint and the MLflow run. Registration is not done here: the train
stage does it once, after all processes have finished.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gptlab.pipeline.commandline import (
    add_config_args,
    config_from_args,
    configure_logging,
    prepare_environment,
    run_guarded,
)
from gptlab.pipeline.paths import Paths
from gptlab.pipeline.stages.train import train_model


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gptlab.worker", description=__doc__)
    add_config_args(parser)
    args = parser.parse_args(argv)
    prepare_environment(args.params.parent)
    configure_logging()

    def run() -> dict[str, str] | None:
        trained = train_model(config_from_args(args), Paths(args.params.parent))
        return None if trained is None else {"run_id": trained.run, "checkpoint": str(trained.checkpoint)}

    return run_guarded(run)


if __name__ == "__main__":
    sys.exit(main())
