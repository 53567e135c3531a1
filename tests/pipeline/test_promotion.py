"""The promotion gate's rules, on hand-made evaluations (no MLflow): margins, val splits, missing scores, force."""

from __future__ import annotations

import pytest

from gptlab.pipeline.promotion import Evaluated, PromotionRefused, decide

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
