"""Per-item scores beside the metrics files, so every mean can get an interval and every comparison a paired test.

- ``metrics/eval_examples.npz`` (evaluate stage): our model, keys ``TASK/FIELD``, e.g. ``lambada/acc``.
- ``baselines/examples.npz`` (baselines stage): every measured GPT-2, keys ``MODEL/CONTEXT/TASK/FIELD``, e.g.
  ``gpt2/1024/hellaswag/acc_norm`` (MODEL is the baseline's display name, as in ``baselines/metrics.json``).

The fields of each task, one entry per passage / article / question in the task file's order, are
:data:`gptlab.core.downstream.PER_ITEM`: ``acc`` (0/1) and the log-likelihoods for LAMBADA, per-article nats
with token / byte / word counts for WikiText, ``acc`` / ``acc_norm`` (0/1) with every ending's log-likelihood
for HellaSwag. Items of two models line up: same task file (its sha256 is in the metrics file), same order.

The files are plain ``.npz`` (``numpy.load(path)``, no pickles), written atomically and byte for byte the same
for the same scores (fixed zip timestamps), so DVC sees a change only when a score changes.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from gptlab.errors import DataError
from gptlab.fileio import atomic_path

EVAL_EXAMPLES = "eval_examples.npz"
BASELINE_EXAMPLES = "examples.npz"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """``{"lambada": {"acc": a}}`` → ``{"lambada/acc": a}``."""
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        if "/" in str(key):
            raise ValueError(f"examples key {key!r} contains '/'")
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = np.asarray(value)
    return flat


def write_examples(path: str | Path, tree: dict[str, Any]) -> Path:
    """Write the nested ``{name: {...: array}}`` tree as one ``.npz`` (keys joined by ``/``)."""
    path = Path(path)
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, array in sorted(flatten(tree).items()):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())
    return path


def read_examples(path: str | Path) -> dict[str, Any]:
    """The nested tree :func:`write_examples` wrote."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            flat = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"{path} is not a per-item scores file ({e}): re-run the stage that writes it") from e
    tree: dict[str, Any] = {}
    for key, array in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = array
    return tree
