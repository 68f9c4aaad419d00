"""The replay buffer that lets a GPU trainer reuse rendered batches (styleclip.toyfaces.replay)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from styleclip.toyfaces.replay import ReplayBuffer, replayed


def _numbered_batches(start: int, batch: int = 4):
    """Render index r -> (ids [B] int64, values [B, 2] float32), each row tagged with (r, row)."""
    for r in itertools.count(start):
        ids = np.arange(batch) + 100 * r
        yield ids, np.stack([ids, ids * 2], 1).astype(np.float32)


def test_reuse_one_passes_every_rendered_batch_through_unchanged():
    stream = replayed(_numbered_batches(5), reuse=1, batch=4, seed=0, start_step=5, device="cpu")
    for r in range(5, 9):
        ids, values = next(stream)
        assert ids.tolist() == [100 * r + i for i in range(4)]
        assert torch.equal(values[:, 1], values[:, 0] * 2)


def test_reuse_renders_one_batch_per_reuse_steps_and_draws_only_buffered_rows():
    pulled = []

    def counting(start):
        for batch in _numbered_batches(start):
            pulled.append(int(batch[0][0]) // 100)
            yield batch

    stream = replayed(counting(0), reuse=3, batch=4, seed=1, start_step=0, device="cpu")
    seen = set()
    for step in range(12):
        ids, values = next(stream)
        assert len(pulled) == step // 3 + 1  # one render per 3 steps
        assert ids.shape == (4,) and len(set(ids.tolist())) == 4  # no row twice in a batch
        assert set(ids.tolist()) <= {100 * r + i for r in pulled for i in range(4)}
        assert torch.equal(values[:, 1], values[:, 0] * 2)  # rows stay whole across the columns
        seen |= set(ids.tolist())
    assert len(seen) > 4  # batches mix rows of different renders


def test_replayed_draws_are_a_function_of_seed_and_step():
    def run(seed):
        stream = replayed(_numbered_batches(0), reuse=2, batch=4, seed=seed, start_step=0, device="cpu")
        return [next(stream)[0].tolist() for _ in range(8)]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_buffer_keeps_only_the_last_capacity_batches():
    buffer = ReplayBuffer(capacity=2, device="cpu")
    batches = _numbered_batches(0, batch=3)
    for _ in range(5):
        buffer.add(next(batches))
    assert len(buffer) == 6
    ids = buffer.draw(6, seed=0, step=0)[0]
    assert sorted(ids.tolist()) == [300, 301, 302, 400, 401, 402]
    assert buffer.latest()[0].tolist() == [400, 401, 402]


def test_buffer_refuses_an_empty_draw_and_a_zero_capacity():
    with pytest.raises(RuntimeError, match="empty"):
        ReplayBuffer(1, "cpu").draw(1, 0, 0)
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(0, "cpu")
