from __future__ import annotations

import pickle

import pytest
import torch

from gptlab.core.checkpoint import CheckpointError, load_model, load_training_state, save_checkpoint
from gptlab.core.model import GPT

from .test_model import SMALL


def _trained(steps: int = 3) -> tuple[GPT, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = GPT(SMALL)
    opt = model.configure_optimizer(lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), device_type="cpu")
    idx = torch.randint(0, 50257, (2, 16))
    for _ in range(steps):
        model(idx, idx).loss.backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def test_round_trip_restores_weights_logits_and_optimizer(tmp_path):
    model, opt = _trained()
    save_checkpoint(tmp_path / "c", model=model, optimizer=opt, state={"step": 3}, meta={"step": 3, "note": "x"})
    loaded, ckpt = load_model(tmp_path / "c")
    assert ckpt.step == 3 and ckpt.meta["note"] == "x" and ckpt.model_config == SMALL
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight  # tying survives the round trip
    idx = torch.randint(0, 50257, (1, 16))
    torch.testing.assert_close(loaded.eval()(idx).logits, model.eval()(idx).logits, rtol=0, atol=0)
    state = load_training_state(tmp_path / "c")
    fresh = loaded.configure_optimizer(lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), device_type="cpu")
    fresh.load_state_dict(state["optimizer"])
    assert state["state"] == {"step": 3}
    assert fresh.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_a_modified_weights_file_is_refused(tmp_path):
    model, _ = _trained(1)
    save_checkpoint(tmp_path / "c", model=model, meta={"step": 1})
    weights = tmp_path / "c" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0x01
    weights.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt or was replaced"):
        load_model(tmp_path / "c")


def test_missing_files_name_the_fix(tmp_path):
    (tmp_path / "c").mkdir()
    with pytest.raises(CheckpointError, match=r"meta.json does not exist.*re-run `gptlab train`"):
        load_model(tmp_path / "c")


class _Exploit:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_training_state_cannot_run_code(tmp_path, monkeypatch):
    model, opt = _trained(1)
    save_checkpoint(tmp_path / "c", model=model, optimizer=opt, meta={"step": 1})
    (tmp_path / "c" / "optimizer.pt").write_bytes(pickle.dumps({"optimizer": _Exploit()}, protocol=2))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(pickle.UnpicklingError):
        load_training_state(tmp_path / "c")
    assert not (tmp_path / "PWNED").exists()


def test_an_interrupted_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model, _ = _trained(1)
    save_checkpoint(tmp_path / "c", model=model, meta={"step": 1})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("gptlab.core.checkpoint.write_json", boom)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "c", model=model, meta={"step": 2})
    _, ckpt = load_model(tmp_path / "c")
    assert ckpt.step == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def _series(root, steps):
    from gptlab.core.checkpoint import step_path

    model, opt = _trained(1)
    for step in steps:
        save_checkpoint(step_path(root, step), model=model, optimizer=opt, state={"step": step}, meta={"step": step})


def test_latest_checkpoint_skips_damaged_ones_and_falls_back(tmp_path, caplog):
    from gptlab.core.checkpoint import latest_checkpoint, step_path

    _series(tmp_path, [10, 20, 30])
    assert latest_checkpoint(tmp_path).step == 30
    (step_path(tmp_path, 30) / "optimizer.pt").write_bytes(b"truncated")  # unreadable training state
    weights = step_path(tmp_path, 20) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])  # truncated weights: the sha256 no longer matches
    found = latest_checkpoint(tmp_path)
    assert found.step == 10 and found.state["state"] == {"step": 10}
    assert "skipping checkpoint" in caplog.text and "step-00000030" in caplog.text and "step-00000020" in caplog.text
    assert latest_checkpoint(tmp_path / "nothing-here") is None


def test_leftovers_of_interrupted_writes_are_removed_and_old_checkpoints_pruned(tmp_path):
    from gptlab.core.checkpoint import checkpoint_steps, prune, remove_leftovers

    _series(tmp_path, [5, 10, 15])
    for name in (".step-00000020.k3j4.tmp", ".step-00000015.old"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"half")
    assert sorted(p.name for p in remove_leftovers(tmp_path)) == [".step-00000015.old", ".step-00000020.k3j4.tmp"]
    prune(tmp_path, keep=2)
    assert [step for step, _ in checkpoint_steps(tmp_path)] == [15, 10]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000010", "step-00000015"]


def test_the_same_weights_always_hash_the_same(tmp_path):
    model, _ = _trained(1)
    a = save_checkpoint(tmp_path / "a", model=model, meta={"step": 1}).meta["weights_sha256"]
    b = save_checkpoint(tmp_path / "b", model=model, meta={"step": 1}).meta["weights_sha256"]
    assert a == b


def test_rng_and_loader_state_survive_the_safe_loader(tmp_path):
    """Everything a resume restores loads with weights_only=True (no pickled code paths)."""
    import random

    import numpy as np

    from gptlab.core.train import rng_state, set_rng_state

    model, opt = _trained(1)
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    saved = rng_state(torch.device("cpu"))
    save_checkpoint(tmp_path / "c", model=model, optimizer=opt, state={"step": 1, "ranks": [{"rng": saved}]},
                    meta={"step": 1})
    expected = (torch.rand(3), random.random(), np.random.rand(3))
    set_rng_state(load_training_state(tmp_path / "c")["state"]["ranks"][0]["rng"], torch.device("cpu"))
    again = (torch.rand(3), random.random(), np.random.rand(3))
    assert torch.equal(expected[0], again[0]) and expected[1] == again[1] and np.array_equal(expected[2], again[2])
