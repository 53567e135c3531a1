from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from gptlab.data.loader import RandomWindows, TokenSet, sequential_windows, spread_windows, val_tokens
from gptlab.data.shards import ShardError, read_shard, write_shard


@pytest.fixture
def shards(tmp_path) -> list[Path]:
    """Three shards of different sizes whose token values say where they come from: shard*1000 + position."""
    paths = []
    for index, size in enumerate((300, 50, 1200)):
        paths.append(tmp_path / f"train-{index:05d}.bin")
        write_shard(paths[-1], index * 10_000 + np.arange(size, dtype=np.uint16))
    return paths


def _batches(windows: RandomWindows, n: int) -> list[np.ndarray]:
    return [np.concatenate([x, y[:, -1:]], axis=1) for x, y in (windows.next_numpy() for _ in range(n))]


def test_random_windows_are_contiguous_slices_of_one_shard(shards):
    windows = RandomWindows(shards, block_size=64, batch_size=16, seed=0)
    for x, y in (windows.next_numpy() for _ in range(50)):
        assert x.shape == y.shape == (16, 64) and x.dtype == np.uint16
        np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # y is x shifted by one token
        shard, position = np.divmod(np.concatenate([x, y[:, -1:]], axis=1).astype(np.int64), 10_000)
        assert (shard == shard[:, :1]).all()  # never crosses a shard's end
        assert (np.diff(position, axis=1) == 1).all()


def test_every_window_start_is_equally_likely_across_shards(shards):
    windows = RandomWindows(shards, block_size=64, batch_size=64, seed=1)
    starts = np.concatenate([b[:, 0].astype(np.int64) for b in _batches(windows, 400)])
    shard, position = np.divmod(starts, 10_000)
    # Shard 1 (50 tokens) cannot hold a 65-token window; the others are drawn by their number of starts.
    valid = {0: 300 - 64, 2: 1200 - 64}
    assert set(shard.tolist()) == set(valid)
    share = (shard == 0).mean()
    assert abs(share - valid[0] / sum(valid.values())) < 0.02  # 25,600 draws: ±0.02 is > 7 standard errors
    for s, n in valid.items():
        assert position[shard == s].min() >= 0 and position[shard == s].max() <= n - 1
        assert len(np.unique(position[shard == s])) > 0.9 * n  # the whole range is reached


def test_random_windows_are_seeded_rank_aware_and_resumable(shards):
    def make(seed=7, rank=0):
        return RandomWindows(shards, block_size=32, batch_size=8, seed=seed, rank=rank)

    a, b = _batches(make(), 5), _batches(make(), 5)
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    other_rank = _batches(make(rank=1), 5)
    assert not any(np.array_equal(p, q) for p, q in zip(a, other_rank, strict=True))
    first = make()
    _batches(first, 3)
    state = first.state_dict()
    continued = _batches(first, 4)
    resumed = make(seed=999)  # the state carries the stream, not the seed argument
    resumed.load_state_dict(state)
    assert all(np.array_equal(p, q) for p, q in zip(continued, _batches(resumed, 4), strict=True))


def test_loader_state_from_other_shards_is_refused(shards):
    state = RandomWindows(shards, block_size=32, batch_size=8, seed=0).state_dict()
    with pytest.raises(ValueError, match="the training shards differ .* resume with the same data/tokens"):
        RandomWindows(shards[:2], block_size=32, batch_size=8, seed=0).load_state_dict(state)


def test_drawing_batches_holds_no_files_or_maps_open(shards):
    windows = RandomWindows(shards, block_size=32, batch_size=8, seed=0)
    windows.next_numpy()

    def open_files() -> int:
        maps = Path("/proc/self/maps").read_text().count(str(shards[0].parent))
        return len(os.listdir("/proc/self/fd")) + maps

    before = open_files()
    _batches(windows, 500)
    assert open_files() == before


def test_too_short_shards_are_explained(shards):
    with pytest.raises(ShardError, match=r"no shard .* has more than model.block_size=5000 tokens \(largest: 1200\)"):
        RandomWindows(shards, block_size=5000, batch_size=2, seed=0)
    with pytest.raises(ShardError, match="no token shards"):
        RandomWindows([], block_size=8, batch_size=2, seed=0)


@pytest.mark.parametrize("n, block, batch", [(1000, 64, 4), (1025, 64, 4), (65, 64, 3), (64, 64, 2), (2, 8, 5)])
def test_sequential_windows_predict_every_token_once_in_order(n, block, batch):
    tokens = np.arange(n, dtype=np.int64)
    ys = []
    for x, y in sequential_windows(tokens, block_size=block, batch_size=batch):
        assert x.shape == y.shape and x.shape[0] <= batch and x.shape[1] <= block
        np.testing.assert_array_equal(y, x + 1)  # each row's targets are its inputs' next tokens
        ys.append(y.ravel())
    assert np.concatenate(ys).tolist() == list(range(1, n))  # every token but the first, once, in order


def test_sequential_windows_can_stop_early():
    tokens = np.arange(1000)
    ys = np.concatenate([y.ravel() for _, y in sequential_windows(tokens, block_size=10, batch_size=4, max_tokens=95)])
    assert ys.tolist() == list(range(1, 96))


def test_spread_windows_are_fixed_and_span_the_split():
    tokens = np.arange(10_000)
    x, y = spread_windows(tokens, block_size=100, count=11)
    assert x[0, 0] == 0 and y[-1, -1] == 9_999
    np.testing.assert_array_equal(x, spread_windows(tokens, block_size=100, count=11)[0])
    assert (np.diff(x[:, 0]) > 0).all()


def test_val_tokens_concatenate_val_shards_in_order(tmp_path, bpe_cache):
    from gptlab.data.download import download
    from gptlab.data.tokenize import tokenize
    from gptlab.settings import DataConfig, TokenizeConfig

    download(DataConfig(source="demo", text_field="text", max_docs=None, expected_docs=None, max_doc_chars=10**8,
                        num_proc=1), tmp_path / "raw")
    cfg = TokenizeConfig(tokenizer="gpt2", val_fraction=0.1, split_seed=2357, shard_tokens=3000, num_workers=1)
    tokenize(cfg, tmp_path / "raw", tmp_path / "tokens")
    token_set = TokenSet.open(tmp_path / "tokens", verify=True)
    paths = token_set.paths("val")
    assert len(paths) > 1
    val = val_tokens(token_set)
    assert len(val) == token_set.tokens("val")
    np.testing.assert_array_equal(val, np.concatenate([read_shard(p) for p in paths]))
