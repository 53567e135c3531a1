"""Per-item scores files: what the stages write beside their metrics, read back exactly and byte-stable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gptlab.pipeline.examples import read_examples, write_examples


def _tree() -> dict:
    return {"lambada": {"acc": np.array([1, 0, 1], dtype=np.uint8), "logprob": np.array([-1.5, -2.25, -0.5])},
            "hellaswag": {"logprobs": np.arange(8, dtype=np.float64).reshape(2, 4)}}


def test_scores_read_back_with_their_shapes_and_types(tmp_path: Path):
    write_examples(tmp_path / "e.npz", {"gpt2": {"1024": _tree()}})
    back = read_examples(tmp_path / "e.npz")["gpt2"]["1024"]
    assert back["lambada"]["acc"].dtype == np.uint8 and back["lambada"]["acc"].tolist() == [1, 0, 1]
    assert back["hellaswag"]["logprobs"].shape == (2, 4)
    with np.load(tmp_path / "e.npz", allow_pickle=False) as plain:  # a plain .npz: numpy alone reads it
        assert sorted(plain.files) == ["gpt2/1024/hellaswag/logprobs", "gpt2/1024/lambada/acc",
                                       "gpt2/1024/lambada/logprob"]


def test_the_same_scores_give_the_same_bytes(tmp_path: Path):
    # DVC hashes outs: a re-run that scores the same must not look like a change.
    write_examples(tmp_path / "a.npz", _tree())
    write_examples(tmp_path / "b.npz", dict(reversed(list(_tree().items()))))
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_a_file_that_is_not_scores_says_which_stage_to_rerun(tmp_path: Path):
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="bad.npz is not a per-item scores file .*re-run the stage"):
        read_examples(tmp_path / "bad.npz")
