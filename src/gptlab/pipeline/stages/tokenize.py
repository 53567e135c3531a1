"""The tokenize stage: GPT-2 BPE and the train/val split → ``data/tokens/`` (token shards + meta.json).

A killed run resumes from ``data/.tokens.partial/`` (outside the out, which DVC deletes before a run).
"""

from __future__ import annotations

import sys
from typing import Any

from gptlab.data.tokenize import tokenize
from gptlab.pipeline.commandline import stage_main
from gptlab.pipeline.paths import Paths
from gptlab.settings import Config


def run(cfg: Config, paths: Paths) -> dict[str, Any]:
    result = tokenize(cfg.tokenize, paths.raw, paths.tokens)
    return {"train_tokens": result.train_tokens, "val_tokens": result.val_tokens,
            "train_docs": result.train_docs, "val_docs": result.val_docs}


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
