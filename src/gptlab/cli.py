"""``gptlab``: run one pipeline stage, inspect the config, promote a model, open the MLflow UI.

Every stage command takes ``-S KEY=VALUE`` overrides in the syntax of ``dvc exp run -S`` (YAML values).
Logging is configured here and nowhere else in the library.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptlab.pipeline.commandline import (
    BPE_CACHE,
    add_config_args,
    config_from_args,
    configure_logging,
    prepare_environment,
    run_guarded,
)

if TYPE_CHECKING:
    from gptlab.tracking.store import Store

log = logging.getLogger("gptlab")

STAGE_HELP = {
    "download": "fetch the corpus named by data.source into data/raw/ (an interrupted hub download resumes)",
    "tokenize": "GPT-2 BPE, train/val split → data/tokens/ (token shards + meta.json); a killed run resumes",
    "train": "train (or resume from models/checkpoints/) → models/final/, MLflow run, version with alias `candidate`",
    "evaluate": "val loss / perplexity over the whole val split, unigram floor, LAMBADA, WikiText-103, HellaSwag "
                "→ metrics/eval.json (+ per-item scores, metrics/eval_examples.npz)",
    "baselines": "GPT-2 (eval.baselines) on the same val split, LAMBADA, WikiText-103 and HellaSwag at "
                 "eval.contexts, plus samples → baselines/; one MLflow run each",
    "generate": "samples for every prompt → samples/samples.{json,md}",
    "report": "comparison table (ours, GPT-2 measured and published, unigram floor), plots, samples side by side "
              "→ reports/",
    "scaling": "fit L(N, D) = E + A/N^α + B/D^β over the finished runs of this configuration family on this val "
               "split, forecast what reaching GPT-2 takes → reports/scaling.{json,md}, plots",
}

def _stage(name: str, args: argparse.Namespace) -> Any:
    from gptlab.pipeline.paths import Paths

    cfg = config_from_args(args)
    stage = importlib.import_module(f"gptlab.pipeline.stages.{name}")  # only the stage asked for is imported
    return stage.run(cfg, Paths(args.params.parent))


def _store(args: argparse.Namespace) -> Store:
    from gptlab.tracking.store import Store

    return Store.at(args.params.parent)


def _show_config(args: argparse.Namespace) -> None:
    import yaml

    cfg = config_from_args(args)
    print(yaml.safe_dump(json.loads(json.dumps(cfg.to_dict())), sort_keys=False), end="")


def _promote(args: argparse.Namespace) -> dict[str, Any]:
    from gptlab.pipeline.promotion import promote
    from gptlab.tracking.store import TrackingError

    cfg = config_from_args(args)
    promotion = promote(
        _store(args), cfg.tracking.registered_model, alias=args.alias, version=args.version,
        source_alias=args.from_alias, margin=cfg.tracking.promote_margin, force=args.force,
        alpha=cfg.tracking.promote_alpha, seeds=cfg.tracking.promote_seeds,
    )
    if promotion.outcome == "rejected":
        raise TrackingError(
            f"{promotion.model} version {promotion.version} not promoted to {promotion.alias} "
            f"(stays at version {promotion.previous}): {promotion.reason}. Recorded as version tags "
            f"promotion.{promotion.alias}.*; `--force` promotes anyway"
        )
    return promotion.to_dict()


def _models(args: argparse.Namespace) -> list[dict[str, Any]] | None:
    from gptlab.tracking.registry import list_models

    cfg = config_from_args(args)
    store = _store(args)
    rows = list_models(store, cfg.tracking.registered_model)
    if args.json:
        return rows
    if not rows:
        print(f"no versions of {cfg.tracking.registered_model} in {store.uri}: run the pipeline (`dvc repro`) first")
        return None
    from tabulate import tabulate

    short = [{**r, "run_id": r["run_id"][:8], "val_sha256": r["val_sha256"][:12], "baseline": r["baseline"][:7]}
             for r in rows]
    print(f"{cfg.tracking.registered_model} in {store.uri}")
    # Hashes and names stay text: a short sha such as "1e50000" would otherwise print as a number.
    text = [i for i, key in enumerate(short[0]) if key in ("run_id", "val_sha256", "baseline", "dvc_exp")]
    print(tabulate(short, headers="keys", tablefmt="github", floatfmt=".4g", missingval="-", disable_numparse=text))
    return None


def _exec(cmd: list[str]) -> None:
    """Become ``cmd``, found next to this interpreter first: `mlflow` and the `uvicorn` it starts come from the
    environment gptlab runs in, activated or not."""
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    os.execvp(cmd[0], cmd)


def _serve(args: argparse.Namespace) -> int:
    from gptlab.tracking.pyfunc import LIMITS_ENV
    from gptlab.tracking.registry import serve_command

    cfg = config_from_args(args)
    store = _store(args)
    cmd = serve_command(store, cfg.tracking.registered_model, args.alias, host=args.host, port=args.port)
    os.environ["MLFLOW_TRACKING_URI"] = store.uri
    os.environ[LIMITS_ENV] = json.dumps(dataclasses.asdict(cfg.serve))  # the served model refuses beyond these
    print(f"serving models:/{cfg.tracking.registered_model}@{args.alias} on http://{args.host}:{args.port}/invocations"
          f"  ({' '.join(cmd)})", file=sys.stderr)
    _exec(cmd)
    return 0  # not reached


def _rescore(args: argparse.Namespace) -> dict[str, Any]:
    from gptlab.pipeline.paths import Paths
    from gptlab.pipeline.promotion import rescore

    alias = None if args.version else args.alias
    return rescore(config_from_args(args), Paths(args.params.parent), alias=alias, version=args.version)


def _sync(args: argparse.Namespace) -> dict[str, Any]:
    from gptlab.tracking.tracker import sync

    config_from_args(args)
    results = sync(args.params.parent)
    return {"runs": results} if results else {"runs": [], "note": "nothing was waiting in .gptlab/outbox/"}


def _register(args: argparse.Namespace) -> dict[str, Any]:
    from gptlab.pipeline.paths import Paths
    from gptlab.pipeline.stages.train import register_final

    return register_final(config_from_args(args), Paths(args.params.parent))


def _reproduce(args: argparse.Namespace) -> dict[str, Any]:
    from gptlab.pipeline.reproduce import ReproduceError, reproduce

    config_from_args(args)  # the -S overrides, against this project's params, before any work
    result = reproduce(args.run_id, root=args.params.parent, overrides=args.overrides, tolerance=args.tolerance,
                       keep=args.keep)
    if not result.matches:
        raise ReproduceError(
            f"run {args.run_id} did not reproduce: final val loss {result.reproduced_val_loss!r} vs recorded "
            f"{result.recorded_val_loss!r} (difference {result.delta:.3g} > tolerance {args.tolerance:g}). "
            f"Details: {json.dumps(result.to_dict(), default=str)}"
        )
    return result.to_dict()


def _ui(args: argparse.Namespace) -> int:
    from gptlab.tracking.registry import ui_command

    config_from_args(args)  # -S is accepted here too: a bad one fails like everywhere else
    cmd = ui_command(_store(args), host=args.host, port=args.port)
    print(f"MLflow UI on http://{args.host}:{args.port}  ({' '.join(cmd)})", file=sys.stderr)
    _exec(cmd)
    return 0  # not reached


def _seed_tokenizer(args: argparse.Namespace) -> dict[str, str]:
    from gptlab.data.tokenizer import get_encoding, seed_cache

    if not any(os.environ.get(var) for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR")):
        os.environ["TIKTOKEN_CACHE_DIR"] = str(Path.cwd() / BPE_CACHE)  # where every entry point looks
    target = seed_cache(args.source)
    ids = get_encoding("gpt2").encode_ordinary("Hello world")
    return {"cache_file": str(target), "check": f"'Hello world' -> {ids}"}


def _export_hf(args: argparse.Namespace) -> dict[str, str]:
    from gptlab.core.checkpoint import load_model
    from gptlab.hf.weights import export_hf

    model, ckpt = load_model(args.checkpoint)
    out = export_hf(model, args.out)
    return {"checkpoint": str(ckpt.path), "step": str(ckpt.step), "huggingface_folder": str(out),
            "load_with": f"transformers.GPT2LMHeadModel.from_pretrained({str(out)!r}), "
                         f"transformers.AutoTokenizer.from_pretrained({str(out)!r})",
            "lm_eval": f"lm_eval --model hf --model_args pretrained={out} --tasks lambada_openai,hellaswag"}


def _sweep(args: argparse.Namespace) -> dict[str, Any] | None:
    from gptlab.pipeline import sweep

    if args.sweep_command == "run":
        return sweep.run(args.params, args.overrides, jobs=args.jobs, wait=not args.no_wait)
    rows = sweep.status(args.params, args.overrides)
    if args.json:
        return {"points": rows}
    from tabulate import tabulate

    cols = ["name", "N", "D", "flops", "gpu_hours", "state", "val_loss"]
    print(tabulate([{k: r[k] for k in cols} for r in rows], headers="keys", tablefmt="github", floatfmt=".4g",
                   intfmt=",", missingval="-"))
    print(f"\nN: non-embedding parameters; D: training tokens; flops: training FLOPs; gpu_hours on one "
          f"{rows[0]['gpu']} at MFU {rows[0]['mfu']:g}{' (assumed)' if rows[0]['mfu_assumed'] else ''}.")
    print("Queue them all with `gptlab sweep run` (skips what is done), or one by one:")
    for r in rows:
        if r["state"] != "done":
            print(f"  {r['command']}")
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gptlab",
        description="Train a compact GPT-2-style model and measure it against GPT-2. "
        "`dvc repro` runs every stage in order; these commands run one.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in STAGE_HELP.items():
        p = sub.add_parser(name, help=text, description=text)
        add_config_args(p)
        p.set_defaults(func=lambda a, n=name: _stage(n, a))
    p = sub.add_parser("config", help="print the resolved configuration (params.yaml + profile + -S)")
    add_config_args(p)
    p.set_defaults(func=_show_config)
    p = sub.add_parser("promote", help="the promotion gate: candidate → champion if it beats it on the same val split")
    add_config_args(p)
    p.add_argument("--alias", default="champion", help="alias to set (default: champion)")
    p.add_argument("--version", default=None, help="version to promote (default: the one --from-alias names)")
    p.add_argument("--from-alias", default="candidate", help="alias whose version is promoted (default: candidate)")
    p.add_argument("--force", action="store_true",
                   help="move the alias even if the gate says no (the gate's reason is still recorded)")
    p.description = (
        "The promotion gate: the candidate takes the alias only if its val perplexity beats the current holder's "
        "on the same val split (val_sha256 tags) by tracking.promote_margin AND a paired bootstrap over the val "
        "documents (both versions' per-window losses, kept in their runs by the evaluate stage) rejects \"no "
        "improvement\" at tracking.promote_alpha (p <= alpha; 1 turns it off), over at least tracking.promote_seeds "
        "seed runs of the candidate's configuration. The decision, its reason, the loss difference, its 95% "
        "interval, p and the rule are recorded as version tags promotion.<alias>.*. Exit code 1 when the gate "
        "says no."
    )
    p.set_defaults(func=_promote)
    p = sub.add_parser("rescore", help="score a registered version on the current val split (data/tokens) and "
                       "update its val_* tags, so the gate can compare it")
    add_config_args(p)
    p.add_argument("--alias", default="champion", help="alias of the version to score (default: champion)")
    p.add_argument("--version", default=None, help="version to score (instead of --alias)")
    p.set_defaults(func=_rescore)
    p = sub.add_parser("models", help="list registered versions: aliases, DVC experiment and baseline commit, "
                       "val perplexity, val split, promotions")
    add_config_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_models)
    p = sub.add_parser("serve", help="serve models:/<tracking.registered_model>@champion over HTTP (mlflow models serve, loopback; the seed's model is gptlab, the demo's gptlab-demo)",
                       description="Serve models:/NAME@ALIAS with `mlflow models serve` on loopback. A request's "
                       "params (max_new_tokens, temperature, top_k, top_p, seed) follow the generate section's "
                       "rules; max_new_tokens, prompt tokens and prompts per request are capped by serve.*; "
                       "anything else is refused with HTTP 400 naming the param, its value and the allowed range.")
    add_config_args(p)
    p.add_argument("--alias", default="champion", help="alias to serve (default: champion)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=5001)
    p.set_defaults(func=_serve)
    p = sub.add_parser("register", help="register models/final as a new version with alias candidate "
                       "(after an outage: `gptlab sync` first)")
    add_config_args(p)
    p.set_defaults(func=_register)
    p = sub.add_parser("sync", help="deliver tracking records kept in .gptlab/outbox/ while MLflow was unreachable")
    add_config_args(p)
    p.set_defaults(func=_sync)
    p = sub.add_parser(
        "reproduce", help="rebuild a training run in a temp workspace and compare its final val loss",
        description="Rebuild RUN_ID from its records (resolved params, token-file hashes, git commit and diff) in a "
        "temporary workspace, train it again and report the difference in final val loss. Exit code 1 when the "
        "difference exceeds --tolerance (CPU runs reproduce bit for bit; GPU kernels may not).",
    )
    p.add_argument("run_id", help="the MLflow run to rebuild (see `gptlab models` or the MLflow UI)")
    add_config_args(p)
    p.add_argument("--tolerance", type=float, default=1e-6, help="largest accepted |Δ val loss| (default: 1e-6)")
    p.add_argument("--keep", action="store_true", help="keep the temporary workspace and print its path")
    p.set_defaults(func=_reproduce)
    p = sub.add_parser("ui", help="start the MLflow UI over the project's tracking store")
    add_config_args(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=_ui)
    p = sub.add_parser(
        "export-hf", help="write a checkpoint as a self-contained Hugging Face GPT-2 folder (weights + tokenizer)",
        description="Write a gptlab checkpoint as a Hugging Face GPT-2 folder: config.json + model.safetensors "
        "and GPT-2's tokenizer files (vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json) "
        "derived from the BPE tiktoken uses, so transformers (GPT2LMHeadModel, AutoTokenizer) and "
        "lm-evaluation-harness (--model hf --model_args pretrained=OUT) load it offline.")
    p.add_argument("checkpoint", type=Path, nargs="?", default=Path("models/final"),
                   help="gptlab checkpoint directory (default: models/final)")
    p.add_argument("out", type=Path, help="folder to write the weights and tokenizer files into")
    p.set_defaults(func=_export_hf)
    p = sub.add_parser("sweep", help="model sizes × token budgets (the scaling section) as queued DVC experiments",
                       description="`plan` lists the points of the scaling section with their cost, state (done in "
                       "MLflow, queued, running, to run) and `dvc exp run --queue` command; `run` queues those not "
                       "done, starts `dvc queue start -j N` and waits. A killed sweep resumes: `run` again.")
    sweep_sub = p.add_subparsers(dest="sweep_command", required=True, metavar="plan|run")
    q = sweep_sub.add_parser("plan", help="print the points, their cost and state, and the dvc commands")
    add_config_args(q)
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.set_defaults(func=_sweep)
    q = sweep_sub.add_parser("run", help="queue the points not done yet, start the DVC queue, wait for it")
    add_config_args(q)
    q.add_argument("-j", "--jobs", type=int, default=None, help="queue workers (default: scaling.jobs)")
    q.add_argument("--no-wait", action="store_true", help="return once the queue is started")
    q.set_defaults(func=_sweep)
    p = sub.add_parser("seed-tokenizer", help="put GPT-2's BPE file into tiktoken's cache (offline machines): "
                       "TIKTOKEN_CACHE_DIR, else .cache/tiktoken here, where every gptlab entry point looks")
    p.add_argument("source", type=Path, help="a gpt2.tiktoken / r50k_base.tiktoken file, or the openai-whisper sdist")
    p.set_defaults(func=_seed_tokenizer)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prepare_environment(getattr(args, "params", Path("params.yaml")).parent)
    configure_logging(args.verbose)
    return run_guarded(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
