"""The promotion gate: does a candidate model version replace the champion? Pure rules, no MLflow.

A candidate replaces the champion only when both were evaluated on the same val split (the sha256 of the
val token files, which the evaluate stage tags on every version) and the candidate's val perplexity is
lower by at least ``margin`` (a fraction of the champion's). ``force`` overrides the gate; the reason it
would have given is still recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

EVALUATE_FIX = "run the evaluate stage first (`python -m flows.evaluate`, or `dvc repro evaluate`)"

Outcome = Literal["promoted", "rejected", "unchanged", "forced"]


class PromotionRefused(ValueError):
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
