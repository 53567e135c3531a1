"""``gptlab reproduce RUN_ID``: rebuild a training run from its records in a temporary workspace and compare.

What a training run records (``gptlab.tracking.runs.training_run``) and what this module does with each:

- ``provenance/config.yaml``, the resolved configuration → the workspace's ``params.yaml`` (with an empty
  profile overlay, since the profile is already applied), plus any ``-S`` given to ``gptlab reproduce``;
- ``provenance/tokens_meta.json``, every token shard's sha256 → the same token files, taken from the project's
  ``data/tokens``, else from the DVC cache (the run's ``dvc.tokenize:data/tokens`` hash), else rebuilt by the
  download and tokenize stages from the recorded settings; refused unless every shard's hash matches;
- the code: this checkout when its fingerprint (``gptlab.code_sha256``) matches the run's, else the run's
  git commit (``git archive``) with its uncommitted changes (``provenance/git.diff``) applied, checked
  against the same fingerprint;
- the last ``val/loss`` metric → compared with the rebuilt run's.

The rebuilt run trains through ``python -m gptlab train`` in the workspace, against a throwaway MLflow store
there, so the project's runs and registry are untouched (the original run gets ``gptlab.reproduce.*`` tags).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from gptlab.errors import GptlabError
from gptlab.fileio import read_json
from gptlab.pipeline.config import load_config
from gptlab.settings import SECTIONS
from gptlab.tracking.provenance import CONFIG_FILE, DIFF_FILE, TOKENS_META_FILE, code_fingerprint
from gptlab.tracking.runs import fetch_run, set_run_tags
from gptlab.tracking.store import Store

log = logging.getLogger(__name__)


class ReproduceError(GptlabError, RuntimeError):
    """A run that cannot be rebuilt from its records; the message says what is missing and how to fix it."""


@dataclass(frozen=True)
class Reproduction:
    run_id: str
    recorded_val_loss: float
    reproduced_val_loss: float
    delta: float
    tolerance: float
    matches: bool
    weights_identical: bool | None
    code: str
    data: str
    overrides: list[str]
    seconds: float
    workspace: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _shards(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """The identity of a tokenization: every shard's name and payload sha256."""
    return sorted((s["name"], s["sha256"]) for s in meta["shards"])


def _materialize(files: list[tuple[Path, str]], dst: Path) -> None:
    """Hard-link (or copy) ``(source, relative path)`` pairs under ``dst``: token shards are never written to."""
    for src, rel in files:
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, target)
        except OSError:
            shutil.copy2(src, target)


def _from_project(tokens: Path, want: list[tuple[str, str]], dst: Path) -> bool:
    if not (tokens / "meta.json").is_file() or _shards(read_json(tokens / "meta.json")) != want:
        return False
    _materialize([(p, p.name) for p in sorted(tokens.iterdir()) if p.is_file()], dst)
    return True


def _from_dvc_cache(root: Path, dir_md5: str | None, want: list[tuple[str, str]], dst: Path) -> bool:
    """DVC 3 keeps a directory as a ``<md5>.dir`` listing of ``{md5, relpath}`` under ``.dvc/cache/files/md5``."""
    if not dir_md5 or not dir_md5.endswith(".dir"):
        return False
    cache = root / ".dvc" / "cache" / "files" / "md5"
    listing = cache / dir_md5[:2] / dir_md5[2:]
    if not listing.is_file():
        return False
    entries = json.loads(listing.read_text())
    files = [(cache / e["md5"][:2] / e["md5"][2:], e["relpath"]) for e in entries]
    meta = next((src for src, rel in files if rel == "meta.json"), None)
    if meta is None or not all(src.is_file() for src, _ in files) or _shards(read_json(meta)) != want:
        return False
    _materialize(files, dst)
    return True


def _subprocess_env(workspace: Path, code_src: Path | None) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workspace / 'mlflow.db'}"}
    env.pop("MLFLOW_REGISTRY_URI", None)
    if code_src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(code_src), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def _run_stage(stage: str, workspace: Path, overrides: list[str], code_src: Path | None) -> None:
    cmd = [sys.executable, "-m", "gptlab", stage, "--params", str(workspace / "params.yaml")]
    for item in overrides:
        cmd += ["-S", item]
    result = subprocess.run(cmd, cwd=workspace, env=_subprocess_env(workspace, code_src), capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise ReproduceError(f"`gptlab {stage}` failed in the workspace {workspace} (exit {result.returncode}):\n{tail}")


def _prepare_code(record_tags: dict[str, str], provenance: Path, root: Path, workspace: Path) -> tuple[Path | None, str]:
    """Where the rebuilt run's gptlab comes from: None (this checkout) or an exported ``src`` folder."""
    recorded = record_tags.get("gptlab.code_sha256")
    here = code_fingerprint()
    if recorded is None:
        log.warning("the run recorded no code fingerprint: rebuilding it with this checkout's code")
        return None, "this checkout (the run recorded no code fingerprint)"
    if recorded == here:
        return None, f"this checkout (code fingerprint {here[:12]}… matches the run's)"
    commit = record_tags.get("mlflow.source.git.commit", "unknown")
    dirty = record_tags.get("gptlab.git_dirty") == "true"
    fix = (f"check out commit {commit[:12]} (with the run's provenance/git.diff applied if it was dirty) and run "
           f"`gptlab reproduce` there")
    if commit == "unknown":
        raise ReproduceError(f"the run was trained with other code (fingerprint {recorded[:12]}…, this checkout "
                             f"{here[:12]}…) and recorded no git commit: {fix}")
    exists = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=root, capture_output=True)
    if exists.returncode != 0:
        raise ReproduceError(f"the run's code is git commit {commit[:12]}, which is not in {root.resolve()}: "
                             f"`git fetch` it, or {fix}")
    code = workspace / "code"
    code.mkdir()
    archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=root, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(code)], input=archive.stdout, check=True)
    how = f"git commit {commit[:12]}"
    if dirty:
        diff = provenance / DIFF_FILE
        if not diff.is_file():
            raise ReproduceError(f"the run's checkout was dirty but it kept no {DIFF_FILE}: {fix}")
        applied = subprocess.run(["git", "apply", "--whitespace=nowarn", str(diff)], cwd=code, capture_output=True,
                                 text=True)
        if applied.returncode != 0:
            raise ReproduceError(f"the run's {DIFF_FILE} does not apply to commit {commit[:12]}: {applied.stderr.strip()}")
        how += f" + the run's {DIFF_FILE}"
    prefix = subprocess.run(["git", "rev-parse", "--show-prefix"], cwd=root, capture_output=True, text=True).stdout
    src = code / prefix.strip() / "src"  # the project may sit in a subfolder of its git repository
    rebuilt = code_fingerprint(src / "gptlab")
    if rebuilt != recorded:
        raise ReproduceError(f"{how} does not give the run's code (fingerprint {rebuilt[:12]}…, recorded "
                             f"{recorded[:12]}…): uncommitted files that git does not track? {fix}")
    return src, f"{how} (code fingerprint {recorded[:12]}… matches)"


def _prepare_data(record_tags: dict[str, str], provenance: Path, root: Path, workspace: Path, overrides: list[str],
                  code_src: Path | None) -> str:
    meta_file = provenance / TOKENS_META_FILE
    if not meta_file.is_file():
        raise ReproduceError(f"the run kept no provenance/{TOKENS_META_FILE}: its token files cannot be identified")
    want = _shards(read_json(meta_file))
    dst = workspace / "data" / "tokens"
    project_tokens = root / "data" / "tokens"
    if _from_project(project_tokens, want, dst):
        return f"{project_tokens} (every shard's sha256 matches the run's)"
    dir_md5 = record_tags.get("dvc.tokenize:data/tokens")
    if _from_dvc_cache(root, dir_md5, want, dst):
        return f"the DVC cache ({dir_md5}; every shard's sha256 matches the run's)"
    shutil.rmtree(dst, ignore_errors=True)
    log.info("reproduce: the run's token files are neither in %s nor in the DVC cache; rebuilding them", project_tokens)
    for stage in ("download", "tokenize"):
        _run_stage(stage, workspace, overrides, code_src)
    got = _shards(read_json(dst / "meta.json"))
    if got != want:
        raise ReproduceError(
            "the download and tokenize stages, run from the run's recorded settings, give different token files "
            f"({len(got)} shards, first {got[0][1][:12]}…; the run had {len(want)}, first {want[0][1][:12]}…): "
            "the source data changed since. Restore the run's data with `dvc checkout` / `dvc pull` at the "
            "commit that produced it, then re-run"
        )
    return "rebuilt by the download and tokenize stages from the recorded settings (every shard's sha256 matches)"


def _write_params(provenance: Path, workspace: Path, root: Path) -> str:
    config_file = provenance / CONFIG_FILE
    if not config_file.is_file():
        raise ReproduceError(f"the run kept no provenance/{CONFIG_FILE} (trained by an older gptlab): its resolved "
                             "params cannot be rebuilt exactly")
    tree = yaml.safe_load(config_file.read_text())
    profile = tree["profile"]
    source = tree["data"]["source"]
    if source.startswith("local:") and not Path(source.removeprefix("local:")).is_absolute():
        # A local corpus is named relative to the project; the stages run in the workspace.
        tree["data"]["source"] = f"local:{(root / source.removeprefix('local:')).resolve()}"
    (workspace / "profiles").mkdir()
    # The recorded config already has its profile applied: an empty overlay of the same name keeps the name.
    (workspace / "profiles" / f"{profile}.yaml").write_text(yaml.safe_dump({s: {} for s in SECTIONS}))
    (workspace / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    return profile


def reproduce(run_id: str, *, root: str | Path = ".", overrides: list[str] | tuple[str, ...] = (),
              tolerance: float = 1e-6, keep: bool = False) -> Reproduction:
    """Rebuild ``run_id`` in a temporary workspace, train it, and compare the final val loss with the record."""
    root = Path(root)
    store = Store.at(root)
    overrides = list(overrides)
    start = time.perf_counter()
    workspace = Path(tempfile.mkdtemp(prefix=f"gptlab-reproduce-{run_id[:8]}-"))
    try:
        record = fetch_run(store, run_id, workspace / "records")
        if record.final_val_loss is None:
            raise ReproduceError(f"run {run_id} has no val/loss metric: it did not finish training")
        _write_params(record.provenance, workspace, root)
        load_config(workspace / "params.yaml", overrides)  # every problem with -S, before any work
        code_src, code = _prepare_code(record.tags, record.provenance, root, workspace)
        data = _prepare_data(record.tags, record.provenance, root, workspace, overrides, code_src)
        log.info("reproduce %s: code from %s; data from %s", run_id, code, data)
        _run_stage("train", workspace, overrides, code_src)
        summary = read_json(workspace / "metrics" / "train.json")
        reproduced = float(summary["val_loss_estimate"])
        weights = read_json(workspace / "models" / "final" / "meta.json")["weights_sha256"]
        recorded_weights = record.tags.get("gptlab.weights_sha256")
        delta = reproduced - record.final_val_loss
        result = Reproduction(
            run_id=run_id, recorded_val_loss=record.final_val_loss, reproduced_val_loss=reproduced, delta=delta,
            tolerance=tolerance, matches=abs(delta) <= tolerance,
            weights_identical=(weights == recorded_weights) if recorded_weights else None,
            code=code, data=data, overrides=overrides, seconds=round(time.perf_counter() - start, 1),
            workspace=str(workspace) if keep else None,
        )
        set_run_tags(store, run_id, {
            "gptlab.reproduce.delta_val_loss": f"{delta:.6g}",
            "gptlab.reproduce.weights_identical": str(result.weights_identical).lower(),
            "gptlab.reproduce.at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        return result
    finally:
        if not keep:
            shutil.rmtree(workspace, ignore_errors=True)
