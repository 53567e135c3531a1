"""Helpers for tests that start real servers on loopback (MLflow, model serving, Prefect)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, proc: subprocess.Popen, *, timeout: float = 180, log: str = "") -> None:
    """Return once ``url`` answers; fail with ``log`` (or the process's output) if ``proc`` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                output = log or (proc.stdout.read() if proc.stdout and proc.poll() is not None else "")
                raise AssertionError(f"{url} did not come up (exit code {proc.poll()}):\n{output}") from None
            time.sleep(0.5)


class MlflowServer:
    """A real `mlflow server` on loopback (sqlite backend, proxied artifacts) that a test can kill and restart."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"],
            stdout=open(self.root / "server.log", "a"), stderr=subprocess.STDOUT, start_new_session=True,  # noqa: SIM115
        )
        try:
            wait_for_http(f"{self.uri}/health", self.proc)
        except AssertionError:
            raise AssertionError((self.root / "server.log").read_text()) from None

    def kill(self) -> None:
        """SIGKILL the server and its workers (a crash, not a shutdown), by the process group we started."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
