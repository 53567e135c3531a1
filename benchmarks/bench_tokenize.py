"""Tokenize-stage throughput and peak memory at two corpus sizes, against raw tiktoken in the same run.

    python benchmarks/bench_tokenize.py                       # ../shared/data/tinyshakespeare.txt
    python benchmarks/bench_tokenize.py any.txt --sizes 10 100 --workers 2

The corpus is a real text split into ~4.7 KB documents (OpenWebText's mean: ~38 GB / 8.0M documents),
repeated until it reaches each size, stored by the download stage as ``data/raw`` would be. Each method
runs in its own process, so its peak RSS is its own:

- **gptlab**: ``gptlab.data.tokenize.tokenize`` — reads the raw parquet, splits, encodes, writes
  shards with hashes, unigram counts and meta.json;
- **raw tiktoken**: ``encode_ordinary_batch`` over the same documents, already in memory, writing nothing
  (the ceiling for anything built on tiktoken);
- **nanoGPT method**: nanoGPT's ``prepare.py`` recipe (``datasets`` ``train_test_split`` + ``map`` with
  ``num_proc`` + one concatenated memmap per split), written here from its description.

Marginal throughput ``(tokens_big - tokens_small) / (seconds_big - seconds_small)`` cancels start-up
cost. Goals (issue #3, 2 cores): gptlab ≥ 0.9× raw tiktoken's marginal throughput, and peak RSS at the
big corpus within 10 % of the small one. Not part of ``make test``: run ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from gptlab.pipeline.commandline import prepare_environment

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TEXT = REPO / ".." / "shared" / "data" / "tinyshakespeare.txt"
DOC_CHARS = 4_700

# The child's own peak RSS since exec (VmHWM). Not the rusage of the child: that counts the benchmark's
# pages the child shared between fork and exec.
PEAK = """
print(json.dumps({"rss_mb": next(int(line.split()[1]) for line in open("/proc/self/status")
                                 if line.startswith("VmHWM")) / 1024}))
"""

GPTLAB = """
import json, sys, time
from gptlab.settings import TokenizeConfig
from gptlab.data.tokenize import tokenize
raw, out, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = TokenizeConfig(tokenizer="gpt2", val_fraction=0.0005, split_seed=2357, shard_tokens=100_000_000,
                     num_workers=workers)
start = time.perf_counter()
result = tokenize(cfg, raw, out)
print(json.dumps({"seconds": time.perf_counter() - start, "tokens": result.train_tokens + result.val_tokens}))
""" + PEAK

RAW = """
import json, sys, time
from gptlab.data.download import iter_raw
from gptlab.data.tokenizer import get_encoding
enc = get_encoding("gpt2")
docs = [d for batch in iter_raw(sys.argv[1]) for d in batch]
start = time.perf_counter()
ids = enc.encode_ordinary_batch(docs)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "tokens": sum(map(len, ids)) + len(docs)}))
""" + PEAK

# nanoGPT's data/openwebtext/prepare.py recipe: map() with num_proc, then each split into one memmap.
NANOGPT = """
import json, os, sys, time
import numpy as np
import datasets
from gptlab.data.tokenizer import EOT, get_encoding
datasets.disable_progress_bars()
raw, out, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
enc = get_encoding("gpt2")

def process(example):
    ids = enc.encode_ordinary(example["text"])
    ids.append(EOT)
    return {"ids": ids, "len": len(ids)}

start = time.perf_counter()
files = sorted(os.path.join(raw, f) for f in os.listdir(raw) if f.endswith(".parquet"))
ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=os.path.join(out, "cache"))
split = ds.train_test_split(test_size=0.0005, seed=2357, shuffle=True)
tokens = 0
for name, part in (("train", split["train"]), ("val", split["test"])):
    part = part.map(process, remove_columns=["row", "text"], num_proc=workers)
    length = int(np.sum(part["len"], dtype=np.uint64))
    arr = np.memmap(os.path.join(out, f"{name}.bin"), dtype=np.uint16, mode="w+", shape=(length,))
    index = 0
    shards = min(1024, len(part))
    for k in range(shards):
        batch = part.shard(num_shards=shards, index=k, contiguous=True).with_format("numpy")
        chunk = np.concatenate(batch["ids"])
        arr[index : index + len(chunk)] = chunk
        index += len(chunk)
    arr.flush()
    tokens += length
print(json.dumps({"seconds": time.perf_counter() - start, "tokens": tokens}))
""" + PEAK


def documents(text: str) -> list[str]:
    """Paragraphs of ``text`` gathered into documents of about DOC_CHARS characters."""
    docs, current = [], ""
    for paragraph in text.split("\n\n"):
        current = f"{current}\n\n{paragraph}" if current else paragraph
        if len(current) >= DOC_CHARS:
            docs.append(current)
            current = ""
    return docs + ([current] if current else [])


def build_corpus(docs: list[str], megabytes: int, root: Path) -> Path:
    """``root/raw``: the download stage's output for ``docs`` repeated up to ``megabytes`` MB of text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gptlab.data.download import download
    from gptlab.settings import DataConfig

    target, corpus, chars = megabytes * 1_000_000, [], 0
    while chars < target:
        for doc in docs:
            corpus.append(doc[: target - chars])
            chars += len(corpus[-1])
            if chars >= target:
                break
    pq.write_table(pa.table({"text": corpus}), root / "corpus.parquet")
    cfg = DataConfig(source=f"local:{root / 'corpus.parquet'}", text_field="text", max_docs=None,
                     expected_docs=len(corpus), max_doc_chars=10**8, num_proc=1)
    download(cfg, root / "raw")
    (root / "corpus.parquet").unlink()
    return root / "raw"


def run(code: str, *args: str) -> dict[str, float]:
    """Run ``code`` in a fresh interpreter; its JSON results (seconds, tokens, peak RSS in MB)."""
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"benchmark child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, float] = {}
    for line in done.stdout.strip().splitlines()[-2:]:
        result |= json.loads(line)
    return result


def main() -> None:
    prepare_environment(REPO)  # the seeded BPE, telemetry off: as under make
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("text", nargs="?", type=Path, default=DEFAULT_TEXT, help="any UTF-8 text file")
    parser.add_argument("--sizes", nargs=2, type=int, default=[10, 100], metavar=("SMALL_MB", "BIG_MB"))
    parser.add_argument("--workers", type=int, default=None, help="threads / processes (default: every core)")
    parser.add_argument("--skip-nanogpt", action="store_true", help="leave out the nanoGPT recipe (the slowest)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method and size; the fastest counts "
                        "(default 3: a shared machine adds noise, never speed)")
    args = parser.parse_args()
    if not args.text.is_file():
        raise SystemExit(f"{args.text} does not exist: pass a text file, e.g. "
                         "`python benchmarks/bench_tokenize.py /path/to/book.txt`")
    from gptlab.data.tokenize import default_workers
    from gptlab.data.tokenizer import get_encoding

    get_encoding("gpt2")  # fail early, with the fix, when the BPE is not available
    workers = args.workers or default_workers()
    docs = documents(args.text.read_text(encoding="utf-8"))
    methods = {"gptlab tokenize": GPTLAB, "raw encode_ordinary_batch": RAW}
    if not args.skip_nanogpt:
        methods["nanoGPT prepare.py recipe"] = NANOGPT
    load_before = os.getloadavg()
    results: dict[str, dict[int, dict[str, float]]] = {name: {} for name in methods}
    with tempfile.TemporaryDirectory(prefix="bench_tokenize.") as tmp:
        for size in args.sizes:
            root = Path(tmp) / f"{size}mb"
            root.mkdir()
            raw = build_corpus(docs, size, root)
            for attempt in range(args.repeat):  # interleaved, so every method sees the same machine load
                for name, code in methods.items():
                    out = root / f"{name.split()[0]}-{attempt}"
                    r = run(code, str(raw), str(out), str(workers))
                    best = results[name].get(size)
                    if best is None or r["seconds"] < best["seconds"]:
                        results[name][size] = r | {"rss_mb": max(r["rss_mb"], best["rss_mb"] if best else 0)}
                    elif r["rss_mb"] > best["rss_mb"]:
                        best["rss_mb"] = r["rss_mb"]
                    print(f"  {name:<27} {size:>4} MB: {r['seconds']:7.2f} s {r['rss_mb']:6.0f} MB", file=sys.stderr)
                    shutil.rmtree(out, ignore_errors=True)
    load_after = os.getloadavg()

    small, big = args.sizes
    tokens = {name: (r[small]["tokens"], r[big]["tokens"]) for name, r in results.items()}
    if len(set(tokens.values())) != 1:
        raise SystemExit(f"the methods disagree on the token count: {tokens}")

    def marginal(name: str) -> float:
        r = results[name]
        return (r[big]["tokens"] - r[small]["tokens"]) / (r[big]["seconds"] - r[small]["seconds"])

    reference = marginal("raw encode_ordinary_batch")
    print(f"\nTokenize benchmark: {args.text.name} in ~{DOC_CHARS / 1000:.1f} KB documents, "
          f"{tokens['gptlab tokenize'][0]:,} / {tokens['gptlab tokenize'][1]:,} tokens at {small} / {big} MB, "
          f"{workers} worker(s) on {os.cpu_count()} CPU(s); load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after\n")
    header = (f"| method | {small} MB s | {big} MB s | marginal Mtok/s | × raw tiktoken | "
              f"peak RSS {small} MB | peak RSS {big} MB | RSS growth |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name in methods:
        r = results[name]
        print(f"| {name} | {r[small]['seconds']:.2f} | {r[big]['seconds']:.2f} | {marginal(name) / 1e6:.2f} | "
              f"{marginal(name) / reference:.2f}× | {r[small]['rss_mb']:.0f} MB | {r[big]['rss_mb']:.0f} MB | "
              f"{r[big]['rss_mb'] / r[small]['rss_mb']:.2f}× |")
    print("\nGoals on 2 cores: gptlab ≥ 0.90× raw tiktoken, RSS growth ≤ 1.10×.")


if __name__ == "__main__":
    sys.exit(main())
