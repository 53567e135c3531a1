"""The promotion gate: does a candidate model version replace the champion?

A candidate replaces the champion only when both were evaluated on the same val split (the sha256 of the
val token files, which the evaluate stage tags on every version) and the candidate's val perplexity is
lower by at least ``margin`` (a fraction of the champion's). ``force`` overrides the gate; the reason it
would have given is still recorded. :func:`decide` is the rule, pure; :func:`promote` applies it to the
registry, and :func:`gate` (the pipeline flow's last step) first re-scores the champion on the current val
split when the data changed since it was scored (:func:`rescore`).
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gptlab.core.checkpoint import load_model
from gptlab.data.loader import TokenSet
from gptlab.errors import GptlabError
from gptlab.pipeline.comparison import eval_device, score_val, val_tags
from gptlab.pipeline.paths import Paths
from gptlab.settings import Config
from gptlab.tracking import registry
from gptlab.tracking.registry import CANDIDATE, CHAMPION
from gptlab.tracking.store import Store, TrackingError

log = logging.getLogger(__name__)

EVALUATE_FIX = "run the evaluate stage first (`python -m flows.evaluate`, or `dvc repro evaluate`)"

Outcome = Literal["promoted", "rejected", "unchanged", "forced"]


class PromotionRefused(GptlabError, ValueError):
    """The two versions cannot be compared (never evaluated, or evaluated on different val splits)."""


@dataclass(frozen=True)
class Evaluated:
    """What the gate reads from a model version's tags."""

    version: str
    val_ppl: float | None
    val_sha256: str | None

    @classmethod
    def from_tags(cls, version: str, tags: dict[str, str]) -> Evaluated:
        ppl = tags.get("val_ppl")
        return cls(str(version), float(ppl) if ppl not in (None, "") else None, tags.get("val_sha256") or None)

    @property
    def evaluated(self) -> bool:
        return self.val_ppl is not None and self.val_sha256 is not None


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str

    @property
    def moves_alias(self) -> bool:
        return self.outcome in ("promoted", "forced")


def _compare(candidate: Evaluated, champion: Evaluated, margin: float, alias: str) -> tuple[bool, str]:
    """Can the candidate replace the champion on merit? (Both evaluated on the same split.)"""
    assert candidate.val_ppl is not None and champion.val_ppl is not None
    threshold = champion.val_ppl * (1.0 - margin)
    change = candidate.val_ppl / champion.val_ppl - 1.0
    verdict = "beats" if candidate.val_ppl < threshold else "does not beat"
    reason = (
        f"val ppl {candidate.val_ppl:.6g} (version {candidate.version}) vs {champion.val_ppl:.6g} ({alias} version "
        f"{champion.version}) on the same val split (sha256 {str(candidate.val_sha256)[:12]}…): {change:+.2%}, "
        f"{verdict} the {margin:.2%} margin (needs val ppl < {threshold:.6g})"
    )
    return candidate.val_ppl < threshold, reason


def decide(candidate: Evaluated, champion: Evaluated | None, *, margin: float, force: bool = False,
           alias: str = "champion") -> Decision:
    """The gate. Raises :class:`PromotionRefused` when the versions cannot be compared and ``force`` is off."""
    if champion is not None and champion.version == candidate.version:
        return Decision("unchanged", f"version {candidate.version} is already {alias}")
    if not candidate.evaluated:
        problem = (f"version {candidate.version} has no val_ppl / val_sha256 tags: it was never evaluated, "
                   f"so the gate cannot judge it")
        if not force:
            raise PromotionRefused(f"{problem}. Fix: {EVALUATE_FIX}, or pass --force")
        return Decision("forced", f"forced: {problem}")
    if champion is None:
        return Decision("promoted", f"no current {alias}; val ppl {candidate.val_ppl:.6g}")
    if not champion.evaluated:
        problem = f"{alias} version {champion.version} has no val_ppl / val_sha256 tags to compare against"
        if not force:
            raise PromotionRefused(f"{problem}. Fix: evaluate it, or pass --force to replace it anyway")
        return Decision("forced", f"forced: {problem}")
    if candidate.val_sha256 != champion.val_sha256:
        problem = (
            f"version {candidate.version} was evaluated on val split sha256 {candidate.val_sha256[:12]}… but "
            f"{alias} version {champion.version} on {str(champion.val_sha256)[:12]}…: perplexities on different "
            "val data are not comparable"
        )
        if not force:
            raise PromotionRefused(
                f"{problem}. Fix: `gptlab rescore --alias {alias}` scores the {alias} on the current val split "
                "(the pipeline flow does this itself), or pass --force to promote anyway"
            )
        return Decision("forced", f"forced: {problem}")
    better, reason = _compare(candidate, champion, margin, alias)
    if better:
        return Decision("promoted", reason)
    return Decision("forced", f"forced: {reason}") if force else Decision("rejected", reason)


# ------------------------------------------------------------------------------------------ the registry


@dataclass(frozen=True)
class Promotion:
    """What ``gptlab promote`` decided; also recorded as tags ``promotion.<alias>.*`` on the candidate."""

    model: str
    alias: str
    version: str
    previous: str | None
    outcome: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "alias": self.alias, "version": self.version, "previous": self.previous,
                "outcome": self.outcome, "reason": self.reason, "uri": f"models:/{self.model}@{self.alias}"}


def _evaluated(store: Store, name: str, *, alias: str | None = None, version: str | None = None) -> Evaluated | None:
    found = registry.version_tags(store, name, alias=alias, version=version)
    return Evaluated.from_tags(*found) if found is not None else None


def promote(store: Store, name: str, *, alias: str = CHAMPION, version: str | None = None,
            source_alias: str = CANDIDATE, margin: float = 0.0, force: bool = False) -> Promotion:
    """The promotion gate: point ``alias`` at ``version`` (default: the one ``source_alias`` names) only if
    its val perplexity beats the current holder's on the same val split by ``margin`` (or ``force``).

    The decision and its reason are recorded as version tags either way. Raises :class:`TrackingError`
    when the versions cannot be compared (never evaluated, different val data) and ``force`` is off.
    """
    where = f"version {version}" if version else f"@{source_alias}"
    candidate = _evaluated(store, name, alias=None if version else source_alias, version=version)
    if candidate is None:
        client = store.client()
        raise TrackingError(f"cannot promote {name} {where}: it does not exist. Versions in {store.uri}: "
                            f"{registry.versions_summary(client, name)}")
    champion = _evaluated(store, name, alias=alias)
    holder = champion.version if champion else None
    record = {"compared_with": holder or "none", "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tag = f"promotion.{alias}"
    try:
        decision = decide(candidate, champion, margin=margin, force=force, alias=alias)
    except PromotionRefused as e:
        registry.set_version_tags(store, name, candidate.version,
                                  {f"{tag}.{k}": v for k, v in {"outcome": "refused", "reason": str(e), **record}.items()})
        raise TrackingError(f"{name} version {candidate.version} not promoted to {alias}: {e}") from e
    if decision.moves_alias:
        registry.set_alias(store, name, alias, candidate.version)
    if decision.outcome != "unchanged":
        registry.set_version_tags(store, name, candidate.version, {
            f"{tag}.{k}": v for k, v in {"outcome": decision.outcome, "reason": decision.reason, **record}.items()})
    log.debug("promote %s version %s → @%s: %s (%s)", name, candidate.version, alias, decision.outcome, decision.reason)
    return Promotion(name, alias, candidate.version, holder, decision.outcome, decision.reason)


VAL_TAGS = ("val_ppl", "val_loss", "val_sha256", "context")


def rescore(cfg: Config, paths: Paths, *, alias: str | None = None, version: str | None = None) -> dict[str, Any]:
    """Score a registered version (by ``alias`` or ``version``) on ``paths.tokens``' val split; update its tags.

    Perplexities compare only on the same val tokens: when new data arrives, the champion is re-scored on the
    new split (its ``val_*`` tags then describe it; the old values move to ``previous.val_*``).
    """
    store = Store.at(paths.root)
    name = cfg.tracking.registered_model
    found = registry.version_tags(store, name, alias=alias, version=version)
    if found is None:
        raise TrackingError(f"{name} has no alias {alias!r}: nothing to re-score (`gptlab models` lists versions)")
    version, old = found
    device, dtype = eval_device(cfg.eval)
    with tempfile.TemporaryDirectory(prefix="gptlab-rescore-") as tmp:
        checkpoint = registry.download_checkpoint(store, f"models:/{name}/{version}", Path(tmp))
        model, _ = load_model(checkpoint, device=device)
    result = score_val(model, TokenSet.open(paths.tokens, verify=True), batch_size=cfg.eval.batch_size,
                       device=device, dtype=dtype, stride=cfg.eval.stride)
    tags = val_tags(result)
    if old.get("val_sha256") and old.get("val_sha256") != result["val_sha256"]:
        tags.update({f"previous.{k}": old[k] for k in VAL_TAGS if k in old})
    registry.set_version_tags(store, name, version, tags)
    log.info("rescore: %s version %s: val ppl %s on val split %s…", name, version, tags["val_ppl"],
             result["val_sha256"][:12])
    return {"model": name, "version": version, **tags}


def gate(cfg: Config, paths: Paths, *, force: bool = False) -> dict[str, Any]:
    """The end of the pipeline: ``candidate`` → ``champion`` if it wins on the same val split (re-scoring
    the champion first when the val data changed since it was scored). Returns the recorded decision."""
    store = Store.at(paths.root)
    name = cfg.tracking.registered_model
    candidate = registry.version_tags(store, name, alias=CANDIDATE)
    champion = registry.version_tags(store, name, alias=CHAMPION)
    rescored = None
    if candidate and champion and candidate[0] != champion[0]:
        new_split, old_split = candidate[1].get("val_sha256"), champion[1].get("val_sha256")
        if new_split and new_split != old_split:
            rescored = rescore(cfg, paths, alias=CHAMPION)
    promotion = promote(store, name, margin=cfg.tracking.promote_margin, force=force)
    return {**promotion.to_dict(), "rescored_champion": rescored}
