"""The promotion gate: does a candidate model version replace the champion?

A candidate replaces the champion only when both were evaluated on the same val split (the sha256 of the
val token files, which the evaluate stage tags on every version), the candidate's val perplexity is
lower by at least ``margin`` (a fraction of the champion's), **and** the evidence says the improvement is not
noise: a paired bootstrap over the val documents (both versions' per-window losses, kept in their runs by the
evaluate stage) rejects "no improvement" at ``alpha`` (p ≤ alpha), over at least ``seeds`` seed runs of the
candidate's configuration. ``force`` overrides the gate; the reason it would have given is still recorded,
with the difference, its interval, p and the rule. :func:`decide` is the rule, pure; :func:`promote` applies it
to the registry, and :func:`gate` (the pipeline flow's last step) first re-scores the champion on the current
val split when the data changed since it was scored (:func:`rescore`).
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gptlab.core.checkpoint import load_model
from gptlab.core.evaluate import WindowScores
from gptlab.core.stats import Difference
from gptlab.data.loader import TokenSet
from gptlab.errors import DataError, GptlabError
from gptlab.pipeline.comparison import eval_device, score_val_windows, val_tags
from gptlab.pipeline.intervals import WINDOWS_FILE, compare
from gptlab.pipeline.paths import Paths
from gptlab.settings import Config
from gptlab.tracking import evidence, registry
from gptlab.tracking.registry import CANDIDATE, CHAMPION
from gptlab.tracking.runs import recording
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
class Evidence:
    """The paired comparison the gate weighs: candidate − champion val loss over the same val documents."""

    difference: Difference | None
    """None when it could not be computed (``missing`` says why)."""
    seeds: int = 1
    """Evaluated seed runs of the candidate's configuration behind ``difference``."""
    missing: str = ""

    def describe(self) -> str:
        d = self.difference
        if d is None:
            return f"no paired evidence: {self.missing}"
        interval = "no interval (< 2 documents)" if d.lo is None else f"[{d.lo:+.4g}, {d.hi:+.4g}]"
        p = "n/a" if d.p_improvement is None else f"{d.p_improvement:.3g}"
        return (f"val loss difference {d.delta:+.4g} nats/token, 95% interval {interval}, p = {p} "
                f"(one-sided paired bootstrap over {d.documents} val documents, {d.samples} resamples, "
                f"{d.runs[0]} candidate / {d.runs[1]} champion seed run(s))")

    def tags(self) -> dict[str, str]:
        d = self.difference
        if d is None:
            return {"evidence": self.missing}
        return {"loss_delta": f"{d.delta:.6g}", "loss_delta_lo": f"{d.lo:.6g}" if d.lo is not None else "",
                "loss_delta_hi": f"{d.hi:.6g}" if d.hi is not None else "",
                "p": f"{d.p_improvement:.6g}" if d.p_improvement is not None else "", "documents": str(d.documents),
                "seeds": str(d.runs[0]), "champion_seeds": str(d.runs[1])}


@dataclass(frozen=True)
class Rule:
    """What the gate requires (``tracking.promote_margin``, ``promote_alpha``, ``promote_seeds``)."""

    margin: float = 0.0
    alpha: float = 1.0
    seeds: int = 1

    def describe(self) -> str:
        return (f"promote iff, on the same val split, val ppl < champion's × (1 − {self.margin:g}) and the paired "
                f"test's p ≤ {self.alpha:g} over ≥ {self.seeds} seed run(s) of the candidate's configuration")


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str
    evidence: Evidence | None = None

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


def _weigh(evidence: Evidence | None, rule: Rule, alias: str) -> tuple[bool, str]:
    """Does the evidence reject "no improvement" at ``rule.alpha`` with enough seed runs?"""
    if rule.alpha >= 1.0 and rule.seeds <= 1:
        return True, "paired test off (tracking.promote_alpha = 1)"
    if evidence is None or evidence.difference is None:
        why = evidence.missing if evidence is not None else "not computed"
        return False, f"no paired evidence against the {alias}: {why}"
    d = evidence.difference
    text = evidence.describe()
    if evidence.seeds < rule.seeds:
        return False, (f"{text}; needs {rule.seeds} evaluated seed runs of the candidate's configuration, has "
                       f"{evidence.seeds}: queue more (`dvc exp run --queue -S train.seed=N`, `dvc queue start`)")
    if d.p_improvement is None or d.p_improvement > rule.alpha:
        return False, f"{text}: not significant at alpha {rule.alpha:g} (could be noise)"
    return True, f"{text} ≤ alpha {rule.alpha:g}"


def decide(candidate: Evaluated, champion: Evaluated | None, *, margin: float, force: bool = False,
           alias: str = "champion", evidence: Evidence | None = None, rule: Rule | None = None) -> Decision:
    """The gate. Raises :class:`PromotionRefused` when the versions cannot be compared and ``force`` is off.

    ``rule`` (default: ``margin`` alone, test off) sets alpha and seeds; ``evidence`` is the paired comparison.
    """
    rule = rule if rule is not None else Rule(margin=margin)
    decision = _decide(candidate, champion, margin=rule.margin, force=force, alias=alias, evidence=evidence,
                       rule=rule)
    return Decision(decision.outcome, decision.reason, evidence)


def _decide(candidate: Evaluated, champion: Evaluated | None, *, margin: float, force: bool, alias: str,
            evidence: Evidence | None, rule: Rule) -> Decision:
    if champion is not None and champion.version == candidate.version:
        return Decision("unchanged", f"version {candidate.version} is already {alias}")
    if not candidate.evaluated:
        problem = (f"version {candidate.version} has no val_ppl / val_sha256 tags: it was never evaluated, "
                   f"so the gate cannot judge it")
        if not force:
            raise PromotionRefused(f"{problem}. Fix: {EVALUATE_FIX}, or pass --force")
        return Decision("forced", f"forced: {problem}")
    if champion is None:
        if evidence is not None and evidence.seeds < rule.seeds:
            problem = (f"no current {alias}, but it needs {rule.seeds} evaluated seed runs of the candidate's "
                       f"configuration and has {evidence.seeds}: queue more (`dvc exp run --queue -S train.seed=N`)")
            return Decision("forced", f"forced: {problem}") if force else Decision("rejected", problem)
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
    credible, weighed = _weigh(evidence, rule, alias)
    reason = f"{reason}; {weighed}. Rule: {rule.describe()}"
    if better and credible:
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


def gather_evidence(store: Store, name: str, candidate: str, champion: str | None, *, val_sha256: str | None,
                    seeds: int = 1) -> Evidence:
    """Download the per-window val losses of the candidate (and, with ``seeds`` > 1, of every evaluated seed run
    of its configuration) and of the champion on split ``val_sha256``, and compare them paired by document."""
    tags = registry.version_tags(store, name, version=candidate)
    config = (tags[1] if tags else {}).get(evidence.CONFIG_TAG)
    cand_versions = [candidate]
    if seeds > 1 and config and val_sha256:
        by_seed: dict[str, str] = {}
        for v, t in evidence.seed_versions(store, name, config, val_sha256):
            by_seed[t.get(evidence.SEED_TAG, v)] = v  # the newest version of each seed
        cand_versions = sorted(set(by_seed.values()) | {candidate}, key=int)
    if champion is None or val_sha256 is None:
        return Evidence(None, seeds=len(cand_versions), missing=f"no {CHAMPION} to compare with")
    with tempfile.TemporaryDirectory(prefix="gptlab-evidence-") as tmp:
        loaded: dict[str, WindowScores] = {}
        for v in [*cand_versions, champion]:
            path = evidence.download_windows(store, name, v, val_sha256, tmp)
            if path is None:
                if v in (candidate, champion):
                    return Evidence(None, seeds=len(cand_versions), missing=(
                        f"version {v} has no per-window val losses for val split {val_sha256[:12]}… in its run "
                        f"(evaluated before they were kept?). Fix: `gptlab rescore --version {v}`"))
                continue  # a seed sibling without them does not count
            loaded[v] = WindowScores.load(path)
    runs = [loaded[v] for v in cand_versions if v in loaded]
    try:
        difference = compare(runs, loaded[champion])
    except DataError as e:
        return Evidence(None, seeds=len(runs), missing=str(e))
    return Evidence(difference, seeds=len(runs))


def promote(store: Store, name: str, *, alias: str = CHAMPION, version: str | None = None,
            source_alias: str = CANDIDATE, margin: float = 0.0, force: bool = False, alpha: float = 1.0,
            seeds: int = 1) -> Promotion:
    """The promotion gate: point ``alias`` at ``version`` (default: the one ``source_alias`` names) only if
    its val perplexity beats the current holder's on the same val split by ``margin`` and the paired test over
    val documents rejects "no improvement" at ``alpha`` with ``seeds`` seed runs (or ``force``).

    The decision, its reason, the difference, its interval, p and the rule are recorded as version tags
    either way. Raises :class:`TrackingError` when the versions cannot be compared (never evaluated,
    different val data) and ``force`` is off.
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
    rule = Rule(margin=margin, alpha=alpha, seeds=seeds)
    found = None
    comparable = (candidate.evaluated and candidate.version != holder
                  and (champion is None or (champion.evaluated and champion.val_sha256 == candidate.val_sha256)))
    if comparable and (alpha < 1.0 or seeds > 1):
        found = gather_evidence(store, name, candidate.version, holder, val_sha256=candidate.val_sha256, seeds=seeds)
    record["rule"] = rule.describe()
    record.update(found.tags() if found is not None else {})
    try:
        decision = decide(candidate, champion, margin=margin, force=force, alias=alias, evidence=found, rule=rule)
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
    result, windows = score_val_windows(model, TokenSet.open(paths.tokens, verify=True),
                                        batch_size=cfg.eval.batch_size, device=device, dtype=dtype,
                                        stride=cfg.eval.stride)
    tags = val_tags(result)
    if old.get("val_sha256") and old.get("val_sha256") != result["val_sha256"]:
        tags.update({f"previous.{k}": old[k] for k in VAL_TAGS if k in old})
    run_id = evidence.run_of(store, name, version)
    if run_id is not None:  # the per-window losses on this split, where the gate looks for them
        with tempfile.TemporaryDirectory(prefix="gptlab-rescore-") as tmp, \
                recording(store, cfg, "rescore", attach=run_id) as tracker:
            windows.save(Path(tmp) / WINDOWS_FILE)
            tracker.log_artifact(Path(tmp) / WINDOWS_FILE,
                                 artifact_path=evidence.windows_artifact_path(result["val_sha256"]))
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
    promotion = promote(store, name, margin=cfg.tracking.promote_margin, force=force,
                        alpha=cfg.tracking.promote_alpha, seeds=cfg.tracking.promote_seeds)
    return {**promotion.to_dict(), "rescored_champion": rescored}
