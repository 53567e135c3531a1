"""Registry work that needs the model itself: re-scoring a registered version on the current val split, and
the gate the pipeline flow ends with.

Perplexities are comparable only on the same val tokens. When new data arrives the candidate is scored on the
new val split; :func:`gate` re-scores the champion on that split too (its ``val_*`` tags then describe the new
split, the old values move to ``previous.val_*``), and only then asks :func:`gptlab.tracking.promote`.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from gptlab.config import Config
from gptlab.stages import Paths, score

log = logging.getLogger(__name__)

VAL_TAGS = ("val_ppl", "val_loss", "val_sha256", "context")


def rescore(cfg: Config, paths: Paths, *, alias: str | None = None, version: str | None = None) -> dict[str, Any]:
    """Score a registered version (by ``alias`` or ``version``) on ``paths.tokens``' val split; update its tags."""
    from gptlab import tracking

    name = cfg.tracking.registered_model
    found = tracking.version_tags(name, alias=alias, version=version, root=paths.root)
    if found is None:
        raise tracking.TrackingError(f"{name} has no alias {alias!r}: nothing to re-score (`gptlab models` lists versions)")
    version, old = found
    with tempfile.TemporaryDirectory(prefix="gptlab-rescore-") as tmp:
        checkpoint = tracking.download_checkpoint(f"models:/{name}/{version}", Path(tmp) / "download", root=paths.root)
        # score() reads <root>/models/final and <root>/data/tokens: point a scratch root at both.
        scratch = Paths(Path(tmp) / "root")
        scratch.model.parent.mkdir(parents=True)
        scratch.model.symlink_to(checkpoint.resolve(), target_is_directory=True)
        scratch.tokens.parent.mkdir(parents=True)
        scratch.tokens.symlink_to(paths.tokens.resolve(), target_is_directory=True)
        result = score(cfg, scratch)
    tags = {"val_ppl": f"{result['model']['ppl']:.6g}", "val_loss": f"{result['model']['loss']:.6g}",
            "val_sha256": result["val_sha256"], "context": result["context"]}
    if old.get("val_sha256") and old.get("val_sha256") != result["val_sha256"]:
        tags.update({f"previous.{k}": old[k] for k in VAL_TAGS if k in old})
    tracking.set_version_tags(name, version, tags, root=paths.root)
    log.info("rescore: %s version %s: val ppl %s on val split %s…", name, version, tags["val_ppl"],
             result["val_sha256"][:12])
    return {"model": name, "version": version, **tags}


def gate(cfg: Config, paths: Paths, *, force: bool = False) -> dict[str, Any]:
    """The end of the pipeline: ``candidate`` → ``champion`` if it wins on the same val split (re-scoring
    the champion first when the val data changed since it was scored). Returns the recorded decision."""
    from gptlab import tracking

    name = cfg.tracking.registered_model
    candidate = tracking.version_tags(name, alias=tracking.CANDIDATE, root=paths.root)
    champion = tracking.version_tags(name, alias=tracking.CHAMPION, root=paths.root)
    rescored = None
    if candidate and champion and candidate[0] != champion[0]:
        new_split, old_split = candidate[1].get("val_sha256"), champion[1].get("val_sha256")
        if new_split and new_split != old_split:
            rescored = rescore(cfg, paths, alias=tracking.CHAMPION)
    promotion = tracking.promote(name, margin=cfg.tracking.promote_margin, force=force, root=paths.root)
    return {**promotion.to_dict(), "rescored_champion": rescored}
