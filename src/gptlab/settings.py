"""The experiment's settings: frozen dataclasses, one per params.yaml section, a docstring per field, and the
rules their values must follow. Standard library only: every layer may import it.

One name per setting: ``train.lr`` is the YAML key, the field path here, the MLflow param and the ``-S``
override. Reading and merging the files is :mod:`gptlab.pipeline.config`'s job; this module holds what a
valid configuration is.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Literal

GPT2_VOCAB = 50257  # GPT-2 BPE: 50,000 merges + 256 bytes + <|endoftext|>
SECTIONS = ("data", "tokenize", "model", "train", "eval", "generate", "tracking", "serve", "scaling")
# Sections a profile may leave out (they then take params.yaml's values): only the scaling stage reads
# `scaling`, and DVC tracks it from params.yaml alone (that stage re-runs every time: see dvc.yaml); only
# `gptlab serve` reads `serve`, which no stage depends on.
OPTIONAL_SECTIONS = ("scaling", "serve")


@dataclass(frozen=True)
class DataConfig:
    """``data``: which corpus the download stage fetches."""

    source: str
    """``hf:REPO@COMMIT`` (the parquet files of a Hugging Face dataset at a pinned 40-hex commit),
    ``local:PATH_OR_GLOB`` (txt / jsonl / parquet), or ``demo`` (CPython's bundled reference docs, offline)."""
    text_field: str
    """Column (parquet / hub) or key (jsonl) holding each document's text."""
    max_docs: int | None
    """Keep only the first N documents (quick real-data runs); null keeps all."""
    expected_docs: int | None
    """Rows the whole source must hold (OpenWebText: 8,013,769); anything else is refused before any file is
    written. Checked only when max_docs is null; null skips the check."""
    max_doc_chars: int
    """Documents longer than this many characters are skipped and counted in the manifest (a guard against a
    runaway file or row, not a filter: no OpenWebText document comes close)."""
    num_proc: int
    """Parallel file downloads from the hub."""


@dataclass(frozen=True)
class TokenizeConfig:
    """``tokenize``: BPE, the train/val split and the token files."""

    tokenizer: Literal["gpt2"]
    """GPT-2's byte-level BPE through tiktoken (50,257 ids, <|endoftext|> = 50256)."""
    val_fraction: float
    """Share of documents held out for validation (nanoGPT: 0.0005)."""
    split_seed: int
    """Seed of the document shuffle before the split (nanoGPT: 2357)."""
    shard_tokens: int
    """Tokens per shard file (the last of each split holds the rest); 100M tokens = 200 MB."""
    num_workers: int | None
    """Threads encoding in parallel; null uses every core this process may run on. The output does not
    depend on it."""


@dataclass(frozen=True)
class ModelConfig:
    """``model``: the GPT architecture (nanoGPT / GPT-2 layout)."""

    n_layer: int
    """Transformer blocks."""
    n_head: int
    """Attention heads per block; must divide n_embd."""
    n_embd: int
    """Residual stream width."""
    block_size: int
    """Context length in tokens."""
    vocab_size: int
    """Embedding rows; GPT-2's 50257 padded up to a multiple of 64 for faster matmuls (nanoGPT)."""
    dropout: float
    """Dropout probability in attention, MLP and embeddings (0 for pretraining)."""
    bias: bool
    """Biases in Linear and LayerNorm layers (GPT-2: true; slightly better and faster: false)."""


@dataclass(frozen=True)
class TrainConfig:
    """``train``: the optimisation loop."""

    device: str
    """``auto`` (cuda when present, else cpu), ``cpu``, ``cuda`` or ``cuda:N``."""
    dtype: Literal["auto", "float32", "bfloat16"]
    """Autocast precision; ``auto`` is bfloat16 on CUDA GPUs that support it and on CPUs with native bf16
    instructions (AVX512-BF16 or AMX), float32 elsewhere. Weights and optimizer state stay float32."""
    batch_size: int
    """Sequences per micro-batch (per process)."""
    grad_accum: int
    """Micro-batches accumulated per optimizer step; batch_size × grad_accum = sequences per step."""
    max_iters: int
    """Optimizer steps."""
    lr: float
    """Peak learning rate, reached at the end of warmup."""
    min_lr: float
    """Learning rate at the end of the decay."""
    lr_schedule: Literal["cosine", "linear"]
    """Decay after warmup: cosine or linear, from lr down to min_lr at max_iters."""
    warmup_iters: int
    """Steps of linear warmup from 0 to lr."""
    weight_decay: float
    """AdamW decoupled weight decay, applied to ≥2-D weights only (not biases, LayerNorms)."""
    beta1: float
    """AdamW β1."""
    beta2: float
    """AdamW β2 (0.95 as GPT-3 / nanoGPT for stability at large batch)."""
    grad_clip: float
    """Clip the global gradient norm to this value; 0 disables."""
    eval_interval: int
    """Estimate val loss every N steps (and at the last step)."""
    eval_iters: int
    """Batches of val windows per periodic val-loss estimate; the windows sit at evenly spaced offsets across
    the val split and are the same at every eval (the evaluate stage scores the whole split)."""
    log_interval: int
    """Report train loss, lr and throughput every N steps."""
    seed: int
    """Seed of initialisation and batch sampling."""
    compile: bool | Literal["auto"]
    """``torch.compile`` the forward and the loss: ``auto`` compiles when the run is long enough to repay the
    ~1 minute compiling takes (it saves ~a third of every step, on CPU too: benchmarks/bench_train.py), i.e. the
    seed run compiles and the demo stays eager; the rule and its numbers are in gptlab.core.train.use_compile."""
    peak_flops: float | None
    """Peak FLOP/s of one device for MFU; null looks the GPU up in gptlab.hardware's table of dense bf16
    peaks (a CPU or an unknown GPU then logs no MFU)."""
    nproc_per_node: int
    """Training processes per node: > 1 makes `python -m flows.train` start torchrun (one process per GPU;
    gloo processes on CPU). ``grad_accum`` is split across all processes, so the step's batch is unchanged."""
    checkpoint_interval: int
    """Write a resumable checkpoint (weights, optimizer, RNG and data-loader state) to models/checkpoints/
    every N steps; 0 writes only the final one."""
    resume: Literal["auto", "never"]
    """``auto`` continues from the latest valid checkpoint of this configuration in models/checkpoints/ (and
    its MLflow run); ``never`` discards those checkpoints and starts from ``init``."""
    init: str
    """Starting weights when not resuming: ``scratch``; ``hf:gpt2`` (``gpt2-medium``, … or a local Hugging
    Face folder, ``hf:PATH``); ``checkpoint:PATH`` (a gptlab checkpoint, e.g. models/final); or a registered
    model, ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``. Only weights: optimizer and schedule start
    fresh (fine-tuning). The model section must describe the same architecture."""


@dataclass(frozen=True)
class EvalConfig:
    """``eval``: the evaluate stage."""

    batch_size: int
    """Windows per forward pass when scoring the val split, LAMBADA and WikiText (no gradients, so this can be
    several times train.batch_size)."""
    device: str
    """Where the evaluate and baselines stages run: ``auto`` (cuda when present, else cpu), ``cpu``, ``cuda:N``."""
    dtype: Literal["auto", "float32", "bfloat16"]
    """Autocast precision of evaluation; ``auto`` is bfloat16 on CUDA and float32 on CPU."""
    contexts: tuple[int, ...]
    """Context lengths at which every GPT-2 baseline is scored on the val split, LAMBADA and WikiText (our model
    is scored at its own model.block_size); a context beyond a baseline's positions is reported as not measured."""
    stride: int | None
    """Val-split perplexity windows: null scores non-overlapping windows of the context (each token sees the
    tokens since its window began); N > 0 slides the window by N tokens and scores only its last N, so every
    token after the first window sees context - N or more tokens before it (transformers' perplexity guide).
    Smaller is closer to full context and slower: ~context / N forward passes per window's worth of tokens."""
    baselines: tuple[str, ...]
    """GPT-2 checkpoints scored with the same code on the same val tokens: ``gpt2``, ``gpt2-medium``,
    ``gpt2-large``, ``gpt2-xl`` (Hugging Face hub or its cache) or a local Hugging Face GPT-2 folder; [] for none."""
    lambada: str
    """LAMBADA (OpenAI's test split, 5,153 passages): ``hf:OWNER/NAME@REVISION/FILE`` (a pinned file of a hub
    dataset repo), ``local:PATH`` (.jsonl with a ``text`` key or .parquet with a ``text`` column) or ``none``."""
    wikitext: str
    """WikiText-103 test documents: ``hf:OWNER/NAME@REVISION/FILE``, ``local:PATH`` (.jsonl or .parquet with a
    ``page`` field, one document per row) or ``none``."""
    hellaswag: str
    """HellaSwag's validation split (10,042 items) with lm-eval's ``hellaswag`` prompt and acc / acc_norm:
    ``hf:OWNER/NAME@REVISION/FILE``, ``local:PATH`` (.jsonl or .parquet with ``activity_label``, ``ctx_a``,
    ``ctx_b``, ``endings``, ``label``) or ``none``."""
    plateau_evals: int
    """The report's loss plateau is the mean val loss of the last N periodic evals of training."""


@dataclass(frozen=True)
class GenerateConfig:
    """``generate``: sampling."""

    prompts: tuple[str, ...]
    """Prompts to continue; each gets num_samples samples."""
    num_samples: int
    """Samples per prompt."""
    max_new_tokens: int
    """Tokens generated per sample (sampling stops earlier at <|endoftext|>)."""
    temperature: float
    """Softmax temperature; 0 means greedy decoding."""
    top_k: int
    """Keep the k most likely tokens; 0 disables."""
    top_p: float
    """Nucleus sampling: keep the smallest set with cumulative probability ≥ top_p; 1.0 disables."""
    seed: int
    """Seed of the sampler (samples are reproducible)."""


@dataclass(frozen=True)
class TrackingConfig:
    """``tracking``: MLflow names (the tracking URI comes from MLFLOW_TRACKING_URI or the embedded default)."""

    experiment: str
    """MLflow experiment that holds the runs."""
    registered_model: str
    """Registered model that receives a new version per training (alias ``candidate``)."""
    promote_margin: float
    """The promotion gate: a candidate becomes ``champion`` only if its val perplexity is below the champion's
    (on the same val split) by at least this fraction: 0.01 means at least 1% lower. ``--force`` overrides."""
    flush_timeout: float
    """Seconds the end of a training run keeps retrying an unreachable tracking server; records still
    undelivered then stay in ``.gptlab/outbox/`` for ``gptlab sync``."""
    promote_alpha: float
    """The promotion gate's evidence: the paired bootstrap over val documents (candidate − champion val loss)
    must reject "no improvement" at this level (p ≤ alpha) as well as clear ``promote_margin``. 1 disables it."""
    promote_seeds: int
    """The promotion gate needs at least this many evaluated seed runs of the candidate's configuration (runs
    that differ only in ``train.seed``); with more than one, the test also resamples the seed runs."""


@dataclass(frozen=True)
class ServeConfig:
    """``serve``: limits on one request to the served model (``gptlab serve``), so that no request can hold a
    worker for minutes. A request over a limit is refused with HTTP 400 naming the param, its value and the
    allowed range; the sampling params follow the ``generate`` section's rules."""

    max_new_tokens: int
    """Largest ``max_new_tokens`` a request may ask for."""
    max_prompt_tokens: int
    """Longest prompt accepted, in GPT-2 tokens (the model reads at most ``model.block_size`` of them)."""
    max_prompts: int
    """Most prompts in one request (each is generated in turn)."""


@dataclass(frozen=True)
class ModelShape:
    """One model size of a sweep: the ``model`` settings a sweep point changes (the rest stay)."""

    n_layer: int
    n_head: int
    n_embd: int


@dataclass(frozen=True)
class ScalingConfig:
    """``scaling``: the sweep of model sizes × token budgets (``gptlab sweep``), the fit of
    L(N, D) = E + A/N^α + B/D^β over its runs and the forecast (``gptlab scaling``, the scaling stage)."""

    sizes: tuple[ModelShape, ...]
    """Model shapes of the sweep, each ``{n_layer, n_head, n_embd}``; every other setting is the profile's."""
    max_iters: tuple[int, ...]
    """Budgets: each size trains for each of these ``train.max_iters`` (D = max_iters × tokens per step; the
    learning-rate schedule decays over each run's own length, as Hoffmann et al. 2022 require)."""
    jobs: int
    """Experiments ``gptlab sweep run`` trains at once (``dvc queue start -j``); 1 on a small CPU box, where
    parallel runs only share the same cores."""
    bootstrap: int
    """Resamples over runs for the fit's and the forecast's 95% intervals (0: no intervals)."""
    seed: int
    """Seed of the bootstrap resampling (the report is reproducible)."""
    gpu: str
    """GPU whose dense bf16 peak (gptlab.hardware's table) prices the forecast in GPU-hours, e.g. ``H100``."""
    mfu: float | None
    """Model FLOPs utilisation for GPU-hours; null uses the median MFU the fitted runs measured, and a stated
    assumption of 0.35 (nanoGPT's reported ~35% on A100 for GPT-2 124M) when they measured none (CPU runs)."""
    forecast_iters: tuple[int, ...]
    """The seed configuration's expected loss at these ``train.max_iters`` (the seed's "50k+ iterations for
    ppl under 60" claim)."""


@dataclass(frozen=True)
class Config:
    """The whole resolved experiment."""

    profile: str
    data: DataConfig
    tokenize: TokenizeConfig
    model: ModelConfig
    train: TrainConfig
    eval: EvalConfig
    generate: GenerateConfig
    tracking: TrackingConfig
    serve: ServeConfig
    scaling: ScalingConfig

    @property
    def tokens_per_step(self) -> int:
        return self.train.batch_size * self.train.grad_accum * self.model.block_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """``{"train.lr": 0.001, ...}``: the names used for MLflow params and ``-S`` overrides."""
        return flatten(self.to_dict())


SECTION_TYPES: dict[str, type] = {
    "data": DataConfig,
    "tokenize": TokenizeConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "generate": GenerateConfig,
    "tracking": TrackingConfig,
    "serve": ServeConfig,
    "scaling": ScalingConfig,
}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}}`` → ``{"train.lr": 1e-3}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def replace(cfg: Config, **changes: Any) -> Config:
    """``replace(cfg, train={"max_iters": 10})``: a copy with some section fields changed (tests, tools)."""
    sections = {
        name: dataclasses.replace(getattr(cfg, name), **values) if isinstance(values, dict) else values
        for name, values in changes.items()
    }
    return dataclasses.replace(cfg, **sections)


# ------------------------------------------------------------------------------------------- value rules


_SOURCE_RE = re.compile(r"^(demo|hf:[\w.\-]+/[\w.\-]+(@[\w.\-/]+)?|local:.+)$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_TASK_SOURCE_RE = re.compile(r"^(none|local:.+|hf:[\w.\-]+/[\w.\-]+@[\w.\-]+/.+)$")
_INIT_RE = re.compile(r"^(scratch|hf:.+|checkpoint:.+|models:/[^/@]+(/\d+|@[\w.\-]+))$")


def _bounds(section: str, obj: Any, keys: list[str], problems: list[str], *, allow_zero: bool = False) -> None:
    for key in keys:
        value = getattr(obj, key)
        if value < 0 or (value == 0 and not allow_zero):
            problems.append(f"`{section}.{key}` must be {'≥ 0' if allow_zero else '> 0'}, got {value}")


def _check_data(d: DataConfig, p: list[str]) -> None:
    if not _SOURCE_RE.match(d.source):
        p.append(f"`data.source` must be `demo`, `hf:OWNER/NAME[@REVISION]` or `local:PATH_OR_GLOB`, got {d.source!r}")
    if d.max_docs is not None and d.max_docs <= 0:
        p.append(f"`data.max_docs` must be > 0 or null (all documents), got {d.max_docs}")
    if d.expected_docs is not None and d.expected_docs <= 0:
        p.append(f"`data.expected_docs` must be > 0 or null (no check), got {d.expected_docs}")
    _bounds("data", d, ["max_doc_chars", "num_proc"], p)
    if _SOURCE_RE.match(d.source) and d.source.startswith("hf:"):
        revision = d.source.partition("@")[2]
        if not _COMMIT_RE.match(revision):
            # A branch or tag moves; only a commit makes `dvc repro` fetch the same documents next year.
            p.append(
                f"`data.source` {d.source!r} must pin a commit: hf:OWNER/NAME@<40 hex digits>. Find it on the "
                "dataset's hub page (Files and versions → History) or with "
                "`python -c \"import huggingface_hub as h; print(h.HfApi().dataset_info('OWNER/NAME').sha)\"`"
            )


def _check_tokenize(k: TokenizeConfig, p: list[str]) -> None:
    if not 0.0 < k.val_fraction < 1.0:
        p.append(f"`tokenize.val_fraction` must be between 0 and 1, got {k.val_fraction}")
    _bounds("tokenize", k, ["shard_tokens"], p)
    if k.num_workers is not None and k.num_workers <= 0:
        p.append(f"`tokenize.num_workers` must be > 0 or null (every core), got {k.num_workers}")


def _check_model(m: ModelConfig, p: list[str]) -> None:
    _bounds("model", m, ["n_layer", "n_head", "n_embd", "block_size"], p)
    if m.n_head > 0 and m.n_embd % m.n_head:
        p.append(
            f"`model.n_embd` ({m.n_embd}) must be divisible by `model.n_head` ({m.n_head}): "
            f"pick n_head from {[h for h in range(1, 33) if m.n_embd % h == 0]}"
        )
    if m.vocab_size < GPT2_VOCAB:
        p.append(f"`model.vocab_size` must be ≥ {GPT2_VOCAB} (the GPT-2 BPE), got {m.vocab_size}; use 50304")
    if not 0.0 <= m.dropout < 1.0:
        p.append(f"`model.dropout` must be in [0, 1), got {m.dropout}")


def _check_train(t: TrainConfig, p: list[str]) -> None:
    if not _DEVICE_RE.match(t.device):
        p.append(f"`train.device` must be auto, cpu, mps, cuda or cuda:N, got {t.device!r}")
    _bounds("train", t, ["batch_size", "grad_accum", "max_iters", "lr", "eval_interval", "eval_iters", "log_interval"], p)
    _bounds("train", t, ["warmup_iters", "min_lr", "weight_decay", "grad_clip"], p, allow_zero=True)
    if t.min_lr > t.lr:
        p.append(f"`train.min_lr` ({t.min_lr}) must not exceed `train.lr` ({t.lr})")
    if t.warmup_iters > t.max_iters:
        p.append(f"`train.warmup_iters` ({t.warmup_iters}) must not exceed `train.max_iters` ({t.max_iters})")
    for key in ("beta1", "beta2"):
        if not 0.0 <= getattr(t, key) < 1.0:
            p.append(f"`train.{key}` must be in [0, 1), got {getattr(t, key)}")
    _bounds("train", t, ["nproc_per_node"], p)
    _bounds("train", t, ["checkpoint_interval"], p, allow_zero=True)
    if t.peak_flops is not None and t.peak_flops <= 0:
        p.append(f"`train.peak_flops` must be > 0 (FLOP/s of one device, e.g. 989e12) or null, got {t.peak_flops}")
    if t.nproc_per_node > 0 and t.grad_accum > 0 and t.grad_accum % t.nproc_per_node:
        per_step = t.batch_size * t.grad_accum
        p.append(
            f"`train.grad_accum` ({t.grad_accum}) must be divisible by `train.nproc_per_node` ({t.nproc_per_node}): "
            f"each process runs grad_accum / nproc_per_node micro-batches. To keep {per_step} sequences per step, "
            f"use a grad_accum that is a multiple of {t.nproc_per_node} and batch_size = {per_step} / grad_accum"
        )
    if not _INIT_RE.match(t.init):
        p.append(
            f"`train.init` must be `scratch`, `hf:NAME_OR_FOLDER`, `checkpoint:PATH`, `models:/NAME/VERSION` or "
            f"`models:/NAME@ALIAS`, got {t.init!r}"
        )


def _check_eval(e: EvalConfig, p: list[str]) -> None:
    _bounds("eval", e, ["batch_size", "plateau_evals"], p)
    if not _DEVICE_RE.match(e.device):
        p.append(f"`eval.device` must be auto, cpu, mps, cuda or cuda:N, got {e.device!r}")
    if not e.contexts or any(c <= 0 for c in e.contexts):
        p.append(f"`eval.contexts` must list context lengths > 0 (e.g. [512, 1024]), got {list(e.contexts)}")
    if any(not name.strip() for name in e.baselines) or len(set(e.baselines)) != len(e.baselines):
        p.append(f"`eval.baselines` must list distinct, non-empty names or folders, got {list(e.baselines)}")
    if e.stride is not None and e.stride <= 0:
        p.append(f"`eval.stride` must be > 0 or null (non-overlapping windows), got {e.stride}")
    elif e.stride is not None and e.contexts and e.stride > min(e.contexts):
        p.append(f"`eval.stride` ({e.stride}) exceeds the smallest of `eval.contexts` ({min(e.contexts)}): tokens "
                 f"would be skipped; use a stride ≤ {min(e.contexts)} or null")
    for key in ("lambada", "wikitext", "hellaswag"):
        if not _TASK_SOURCE_RE.match(getattr(e, key)):
            p.append(
                f"`eval.{key}` must be `hf:OWNER/NAME@REVISION/FILE`, `local:PATH` or `none`, got {getattr(e, key)!r}"
            )


def _check_generate(g: GenerateConfig, p: list[str]) -> None:
    _bounds("generate", g, ["num_samples", "max_new_tokens"], p)
    _bounds("generate", g, ["temperature", "top_k"], p, allow_zero=True)
    if not g.prompts:
        p.append("`generate.prompts` is empty: give at least one prompt")
    if not 0.0 < g.top_p <= 1.0:
        p.append(f"`generate.top_p` must be in (0, 1], got {g.top_p}")


def _check_tracking(k: TrackingConfig, p: list[str]) -> None:
    if not 0.0 <= k.promote_margin < 1.0:
        p.append(f"`tracking.promote_margin` must be in [0, 1) (a fraction of the champion's perplexity), "
                 f"got {k.promote_margin}")
    _bounds("tracking", k, ["flush_timeout"], p, allow_zero=True)
    if not 0.0 < k.promote_alpha <= 1.0:
        p.append(f"`tracking.promote_alpha` must be in (0, 1] (the paired test's significance level; 1 disables "
                 f"it), got {k.promote_alpha}")
    _bounds("tracking", k, ["promote_seeds"], p)


def _check_scaling(s: ScalingConfig, p: list[str]) -> None:
    for i, shape in enumerate(s.sizes):
        if min(shape.n_layer, shape.n_head, shape.n_embd) <= 0 or shape.n_embd % shape.n_head:
            p.append(f"`scaling.sizes[{i}]` must have n_layer, n_head, n_embd > 0 and n_head dividing n_embd, got "
                     f"{dataclasses.asdict(shape)}")
    if len(set(s.sizes)) != len(s.sizes):
        p.append("`scaling.sizes` lists a shape twice: each must be distinct")
    if any(i <= 0 for i in s.max_iters) or len(set(s.max_iters)) != len(s.max_iters):
        p.append(f"`scaling.max_iters` must list distinct step counts > 0, got {list(s.max_iters)}")
    if any(i <= 0 for i in s.forecast_iters):
        p.append(f"`scaling.forecast_iters` must list step counts > 0, got {list(s.forecast_iters)}")
    _bounds("scaling", s, ["jobs"], p)
    _bounds("scaling", s, ["bootstrap"], p, allow_zero=True)
    if s.mfu is not None and not 0.0 < s.mfu <= 1.0:
        p.append(f"`scaling.mfu` must be in (0, 1] (e.g. 0.35) or null (measured), got {s.mfu}")


def _check_eval_model(e: EvalConfig, m: ModelConfig, p: list[str]) -> None:
    if e.stride is not None and e.stride > m.block_size > 0:
        p.append(f"`eval.stride` ({e.stride}) exceeds `model.block_size` ({m.block_size}), the context our model "
                 f"is scored at: use a stride ≤ {m.block_size} or null")


def _check_generate_model(g: GenerateConfig, m: ModelConfig, p: list[str]) -> None:
    if g.top_k > m.vocab_size:
        p.append(f"`generate.top_k` ({g.top_k}) exceeds `model.vocab_size` ({m.vocab_size}); use 0 to disable")


def _check_serve(s: ServeConfig, p: list[str]) -> None:
    _bounds("serve", s, ["max_new_tokens", "max_prompt_tokens", "max_prompts"], p)


def sampling_problems(g: GenerateConfig, m: ModelConfig, s: ServeConfig) -> list[str]:
    """What is wrong with the sampling settings a request asks for (``g``: the model's ``generate`` section with
    the request's params applied): the ``generate`` section's rules, then the ``serve`` limits. The served model
    names them as its params (``top_p``, not ``generate.top_p``)."""
    problems: list[str] = []
    _check_generate(g, problems)
    _check_generate_model(g, m, problems)
    if g.max_new_tokens > s.max_new_tokens:
        problems.append(f"`generate.max_new_tokens` must be ≤ {s.max_new_tokens} (the server's "
                        f"serve.max_new_tokens), got {g.max_new_tokens}")
    return [problem.replace("`generate.", "`") for problem in problems]


# Checks on values, each run when the sections it reads were read without type errors, so one pass reports
# type problems and value problems together.
_CHECKS: list[tuple[tuple[str, ...], Any]] = [
    (("data",), _check_data),
    (("tokenize",), _check_tokenize),
    (("model",), _check_model),
    (("train",), _check_train),
    (("eval",), _check_eval),
    (("generate",), _check_generate),
    (("tracking",), _check_tracking),
    (("serve",), _check_serve),
    (("scaling",), _check_scaling),
    (("generate", "model"), _check_generate_model),
    (("eval", "model"), _check_eval_model),
]


def value_problems(sections: dict[str, Any]) -> list[str]:
    """Problems of values and combinations, for every check whose sections were built (type errors aside)."""
    problems: list[str] = []
    for needs, check in _CHECKS:
        if all(sections.get(name) is not None for name in needs):
            check(*(sections[name] for name in needs), problems)
    return problems
