"""Helpers for tests that start real servers on loopback (MLflow, model serving, Prefect)."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request


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
