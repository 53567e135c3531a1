from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gptlab.errors import ConfigError
from gptlab.pipeline.config import load_config, parse_override

from ..conftest import REPO


def test_committed_params_are_the_seed_experiment(project: Path):
    cfg = load_config(project / "params.yaml")
    m, t = cfg.model, cfg.train
    assert cfg.profile == "seed"
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, m.vocab_size) == (6, 6, 384, 512, 50304)
    assert m.dropout == 0.0 and m.bias is False
    assert t.batch_size * t.grad_accum == 64 and t.grad_accum > 1
    assert t.max_iters == 20000
    assert (t.beta1, t.beta2, t.weight_decay, t.grad_clip) == (0.9, 0.95, 0.1, 1.0)
    assert cfg.data.source.startswith("hf:Skylion007/openwebtext")
    assert (cfg.tokenize.val_fraction, cfg.tokenize.split_seed, cfg.tokenize.tokenizer) == (0.0005, 2357, "gpt2")
    assert "The future of AI is" in cfg.generate.prompts
    assert cfg.tracking.registered_model == "gptlab"


@pytest.mark.parametrize("profile", sorted(p.stem for p in (REPO / "profiles").glob("*.yaml")))
def test_every_committed_profile_is_valid(project: Path, profile):
    cfg = load_config(project / "params.yaml", [f"profile={profile}"])
    assert cfg.profile == profile


def test_demo_profile_is_offline_and_cpu(project: Path):
    cfg = load_config(project / "params.yaml", ["profile=demo"])
    assert cfg.data.source == "demo" and cfg.train.device == "cpu"


def test_all_problems_are_reported_at_once(project: Path):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["lrr"] = 0.1  # unknown key (typo)
    params["train"]["max_iters"] = "many"  # wrong type
    params["model"]["n_head"] = 5  # 384 % 5 != 0
    del params["eval"]["batch_size"]  # missing
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError) as info:
        load_config(project / "params.yaml")
    message = str(info.value)
    assert "`train.lrr` is not a setting; did you mean `train.lr`?" in message
    assert "`train.max_iters` must be int, got 'many'" in message
    assert "`eval.batch_size` is missing" in message
    assert "`model.n_embd` (384) must be divisible by `model.n_head` (5)" in message
    assert len(info.value.problems) == 4


def test_cross_field_problems_name_the_keys_and_the_fix(project: Path):
    with pytest.raises(ConfigError) as info:
        load_config(
            project / "params.yaml",
            ["model.n_head=5", "train.min_lr=1.0", "train.warmup_iters=30000", "generate.top_p=0", "data.source=s3:x"],
        )
    message = str(info.value)
    assert "`model.n_embd` (384) must be divisible by `model.n_head` (5): pick n_head from" in message
    assert "`train.min_lr` (1.0) must not exceed `train.lr`" in message
    assert "`train.warmup_iters` (30000) must not exceed `train.max_iters` (20000)" in message
    assert "`generate.top_p` must be in (0, 1]" in message
    assert "`data.source` must be `demo`" in message
    assert len(info.value.problems) == 5


def test_overrides_use_dvc_syntax_and_beat_the_profile(project: Path):
    assert parse_override("train.lr=3e-4") == ("train.lr", 3e-4)  # YAML 1.2 float, as DVC reads it
    assert parse_override("generate.prompts=[a, b]") == ("generate.prompts", ["a", "b"])
    cfg = load_config(project / "params.yaml", ["profile=demo", "train.max_iters=70", "train.lr=5e-3"])
    assert (cfg.profile, cfg.data.source, cfg.train.max_iters, cfg.train.lr) == ("demo", "demo", 70, 5e-3)


def test_profile_overlay_beats_params_yaml(project: Path):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["profile"] = "demo"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    demo = yaml.safe_load((REPO / "profiles" / "demo.yaml").read_text())
    assert load_config(project / "params.yaml").train.max_iters == demo["train"]["max_iters"]


def test_unknown_profile_and_incomplete_overlay_are_explained(project: Path):
    with pytest.raises(ConfigError, match=r"`profile` is 'nope', which has no profiles/nope.yaml; available: .*demo"):
        load_config(project / "params.yaml", ["profile=nope"])
    (project / "profiles" / "partial.yaml").write_text("train: {max_iters: 3}\n")
    with pytest.raises(ConfigError, match="profiles/partial.yaml lacks section"):
        load_config(project / "params.yaml", ["profile=partial"])


def test_flat_names_match_override_names(project: Path):
    cfg = load_config(project / "params.yaml")
    flat = cfg.flat()
    assert flat["train.lr"] == cfg.train.lr and flat["model.n_embd"] == 384
    again = load_config(project / "params.yaml", [f"train.lr={flat['train.lr'] * 2}"])
    assert again.train.lr == 2 * cfg.train.lr


def test_cli_rejects_bad_config_before_touching_files(project: Path):
    result = subprocess.run(
        [sys.executable, "-m", "gptlab", "download", "--params", str(project / "params.yaml"),
         "-S", "model.n_head=5", "-S", "train.bogus=1"],
        capture_output=True, text=True, cwd=project,
    )
    assert result.returncode == 2
    assert "2 problem(s)" in result.stderr and "train.bogus" in result.stderr and "n_head" in result.stderr
    assert sorted(p.name for p in project.iterdir()) == ["params.yaml", "profiles"]


def test_hub_sources_must_pin_a_commit_and_data_settings_are_checked(project: Path):
    with pytest.raises(ConfigError) as info:
        load_config(project / "params.yaml", ["data.source=hf:Skylion007/openwebtext@main", "data.num_proc=0",
                                              "data.expected_docs=0", "tokenize.shard_tokens=0",
                                              "tokenize.num_workers=-1"])
    message = str(info.value)
    assert "'hf:Skylion007/openwebtext@main' must pin a commit: hf:OWNER/NAME@<40 hex digits>" in message
    assert "`data.num_proc` must be > 0" in message and "`data.expected_docs` must be > 0 or null" in message
    assert "`tokenize.shard_tokens` must be > 0" in message and "`tokenize.num_workers` must be > 0 or null" in message
    assert len(info.value.problems) == 5
    cfg = load_config(project / "params.yaml")
    assert cfg.data.source == "hf:Skylion007/openwebtext@79d93d786212f7344586290adb811d4ae6a1762c"
    assert cfg.data.expected_docs == 8_013_769 and cfg.tokenize.shard_tokens == 100_000_000

def test_eval_settings_are_checked_with_the_expected_forms(project: Path):
    with pytest.raises(ConfigError) as info:
        load_config(project / "params.yaml", [
            "eval.contexts=[0, 512]", "eval.lambada=hf:EleutherAI/lambada_openai", "eval.baselines=[gpt2, gpt2]",
            "eval.device=tpu", "eval.plateau_evals=0"])
    message = str(info.value)
    assert "`eval.contexts` must list context lengths > 0 (e.g. [512, 1024]), got [0, 512]" in message
    assert "`eval.lambada` must be `hf:OWNER/NAME@REVISION/FILE`, `local:PATH` or `none`" in message
    assert "`eval.baselines` must list distinct, non-empty names or folders" in message
    assert "`eval.device` must be auto, cpu, mps, cuda or cuda:N, got 'tpu'" in message
    assert "`eval.plateau_evals` must be > 0, got 0" in message
    assert len(info.value.problems) == 5


def test_eval_stride_must_fit_every_context_it_slides_over(project: Path):
    assert load_config(project / "params.yaml").eval.stride is None  # the seed: non-overlapping windows
    assert load_config(project / "params.yaml", ["eval.stride=256"]).eval.stride == 256
    for bad, expected in [("0", "`eval.stride` must be > 0 or null (non-overlapping windows), got 0"),
                          ("600", "`eval.stride` (600) exceeds `model.block_size` (512)"),
                          ("1000", "`eval.stride` (1000) exceeds the smallest of `eval.contexts` (512)")]:
        with pytest.raises(ConfigError, match=re.escape(expected)):
            load_config(project / "params.yaml", [f"eval.stride={bad}"])
    with pytest.raises(ConfigError, match=r"`eval.hellaswag` must be `hf:OWNER/NAME@REVISION/FILE`"):
        load_config(project / "params.yaml", ["eval.hellaswag=Rowan/hellaswag"])


def test_training_scale_settings_are_checked(project: Path):
    with pytest.raises(ConfigError) as err:
        load_config(project / "params.yaml", ["train.nproc_per_node=8", "train.checkpoint_interval=-1",
                                              "train.peak_flops=0", "train.init=gpt2"])
    text = str(err.value)
    assert "`train.grad_accum` (2) must be divisible by `train.nproc_per_node` (8)" in text
    assert "keep 64 sequences per step" in text
    assert "`train.checkpoint_interval` must be ≥ 0" in text and "`train.peak_flops` must be > 0" in text
    assert "`train.init` must be `scratch`, `hf:NAME_OR_FOLDER`" in text
    with pytest.raises(ConfigError) as err:
        load_config(project / "params.yaml", ["train.resume=always", "train.compile=sometimes"])
    assert "`train.resume` must be 'auto' | 'never'" in str(err.value)
    assert "`train.compile` must be bool or 'auto'" in str(err.value)
    for good in ("scratch", "hf:gpt2", "hf:/models/gpt2-local", "checkpoint:models/final", "models:/gptlab/3",
                 "models:/gptlab@champion"):
        assert load_config(project / "params.yaml", [f"train.init={good}"]).train.init == good
    assert load_config(project / "params.yaml", ["train.compile=false"]).train.compile is False


def _git_project(project: Path) -> Path:
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "the committed experiment"]):
        subprocess.run(["git", *cmd], cwd=project, check=True, capture_output=True)
    return project


def _edit_params(project: Path, **values: object) -> None:
    """Set dotted keys in params.yaml as `dvc exp run -S KEY=VALUE` does (it rewrites the file)."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    for key, value in values.items():
        *parents, leaf = key.split("__")
        node = params
        for part in parents:
            node = node[part]
        node[leaf] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_a_params_yaml_value_the_profile_shadows_fails_before_any_work_and_prints_the_command(project: Path):
    # What `dvc exp run -S profile=demo -S data.source=local:my/corpus -S train.seed=7` writes into params.yaml:
    # profiles/demo.yaml sets data.source: demo, which would silently win; train.seed is not in the profile.
    _git_project(project)
    _edit_params(project, profile="demo", data__source="local:my/corpus", train__seed=7)
    with pytest.raises(ConfigError) as refused:
        load_config(project / "params.yaml")
    [problem] = refused.value.problems
    assert "`data.source: local:my/corpus` (profiles/demo.yaml has demo)" in problem
    assert "silently ignore" in problem and "train.seed" not in problem.split("dvc exp run")[0]
    assert ("`git checkout params.yaml && dvc exp run -S profile=demo "
            "-S profiles/demo.yaml:data.source=local:my/corpus -S train.seed=7`") in problem
    # A command's -S beats the profile, so giving the value there is honoured, not refused.
    assert load_config(project / "params.yaml", ["data.source=local:my/corpus"]).data.source == "local:my/corpus"
    # The printed command does what it says: the value lands in the profile's file, and the run uses it.
    subprocess.run(["git", "checkout", "params.yaml"], cwd=project, check=True, capture_output=True)
    _edit_params(project, profile="demo", train__seed=7)
    demo = project / "profiles" / "demo.yaml"
    demo.write_text(demo.read_text().replace("  source: demo", "  source: local:my/corpus"))
    cfg = load_config(project / "params.yaml")
    assert (cfg.profile, cfg.data.source, cfg.train.seed) == ("demo", "local:my/corpus", 7)


@pytest.mark.parametrize("key, value", [
    ("train.max_iters", 5),             # a training setting the demo profile sets
    ("generate.prompts", ["Hi"]),       # a list the demo profile sets
    ("tracking.promote_margin", 0.05),  # a value the demo profile leaves to params.yaml: honoured
])
def test_every_value_a_profile_sets_is_checked_and_only_those(project: Path, key, value):
    _git_project(project)
    _edit_params(project, profile="demo", **{key.replace(".", "__"): value})
    if key == "tracking.promote_margin":
        assert load_config(project / "params.yaml").tracking.promote_margin == 0.05
        return
    with pytest.raises(ConfigError, match=re.escape(f"`{key}: ")) as refused:
        load_config(project / "params.yaml")
    assert f"profiles/demo.yaml:{key}=" in str(refused.value)


def test_the_gates_evidence_settings_are_checked(project: Path):
    cfg = load_config(project / "params.yaml", ["tracking.promote_alpha=1", "tracking.promote_seeds=3"])
    assert (cfg.tracking.promote_alpha, cfg.tracking.promote_seeds) == (1.0, 3)
    with pytest.raises(ConfigError) as info:
        load_config(project / "params.yaml", ["tracking.promote_alpha=0", "tracking.promote_seeds=0"])
    message = str(info.value)
    assert "`tracking.promote_alpha` must be in (0, 1] (the paired test's significance level; 1 disables it), got 0" in message
    assert "`tracking.promote_seeds` must be > 0, got 0" in message
