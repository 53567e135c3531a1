"""An unreachable hub is noticed in one quick probe, not after the hub client's ~25 s of retries per file."""

from __future__ import annotations

import http.server
import socket
import threading

import pytest

from gptlab.hf import hub


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "_answers", {})
    return constants


def test_offline_mode_is_the_reason_without_any_probe():
    assert hub.offline_reason() == "HF_HUB_OFFLINE=1"


def test_an_unreachable_hub_is_reported_by_one_probe(online, monkeypatch: pytest.MonkeyPatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(online, "ENDPOINT", f"http://127.0.0.1:{port}")
    reason = hub.offline_reason()
    assert reason is not None and f"127.0.0.1:{port} is unreachable" in reason
    assert hub.offline_reason() == reason  # asked once per process


def test_a_hub_that_answers_is_usable_even_with_an_error_status(online, monkeypatch: pytest.MonkeyPatch):
    class Refusing(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 - http.server's naming
            self.send_response(403)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(online, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        assert hub.offline_reason() is None
    finally:
        server.shutdown()
