"""Several seeds, one configuration: the registered versions trained with the same settings but ``train.seed``
(queued, for example, with ``dvc exp run --queue -S train.seed=1``), found by their ``gptlab.config_sha256``
tag; the report shows their mean ± std and the promotion gate can require ``tracking.promote_seeds`` of them.
"""

from __future__ import annotations

from typing import Any

from gptlab.core.stats import seed_summary
from gptlab.settings import Config
from gptlab.tracking.evidence import CONFIG_TAG, SEED_TAG, configuration_sha256, seed_versions
from gptlab.tracking.store import Store, TrackingError


def seed_runs(store: Store, cfg: Config, val_sha256: str, *, config_sha256: str | None = None) -> dict[str, Any]:
    """The evaluated seed runs of ``cfg``'s configuration on val split ``val_sha256``, with the mean ± std of
    their val loss and ppl; ``{"reason": why}`` when the registry cannot be read."""
    key = config_sha256 or configuration_sha256(cfg.to_dict())
    try:
        found = seed_versions(store, cfg.tracking.registered_model, key, val_sha256)
    except TrackingError as e:
        return {"reason": str(e)}
    runs = []
    seen: set[str] = set()
    for version, tags in reversed(found):  # newest first: a re-registered seed counts once, as its newest version
        seed = tags.get(SEED_TAG, "?")
        if seed in seen or not tags.get("val_loss"):
            continue
        seen.add(seed)
        runs.append({"version": version, "seed": seed, "val_loss": float(tags["val_loss"]),
                     "val_ppl": float(tags["val_ppl"])})
    runs.reverse()
    if not runs:
        return {"reason": f"no evaluated version of {cfg.tracking.registered_model} with {CONFIG_TAG} {key[:12]}… "
                          f"on this val split in {store.uri}"}
    return {"config_sha256": key, "runs": runs,
            "summary": {"val_loss": seed_summary([r["val_loss"] for r in runs]),
                        "val_ppl": seed_summary([r["val_ppl"] for r in runs]), "n": len(runs)}}
