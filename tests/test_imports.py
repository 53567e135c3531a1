"""The torch core imports no tracking, orchestration or versioning library (STYLE.md)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CORE = ["gptlab.model", "gptlab.train", "gptlab.evaluate", "gptlab.generate", "gptlab.checkpoint",
        "gptlab.distributed", "gptlab.hardware", "gptlab.data.loader", "gptlab.data.tokenize",
        "gptlab.data.download", "gptlab.config", "gptlab.report", "gptlab.downstream", "gptlab.taskdata",
        "gptlab.comparison", "gptlab.baselines", "gptlab.repetition"]


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_no_mlflow_prefect_or_dvc(module):
    code = (
        f"import sys, {module}; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'mlflow', 'prefect', 'dvc'}); "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"{module} pulls in {out}"


def test_only_flows_import_prefect_and_only_tracking_imports_mlflow():
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src" / "gptlab"
    for path in src.rglob("*.py"):
        text = path.read_text()
        if path.name not in {"tracking.py", "pyfunc_model.py"}:
            assert "import mlflow" not in text and "from mlflow" not in text, path
        assert "import prefect" not in text and "from prefect" not in text, path
