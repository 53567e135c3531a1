"""What tracking costs the training loop: MlflowTracker.log_metrics against the step it is called from.

Every call writes its record to the run's outbox on disk, then returns; a background thread sends. So a call
should cost microseconds whether the tracking server is up (sqlite store) or down (a closed loopback port),
against a reference measured in the same run: one optimizer step of the demo model on this CPU.

    python benchmarks/bench_tracking.py
"""

from __future__ import annotations

import logging
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")

import torch  # noqa: E402

from gptlab.core.model import GPT  # noqa: E402
from gptlab.pipeline.commandline import prepare_environment  # noqa: E402
from gptlab.settings import ModelConfig  # noqa: E402
from gptlab.tracking.store import Store  # noqa: E402
from gptlab.tracking.tracker import Tracker  # noqa: E402
from pinned import describe  # noqa: E402

CALLS = 2000
RECORD = {"train/loss": 3.2, "lr": 6e-4, "tokens_seen": 1.0e6, "tokens_per_sec": 5.0e4}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket closes


def _per_call_us(tracker: Tracker) -> tuple[float, float]:
    times = []
    for step in range(CALLS):
        start = time.perf_counter()
        tracker.log_metrics(RECORD, step=step)
        times.append(time.perf_counter() - start)
    times.sort()
    return statistics.median(times) * 1e6, times[int(0.99 * len(times))] * 1e6


def _step_ms() -> tuple[float, GPT]:
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=4, n_embd=128, block_size=128, vocab_size=50304, dropout=0.0,
                            bias=False))
    opt = model.configure_optimizer(lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), device_type="cpu")
    x = torch.randint(0, 50257, (8, 128))
    times = []
    for _ in range(6):
        start = time.perf_counter()
        model(x, x).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) * 1e3, model


def main() -> None:
    prepare_environment(Path(__file__).resolve().parents[1])  # the seeded BPE, telemetry off: as under make
    logging.disable(logging.WARNING)  # the "unreachable" warning is expected below
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = Store.at(root)
        up = Tracker.start(store, experiment="bench", tags={}, flush_timeout=60)
        rows.append(("server up (sqlite)", *_per_call_us(up)))
        start = time.perf_counter()
        left = up.close().kept
        delivered_s = time.perf_counter() - start
        assert left == 0 and len(store.client().get_metric_history(up.run_id, "train/loss")) == CALLS

        down = Tracker.attach(Store.at(root, uri=f"http://127.0.0.1:{_closed_port()}"), "no-server-run",
                              flush_timeout=0)
        rows.append(("server down (closed port)", *_per_call_us(down)))
        kept = down.close().kept
    step, model = _step_ms()
    print(f"Tracker.log_metrics, {CALLS} calls of {len(RECORD)} metrics; reference: one optimizer step of "
          f"8 × {model.config.block_size} tokens on this CPU = {step:.1f} ms")
    print(f"reference ran: {describe(model, device=torch.device('cpu'), dtype=torch.float32, compiled=False)}")
    print(f"| {'case':<27} | median µs/call | p99 µs/call | share of a step |")
    print(f"|{'-' * 29}|{'-' * 16}|{'-' * 13}|{'-' * 17}|")
    for name, median, p99 in rows:
        print(f"| {name:<27} | {median:14.1f} | {p99:11.1f} | {median / (step * 1e3):15.4%} |")
    print(f"server up: all {CALLS} calls delivered {delivered_s:.2f} s after close(); "
          f"server down: {kept} record(s) kept in the outbox, none lost")


if __name__ == "__main__":
    main()
