"""Shared fixtures: an isolated, offline environment; GPT-2's real BPE from a registry package; tiny data."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from gptlab.pipeline.config import load_config
from gptlab.settings import Config

REPO = Path(__file__).resolve().parents[1]
BPE_ARCHIVE = REPO / ".cache" / "pkgs" / "openai_whisper-20250625.tar.gz"

# Tiny enough that a training run takes seconds on 2 CPU cores, big enough to beat the unigram floor.
TINY = [
    "tokenize.val_fraction=0.1", "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
    "train.device=cpu", "train.dtype=float32", "train.batch_size=4", "train.grad_accum=2",
    "train.max_iters=80", "train.warmup_iters=4", "train.lr=1e-2", "train.min_lr=1e-3",
    "train.eval_interval=20", "train.eval_iters=2", "train.log_interval=10",
    "eval.batch_size=64", "eval.device=cpu", "eval.dtype=float32", "generate.max_new_tokens=12",
    "generate.num_samples=2",
    # The demo profile logs to its own experiment and registered model (gptlab-demo); the tests' tiny runs keep
    # the seed's names, which they look up. tests/e2e/test_walkthrough.py runs under the demo's own.
    "tracking.experiment=gptlab", "tracking.registered_model=gptlab",
]


def pytest_configure(config: pytest.Config) -> None:
    # Libraries that read these once, at import (huggingface_hub's constants), must see them before any import.
    for key, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                       "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "DVC_NO_ANALYTICS": "1"}.items():
        os.environ[key] = value


@pytest.fixture(scope="session")
def bpe_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiktoken cache holding GPT-2's real BPE, seeded from the openai-whisper sdist (PyPI), never the net."""
    source = Path(os.environ.get("GPTLAB_BPE_SOURCE", BPE_ARCHIVE))
    if not source.is_file():
        pytest.fail(f"{source} is missing: run `make tokenizer` (downloads the openai-whisper sdist from PyPI)")
    cache = tmp_path_factory.mktemp("tiktoken")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    from gptlab.data.tokenizer import seed_cache

    seed_cache(source)
    return cache


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing is written outside temp dirs and nothing waits on the network."""
    home = tmp_path_factory.getbasetemp() / "home"
    home.mkdir(exist_ok=True)
    for key, value in {
        # A temp HOME: caches that libraries keep under ~ (matplotlib, torch, pip, git) stay in the test's dirs.
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "MPLCONFIGDIR": str(home / ".config" / "matplotlib"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(home / "dvc-site"),
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(home / "hf"),
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "GIT_CONFIG_GLOBAL": str(home / "gitconfig"),
        "GIT_AUTHOR_NAME": "gptlab tests", "GIT_AUTHOR_EMAIL": "tests@gptlab.invalid",
        "GIT_COMMITTER_NAME": "gptlab tests", "GIT_COMMITTER_EMAIL": "tests@gptlab.invalid",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)


def committed_params() -> str:
    """The workspace's params.yaml on the seed profile: `make demo` (`dvc exp run -S profile=demo`) leaves the
    workspace copy on `profile: demo`, and the tests start from the seed experiment."""
    text = (REPO / "params.yaml").read_text()
    seeded, n = re.subn(r"^profile: *\S+", "profile: seed", text, count=1, flags=re.M)
    assert n == 1, "params.yaml has no top-level `profile:` line"
    return seeded


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The committed params.yaml and profiles/ in a temp dir (the stages' working directory)."""
    (tmp_path / "params.yaml").write_text(committed_params())
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    return tmp_path


@pytest.fixture
def tiny_cfg(project: Path) -> Config:
    return load_config(project / "params.yaml", ["profile=demo", *TINY])


@pytest.fixture
def tokens_dir(tiny_cfg: Config, project: Path, bpe_cache: Path) -> Path:
    """The demo corpus downloaded and tokenized with the real GPT-2 BPE (~140K tokens)."""
    from gptlab.pipeline.paths import Paths
    from gptlab.pipeline.stages import download, tokenize

    paths = Paths(project)
    download.run(tiny_cfg, paths)
    tokenize.run(tiny_cfg, paths)
    return paths.tokens


# Tiny stand-ins for the downstream tasks' files, in the pinned files' formats (LAMBADA: jsonl with `text`;
# WikiText-103: parquet with `page`, WikiText's own tokenization).
LAMBADA_TEXTS = [
    "The for statement is used to iterate over the elements of a sequence",
    "A dictionary maps keys to values, and the keys of a dictionary are unique keys",
    "He opened the door, looked at the garden and closed the door",
]
WIKITEXT_PAGES = [
    " = Python = \n Python is a programming language . It was created in 1 @,@ 991 by Guido van Rossum , "
    "and its name comes from a comedy group ( Monty Python ) . \n = = History = = \n Python 2 @.@ 0 was released "
    "in 2000 . \n",
    " = Iteration = \n A for loop runs its body once for each item of a well @-@ known sequence . \n",
]


def write_task_files(folder: Path) -> tuple[Path, Path]:
    """``lambada.jsonl`` and ``wikitext.parquet`` in ``folder``: local sources for eval.lambada / eval.wikitext."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    lambada = folder / "lambada.jsonl"
    lambada.write_text("".join(json.dumps({"text": t}) + "\n" for t in LAMBADA_TEXTS))
    wikitext = folder / "wikitext.parquet"
    pq.write_table(pa.table({"page": WIKITEXT_PAGES}), wikitext)
    return lambada, wikitext


# HellaSwag rows in the pinned parquet's format (label a string), with the WikiHow artifacts lm-eval cleans.
HELLASWAG_ROWS = [
    {"activity_label": "Making a cake", "ctx_a": "A woman pours batter into a pan.",
     "ctx_b": "she", "endings": ["puts the pan in the oven.", "eats the pan.", "throws the batter at a dog.",
                                 "sings to the  oven [step] loudly."], "label": "0"},
    {"activity_label": "Home and Garden", "ctx_a": "[header] How to water a plant [title] Check the soil.",
     "ctx_b": "", "endings": ["[step] Pour water  slowly around the base.", "Paint the plant blue.",
                              "Sell the house.", "[substeps] Water the ceiling."], "label": "0"},
    {"activity_label": "Running", "ctx_a": "A man ties his shoes.", "ctx_b": "then he",
     "endings": ["runs down the road.", "flies to the moon.", "becomes a shoe.", "reads the road."], "label": "0"},
]


def write_hellaswag_file(folder: Path) -> Path:
    """``hellaswag.parquet`` in ``folder``: a local source for eval.hellaswag."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "hellaswag.parquet"
    pq.write_table(pa.Table.from_pylist(HELLASWAG_ROWS), path)
    return path


def save_tiny_gpt2(path: Path, *, n_positions: int = 24, seed: int = 0) -> Path:
    """A tiny random transformers GPT-2 saved as a local Hugging Face folder: a baseline that loads offline."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=n_positions, vocab_size=50257)
    transformers.GPT2LMHeadModel(config).save_pretrained(path)
    return path


@pytest.fixture
def server(tmp_path: Path):
    """A real `mlflow server` on loopback (sqlite backend) that the test can kill and start again."""
    from .servers import MlflowServer

    srv = MlflowServer(tmp_path / "server")
    srv.start()
    yield srv
    srv.kill()


@pytest.fixture
def repo(tmp_path: Path, bpe_cache: Path) -> Path:
    """The committed pipeline (dvc.yaml, src, flows, profiles) on a tiny profile in a temp git + DVC repo."""
    from .dvcrepo import make_repo

    return make_repo(tmp_path)
