"""Where each stage reads and writes, relative to the project root (the folder of dvc.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gptlab.fileio import state_root


@dataclass(frozen=True)
class Paths:
    root: Path = Path(".")

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def tokens(self) -> Path:
        return self.root / "data" / "tokens"

    @property
    def model(self) -> Path:
        return self.root / "models" / "final"

    @property
    def checkpoints(self) -> Path:
        """Resumable checkpoints, one folder per run (gptlab.core.train.run_key); git-ignored, not a DVC out.
        In the repository a queued experiment came from (see :func:`gptlab.fileio.state_root`), so a killed
        queued run resumes from them when it is queued again."""
        return state_root(self.root) / "models" / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def baselines(self) -> Path:
        return self.root / "baselines"
