"""benchmarks/gpu_check.py keeps running where GPUs are not: `--smoke` runs the same code at tiny sizes on CPU,
on the imports a bare GPU image has (torch, numpy, safetensors, pyyaml, tiktoken, transformers; no tracking or
pipeline libraries)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import REPO

pytestmark = pytest.mark.slow

# The bare GPU image's packages (issue 12); with what they require, they are all the run may import.
BARE_IMAGE = ("torch", "numpy", "safetensors", "PyYAML", "tiktoken", "transformers")
# Installed here, absent there: none of them may be reachable in the run.
NOT_ON_THE_IMAGE = ("mlflow", "prefect", "dvc", "datasets", "pandas", "pyarrow", "pydantic", "matplotlib")


def bare_site(folder: Path) -> Path:
    """A site-packages holding only the bare image's distributions and their requirements (links to this venv's
    copies): a run with ``python -S`` and this folder on its path cannot import anything else."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    wanted, todo = set(), list(BARE_IMAGE)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in wanted or name in NOT_ON_THE_IMAGE:  # pydantic comes with a requirement of transformers here
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional requirement not installed here
        wanted.add(name)
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    folder.mkdir()
    for name in wanted:
        dist = metadata.distribution(name)
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            source = Path(dist.locate_file(top))
            if source.exists() and not (folder / top).exists() and top not in ("..", "__pycache__"):
                (folder / top).symlink_to(source)
    return folder


def test_gpu_check_smoke_runs_on_a_bare_image_and_writes_every_number(tmp_path):
    site = bare_site(tmp_path / "site")
    assert not any((site / name).exists() for name in NOT_ON_THE_IMAGE) and (site / "torch").exists()
    out = tmp_path / "out"
    # -S: no site-packages but the bare one; the script's own folder comes first, as for any `python script.py`.
    env = {"PYTHONPATH": f"{site}{os.pathsep}{REPO / 'src'}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-S", str(REPO / "benchmarks" / "gpu_check.py"), "--smoke",
                           "--out", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"gpu_check --smoke failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-4000:]}"
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["smoke"] and report["device"]["device"] == "cpu" and not report["errors"]

    train = report["train"]
    assert [(r["shape"], r["compiled"]) for r in train] == [("seed", False), ("seed", True), ("gpt2-124m", False),
                                                            ("gpt2-124m", True)]
    for row in train:
        assert row["tokens_per_sec"] > 0 and row["step_seconds"] > 0 and row["timed_steps"] >= 1
        assert row["tokens_per_step"] == {"seed": 2 * 2 * 32, "gpt2-124m": 2 * 2 * 64}[row["shape"]]
        assert all(0 < loss < 12 for loss in row["losses"])
    assert [r["shape"] for r in report["eval"]] == ["seed", "gpt2-xl"]
    assert all(r["tokens"] > 0 and r["tokens_per_sec"] > 0 for r in report["eval"])
    assert [(r["batch"], r["weights"]) for r in report["generate"]] == [(1, "float32"), (32, "float32"),
                                                                        (1, "bfloat16"), (32, "bfloat16")]
    assert all(r["tokens_per_sec"] > 0 and r["bytes_per_step"] > 0 for r in report["generate"])

    checks = report["checks"]
    assert set(checks) == {"compiled_vs_eager", "resume", "logits"}
    assert all(c["passed"] for c in checks.values()), checks
    assert checks["resume"]["resumed_from"] == 2 and checks["resume"]["identical_weights"]  # exact on CPU

    f = report["forecasts"]
    assert f["seed_training"]["tokens"] == 20_000 * 32 * 2 * 512 and f["seed_training"]["hours"] > 0
    assert set(f["baselines_stage"]["seconds"]) == {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"}
    xl, small = f["baselines_stage"]["seconds"]["gpt2-xl"], f["baselines_stage"]["seconds"]["gpt2"]
    assert xl["1024"] > xl["512"] > 0 and xl["512"] > small["512"]  # more FLOPs per token cost more
    assert f["downstream_tasks"]["total_minutes"] > 0

    table = (out / "gpu_check.md").read_text()
    for header in ("| training |", "| eval forward |", "| generate (KV cache) |", "| check |", "Forecasts"):
        assert header in table
    assert table == done.stdout
