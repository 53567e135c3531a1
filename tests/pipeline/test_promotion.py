"""The promotion gate's rules, on hand-made evaluations (no MLflow): margins, evidence, seeds, val splits, missing
scores, force."""

from __future__ import annotations

import pytest

from gptlab.core.stats import Difference
from gptlab.pipeline.promotion import Evaluated, Evidence, PromotionRefused, Rule, decide

SPLIT = "a" * 64


def _v(version: str, ppl: float | None, split: str | None = SPLIT) -> Evaluated:
    return Evaluated(version, ppl, split)


def test_the_candidate_must_clear_the_margin_strictly():
    champion = _v("1", 100.0)
    # 1% margin on 100: the candidate needs val ppl < 99.
    assert decide(_v("2", 98.99), champion, margin=0.01).outcome == "promoted"
    assert decide(_v("2", 99.0), champion, margin=0.01).outcome == "rejected"
    assert decide(_v("2", 99.5), champion, margin=0.0).outcome == "promoted"
    assert decide(_v("2", 100.0), champion, margin=0.0).outcome == "rejected"  # a tie never replaces the champion
    reason = decide(_v("2", 99.5), champion, margin=0.01).reason
    assert "-0.50%" in reason and "1.00% margin" in reason and "needs val ppl < 99" in reason


def test_what_cannot_be_compared_is_refused_unless_forced():
    champion = _v("1", 100.0)
    with pytest.raises(PromotionRefused, match="never evaluated"):
        decide(_v("2", None, None), champion, margin=0.01)
    with pytest.raises(PromotionRefused, match="not comparable.*gptlab rescore --alias champion"):
        decide(_v("2", 50.0, "b" * 64), champion, margin=0.01)
    with pytest.raises(PromotionRefused, match="champion version 1 has no val_ppl"):
        decide(_v("2", 50.0), _v("1", None, None), margin=0.01)
    forced = decide(_v("2", 50.0, "b" * 64), champion, margin=0.01, force=True)
    assert forced.outcome == "forced" and "not comparable" in forced.reason
    assert decide(_v("2", 150.0), champion, margin=0.01, force=True).outcome == "forced"


def test_first_champion_and_no_op():
    assert decide(_v("1", 100.0), None, margin=0.5).outcome == "promoted"
    with pytest.raises(PromotionRefused):
        decide(_v("1", None, None), None, margin=0.5)  # even the first champion must have been evaluated
    assert decide(_v("1", 100.0), _v("1", 100.0), margin=0.01).outcome == "unchanged"
    assert Evaluated.from_tags("3", {"val_ppl": "12.5", "val_sha256": SPLIT}) == _v("3", 12.5)


def _evidence(delta: float, p: float, *, seeds: int = 1) -> Evidence:
    return Evidence(Difference(delta, delta - 0.01, delta + 0.01, p, 2 * p, 40, (seeds, 1), 10_000), seeds=seeds)


RULE = Rule(margin=0.01, alpha=0.01, seeds=1)


def test_the_gate_needs_the_margin_and_the_evidence():
    champion = _v("1", 100.0)
    promoted = decide(_v("2", 95.0), champion, margin=0.01, evidence=_evidence(-0.05, 0.0002), rule=RULE)
    assert promoted.outcome == "promoted"
    assert "p = 0.0002" in promoted.reason and "40 val documents" in promoted.reason and "p ≤ 0.01" in promoted.reason
    # 5 % better by the point estimate, but p = 0.2: it could be noise.
    noisy = decide(_v("2", 95.0), champion, margin=0.01, evidence=_evidence(-0.05, 0.2), rule=RULE)
    assert noisy.outcome == "rejected" and "p = 0.2" in noisy.reason and "could be noise" in noisy.reason
    # Significant, but short of the margin.
    small = decide(_v("2", 99.5), champion, margin=0.01, evidence=_evidence(-0.005, 0.0001), rule=RULE)
    assert small.outcome == "rejected" and "does not beat the 1.00% margin" in small.reason
    # No per-window losses to compare: rejected with the fix, or forced.
    missing = Evidence(None, missing="version 1 has no per-window val losses … Fix: `gptlab rescore --version 1`")
    assert "gptlab rescore --version 1" in decide(_v("2", 50.0), champion, margin=0.01, evidence=missing,
                                                  rule=RULE).reason
    assert decide(_v("2", 50.0), champion, margin=0.01, evidence=missing, rule=RULE, force=True).outcome == "forced"
    # alpha = 1 turns the paired test off: the margin alone decides.
    assert decide(_v("2", 95.0), champion, margin=0.01, rule=Rule(margin=0.01)).outcome == "promoted"


def test_the_gate_can_require_several_seed_runs():
    champion = _v("1", 100.0)
    rule = Rule(margin=0.01, alpha=0.01, seeds=3)
    short = decide(_v("2", 90.0), champion, margin=0.01, evidence=_evidence(-0.1, 0.0001, seeds=2), rule=rule)
    assert short.outcome == "rejected" and "needs 3 evaluated seed runs" in short.reason and "has 2" in short.reason
    assert "dvc exp run --queue -S train.seed=" in short.reason
    enough = decide(_v("2", 90.0), champion, margin=0.01, evidence=_evidence(-0.1, 0.0001, seeds=3), rule=rule)
    assert enough.outcome == "promoted"
    first = decide(_v("2", 90.0), None, margin=0.01, evidence=Evidence(None, seeds=1, missing="no champion"), rule=rule)
    assert first.outcome == "rejected" and "needs 3 evaluated seed runs" in first.reason
