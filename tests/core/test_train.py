from __future__ import annotations

import math

import pytest
import torch

from gptlab.core.checkpoint import load_model
from gptlab.core.train import TrainingError, learning_rate, train
from gptlab.data.loader import TokenSet
from gptlab.settings import replace


def test_schedule_warms_up_then_decays_to_min_lr(tiny_cfg):
    for schedule in ("cosine", "linear"):
        t = replace(tiny_cfg, train={"lr_schedule": schedule, "warmup_iters": 10, "max_iters": 110}).train
        lrs = [learning_rate(s, t) for s in range(120)]
        assert lrs[0] == pytest.approx(t.lr / 11)
        assert all(a < b for a, b in zip(lrs[:10], lrs[1:11], strict=True))  # warmup increases
        assert lrs[10] == pytest.approx(t.lr)
        assert all(a >= b for a, b in zip(lrs[10:110], lrs[11:111], strict=True))  # then decays
        assert lrs[110] == pytest.approx(t.min_lr) and lrs[119] == t.min_lr
        mid = t.min_lr + 0.5 * (t.lr - t.min_lr)
        assert lrs[60] == pytest.approx(mid)  # both schedules pass the midpoint halfway through decay
    cosine = replace(tiny_cfg, train={"lr_schedule": "cosine", "warmup_iters": 10, "max_iters": 110}).train
    linear = replace(tiny_cfg, train={"lr_schedule": "linear", "warmup_iters": 10, "max_iters": 110}).train
    assert learning_rate(35, cosine) > learning_rate(35, linear)  # cosine stays high longer


def test_training_learns_and_writes_a_checkpoint(tiny_cfg, tokens_dir, tmp_path):
    result = train(tiny_cfg, tokens=TokenSet.open(tokens_dir), out_dir=tmp_path / "ckpt")
    losses = [h["val/loss"] for h in result.history if "val/loss" in h]
    # From ln(50304) ≈ 10.8 at init (uniform) to far below within the first eval interval, and still falling.
    assert len(losses) == 4 and losses[0] < 8.0 and losses[-1] < losses[0]
    assert result.tokens_seen == 80 * 4 * 2 * 32
    model, ckpt = load_model(tmp_path / "ckpt")
    assert ckpt.step == 80 and math.isclose(ckpt.meta["val_loss"], losses[-1])
    assert (tmp_path / "ckpt" / "optimizer.pt").is_file()


def test_identical_runs_give_identical_weights(tiny_cfg, tokens_dir, tmp_path):
    cfg = replace(tiny_cfg, train={"max_iters": 6, "eval_interval": 3})
    a = train(cfg, tokens=TokenSet.open(tokens_dir), out_dir=tmp_path / "a").checkpoint.meta["weights_sha256"]
    b = train(cfg, tokens=TokenSet.open(tokens_dir), out_dir=tmp_path / "b").checkpoint.meta["weights_sha256"]
    assert a == b


def test_gradient_accumulation_matches_one_big_batch(tiny_cfg, tokens_dir, tmp_path):
    """4 sequences × 2 micro-batches take the same step as 8 sequences at once (fp32, same windows)."""
    from gptlab.core.model import GPT
    from gptlab.data.loader import RandomWindows, TokenSet

    tokens = TokenSet.open(tokens_dir)
    windows = RandomWindows(tokens.paths("train"), block_size=32, batch_size=8, seed=1)
    x, y = (torch.from_numpy(a.astype("int64")) for a in windows.next_numpy())
    grads = []
    for chunks in (1, 2):
        torch.manual_seed(0)
        model = GPT(tiny_cfg.model)
        for xc, yc in zip(x.chunk(chunks), y.chunk(chunks), strict=True):
            (model(xc, yc).loss / chunks).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def test_block_size_larger_than_the_data_is_refused_before_training(tiny_cfg, tokens_dir, tmp_path):
    cfg = replace(tiny_cfg, model={"block_size": 100_000})
    with pytest.raises(ValueError, match="the val split has .* tokens, not more than model.block_size=100000"):
        train(cfg, tokens=TokenSet.open(tokens_dir), out_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()


def _first_step_loss(model, cfg, tokens_dir) -> float:
    """The loss the loop reports at step 1: the mean over the first step's grad_accum micro-batches."""
    from gptlab.data.loader import RandomWindows, TokenSet

    t = cfg.train
    windows = RandomWindows(TokenSet.open(tokens_dir).paths("train"), block_size=cfg.model.block_size,
                            batch_size=t.batch_size, seed=t.seed)
    losses = []
    with torch.no_grad():
        for _ in range(t.grad_accum):
            x, y = (torch.from_numpy(a.astype("int64")) for a in windows.next_numpy())
            logits = model.eval()(x).logits
            losses.append(torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1)).item())
    return sum(losses) / len(losses)


class _CrashAt:
    """A tracker that fails at one step: the run dies mid-training, as after a power cut, minus the process."""

    def __init__(self, step: int):
        self.step, self.records = step, []

    def log_metrics(self, metrics, step):
        if step == self.step:
            raise RuntimeError("crash")
        self.records.append((step, dict(metrics)))


def test_a_crashed_run_resumes_from_its_last_checkpoint_onto_the_same_trajectory(tiny_cfg, tokens_dir, tmp_path):
    from gptlab.core.train import find_resume

    cfg = replace(tiny_cfg, train={"max_iters": 12, "eval_interval": 4, "log_interval": 1, "checkpoint_interval": 4})
    straight = train(cfg, tokens=TokenSet.open(tokens_dir), out_dir=tmp_path / "a", checkpoint_dir=tmp_path / "ca")
    with pytest.raises(RuntimeError, match="crash"):
        train(cfg, tokens=TokenSet.open(tokens_dir), out_dir=tmp_path / "b", checkpoint_dir=tmp_path / "cb", tracker=_CrashAt(11))
    resume = find_resume(tmp_path / "cb", "auto")
    assert resume is not None and resume.step == 8
    replay = _CrashAt(-1)
    resumed = train(cfg, tokens=TokenSet.open(tokens_dir), out_dir=tmp_path / "b", checkpoint_dir=tmp_path / "cb",
                    tracker=replay, resume=resume)
    assert resumed.resumed_from == 8
    assert [h["train/loss"] for h in resumed.history] == [h["train/loss"] for h in straight.history]
    assert [s for s, _ in replay.records] == list(range(1, 13))  # history re-sent, then steps 9-12
    assert resumed.checkpoint.meta["weights_sha256"] == straight.checkpoint.meta["weights_sha256"]
    assert resumed.best_val_loss == straight.best_val_loss
    # A complete run leaves models/final only; a run that never finished leaves its checkpoints to `never`.
    assert not (tmp_path / "cb").exists()
    with pytest.raises(RuntimeError, match="crash"):
        train(cfg, tokens=TokenSet.open(tokens_dir), out_dir=tmp_path / "c", checkpoint_dir=tmp_path / "cc", tracker=_CrashAt(6))
    assert [p.name for p in (tmp_path / "cc").iterdir()] == ["step-00000004"]
    assert find_resume(tmp_path / "cc", "never") is None and not (tmp_path / "cc").exists()


def test_run_key_names_the_trajectory_not_the_bookkeeping(tiny_cfg, tokens_dir):
    from gptlab.core.train import run_key
    from gptlab.data.loader import TokenSet

    tokens = TokenSet.open(tokens_dir)
    key = run_key(tiny_cfg, tokens, 1)
    for change in ({"log_interval": 3}, {"checkpoint_interval": 7}, {"eval_interval": 9}, {"compile": True},
                   {"device": "auto"}, {"resume": "never"}):
        assert run_key(replace(tiny_cfg, train=change), tokens, 1) == key, change
    for change in ({"lr": 2e-2}, {"max_iters": 81}, {"seed": 1}, {"init": "hf:gpt2"}, {"dtype": "bfloat16"}):
        assert run_key(replace(tiny_cfg, train=change), tokens, 1) != key, change
    assert run_key(replace(tiny_cfg, model={"n_layer": 2}), tokens, 1) != key
    assert run_key(tiny_cfg, tokens, 2) != key


def test_init_from_a_checkpoint_starts_from_its_weights(tiny_cfg, tokens_dir, tmp_path):
    base = replace(tiny_cfg, train={"max_iters": 10, "eval_interval": 10})
    train(base, tokens=TokenSet.open(tokens_dir), out_dir=tmp_path / "base")
    source, _ = load_model(tmp_path / "base")
    cfg = replace(tiny_cfg, train={"max_iters": 2, "eval_interval": 2, "log_interval": 1,
                                   "init": f"checkpoint:{tmp_path / 'base'}", "seed": 7})
    result = train(cfg, tokens=TokenSet.open(tokens_dir), out_dir=tmp_path / "tuned", init=source)
    assert result.history[0]["train/loss"] == pytest.approx(_first_step_loss(source, cfg, tokens_dir), abs=1e-5)


def test_init_from_hugging_face_gpt2_weights_with_a_shorter_context(tiny_cfg, tokens_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=64, vocab_size=50257)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    hf.save_pretrained(tmp_path / "hf")
    cfg = replace(tiny_cfg, model={"vocab_size": 50257, "bias": True},
                  train={"max_iters": 1, "eval_interval": 1, "init": f"hf:{tmp_path / 'hf'}"})
    from gptlab.hf.weights import load_hf_gpt2

    result = train(cfg, tokens=TokenSet.open(tokens_dir), out_dir=tmp_path / "tuned", init=load_hf_gpt2(str(tmp_path / "hf")))

    class HFLogits(torch.nn.Module):  # transformers' own forward pass, the reference
        def forward(self, idx):
            return type("Out", (), {"logits": hf(idx).logits})()

    assert cfg.model.block_size == 32 < 64  # position embeddings cropped
    assert result.history[0]["train/loss"] == pytest.approx(_first_step_loss(HFLogits(), cfg, tokens_dir), abs=1e-4)


def test_init_with_another_architecture_names_the_settings_to_change(tiny_cfg, tokens_dir, tmp_path):
    train(replace(tiny_cfg, train={"max_iters": 1, "eval_interval": 1}), tokens=TokenSet.open(tokens_dir), out_dir=tmp_path / "a")
    cfg = replace(tiny_cfg, model={"n_layer": 2, "block_size": 16},
                  train={"max_iters": 1, "init": f"checkpoint:{tmp_path / 'a'}"})
    with pytest.raises(TrainingError, match=r"different architecture .* set -S model.n_layer=1 \(a"):
        train(cfg, tokens=TokenSet.open(tokens_dir), out_dir=tmp_path / "b", init=load_model(tmp_path / "a")[0])


def test_compile_auto_compiles_runs_that_repay_it_and_not_the_demo(project):
    from gptlab.core.train import run_flops, use_compile
    from gptlab.pipeline.config import load_config

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    seed = load_config(project / "params.yaml", ["profile=seed"])
    demo = load_config(project / "params.yaml", ["profile=demo"])
    assert seed.train.compile == "auto" and demo.train.compile == "auto"  # the default, in every profile
    for device, peak in ((cpu, None), (cuda, 989e12)):
        assert use_compile("auto", device, run_flops=run_flops(seed), peak=peak)  # 655M tokens: compile
        assert not use_compile("auto", device, run_flops=run_flops(demo), peak=peak)  # ~10 s of FLOPs: eager
    assert not use_compile("auto", cpu)  # nothing known about the run: eager
    assert use_compile(True, cpu) and not use_compile(False, cuda, run_flops=run_flops(seed))
    # Resuming near the end leaves too little to repay a compile.
    assert not use_compile("auto", cpu, run_flops=run_flops(seed, steps=10))


def test_a_compiled_run_takes_the_eager_steps_and_saves_the_plain_module(tiny_cfg, tokens_dir, tmp_path):
    """train.compile=true compiles forward + loss as one module (aot_eager here: the same graph capture without
    inductor's C++ build); the loss curve is the eager one and the checkpoint holds GPT's own keys."""
    import safetensors.torch

    from gptlab.core.model import GPT

    cfg = replace(tiny_cfg, train={"max_iters": 6, "eval_interval": 6, "log_interval": 1})
    eager = train(cfg, tokens=TokenSet.open(tokens_dir), out_dir=tmp_path / "eager")
    compiled = train(replace(cfg, train={"compile": True}), tokens=TokenSet.open(tokens_dir),
                     out_dir=tmp_path / "compiled", compile_backend="aot_eager")
    assert compiled.compiled and not eager.compiled
    losses = [[h["train/loss"] for h in r.history if "train/loss" in h] for r in (eager, compiled)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    keys = set(safetensors.torch.load_file(tmp_path / "compiled" / "model.safetensors"))
    assert keys <= set(GPT(cfg.model).state_dict())  # no `_orig_mod.` or `model.` prefixes of the wrappers
    assert compiled.checkpoint.meta["weights_sha256"] == eager.checkpoint.meta["weights_sha256"]
    load_model(tmp_path / "compiled")
