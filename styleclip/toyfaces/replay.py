"""Reuses rendered training samples when the trainer outpaces the renderer.

On a GPU the generator's step is faster than the CPU workers can render fresh faces, so the device waits on the
renders. With `reuse` R > 1 each rendered batch enters a ring buffer on the device and every step draws its batch
from the buffer at random, so each sample is seen about R times while only 1/R of a batch is rendered per step.
The draw is seeded by (seed, step), so an unbroken run is reproducible; a resumed run refills the buffer from
its first new render, so it differs slightly from an unbroken one.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


class ReplayBuffer:
    """A ring buffer of the last `capacity` rendered batches, held on `device`.

    Each batch is a tuple of arrays or tensors whose first dimension is the batch (e.g. z [B, D], image
    [B, H, W, 3] uint8, code [B, C]); `draw` returns a tuple of the same layout with `batch` rows.
    """

    def __init__(self, capacity: int, device: torch.device | str):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1 batch, got {capacity}")
        self.capacity, self.device = capacity, torch.device(device)
        self._slots: list[tuple[torch.Tensor, ...]] = []
        self._next = 0

    def add(self, batch: tuple) -> None:
        tensors = tuple(torch.as_tensor(part).to(self.device) for part in batch)
        if len(self._slots) < self.capacity:
            self._slots.append(tensors)
        else:
            self._slots[self._next] = tensors
        self._next = (self._next + 1) % self.capacity

    def latest(self) -> tuple[torch.Tensor, ...]:
        """The batch added last."""
        return self._slots[(self._next - 1) % len(self._slots)]

    def __len__(self) -> int:
        return sum(slot[0].shape[0] for slot in self._slots)

    def draw(self, batch: int, seed: int, step: int) -> tuple[torch.Tensor, ...]:
        """`batch` rows drawn without replacement from everything buffered, seeded by (seed, step)."""
        if not self._slots:
            raise RuntimeError("the replay buffer is empty: add a batch before drawing")
        parts = [torch.cat(column) for column in zip(*self._slots)]
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        rows = torch.randperm(parts[0].shape[0], generator=gen)[:batch].to(self.device)
        return tuple(part[rows] for part in parts)


def replayed(stream: Iterator[tuple], reuse: int, batch: int, seed: int, start_step: int,
             device: torch.device | str, capacity_factor: int = 4) -> Iterator[tuple[torch.Tensor, ...]]:
    """Training batches for steps start_step, start_step + 1, ..., pulling one rendered batch from `stream`
    every `reuse` steps (`stream` must start at render index start_step // reuse).

    With reuse 1 every step gets the next rendered batch unchanged (moved to `device`), as without replay.
    Otherwise the buffer holds `capacity_factor * reuse` batches, so a sample stays in it for that many steps.
    """
    buffer = ReplayBuffer(1 if reuse == 1 else capacity_factor * reuse, device)
    step = start_step
    while True:
        if step % reuse == 0 or len(buffer) == 0:
            buffer.add(next(stream))
        yield buffer.draw(batch, seed, step) if reuse > 1 else buffer.latest()
        step += 1
