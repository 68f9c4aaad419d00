"""The resumable, cancellable step loop that every per-prompt mapper trainer shares.

A trainer supplies one `step_fn` (sample a batch, compute the loss, update, return the step's record) and the
functions that write and read its checkpoint; this module owns what must behave the same for every kind of mapper:
the cancel check before each step (save, then raise `Cancelled`), periodic checkpoints written atomically, the
previews, the progress and per-step callbacks, and the resume check that refuses a run with other settings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .precompute import Cancelled, ProgressFn

__all__ = ["TrainState", "atomic_save", "check_resumable", "held_out_terms", "run_steps"]


@dataclass
class TrainState:
    """A training run's mutable state: the network, its optimizer, steps done and one record per step."""

    net: nn.Module
    optimizer: torch.optim.Optimizer
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def atomic_save(obj: dict[str, Any], path: Path) -> None:
    """torch.save through a temporary name, so a cancel at any moment never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def check_resumable(path: Path, ckpt: dict[str, Any], train: dict[str, Any], what: str) -> None:
    """Raises ValueError unless `ckpt` holds a training run (optimizer, step) with exactly the settings `train`."""
    if "optimizer" not in ckpt or "step" not in ckpt:
        raise ValueError(
            f"{path} is a finished {what} without training state; it cannot be resumed. Choose another "
            "checkpoint path, or delete the file to train from scratch."
        )
    saved = ckpt.get("train") or {}
    differ = [f"{k}: file {saved.get(k)!r}, now {v!r}" for k, v in train.items() if saved.get(k) != v]
    if differ:
        raise ValueError(
            f"{path} holds a {what} training run with other settings ({'; '.join(differ)}). Use the same "
            "settings to resume it, or another checkpoint path (or delete the file) to start a new run."
        )


def run_steps(
    state: TrainState,
    steps: int,
    step_fn: Callable[[int], dict[str, float]],
    save: Callable[[], None],
    *,
    what: str,
    describe: Callable[[dict[str, float]], str],
    path: Path | None,
    checkpoint_every: int,
    should_stop: Callable[[], bool] | None = None,
    progress: ProgressFn | None = None,
    on_step: Callable[[dict[str, float]], None] | None = None,
    preview_every: int | None = None,
    preview: Callable[[int], None] | None = None,
) -> None:
    """Runs `step_fn(step)` (0-based; it updates the net and returns {"loss", ...}) until `state.step == steps`.

    Each record gets its 1-based "step" and joins `state.history`. `save()` runs every `checkpoint_every` steps,
    on cancel (then `Cancelled` is raised) and at the end; `preview(step)` every `preview_every` steps;
    progress(done, steps, f"training {what} | {describe(record)}") and on_step(record) after each step.
    """
    last_saved = state.step
    while state.step < steps:
        if should_stop is not None and should_stop():
            save()
            where = f"; the checkpoint {path} resumes it" if path is not None else " (no checkpoint path given)"
            raise Cancelled(f"{what} training stopped at step {state.step} of {steps}{where}")
        record = {"step": state.step + 1, **step_fn(state.step)}
        state.step += 1
        state.history.append(record)
        if state.step % checkpoint_every == 0:
            save()
            last_saved = state.step
        if preview_every and preview is not None and state.step % preview_every == 0:
            was_training = state.net.training
            state.net.eval()
            with torch.no_grad():
                preview(state.step)
            state.net.train(was_training)
        if progress is not None:
            progress(state.step, steps, f"training {what} | {describe(record)}")
        if on_step is not None:
            on_step(dict(record))
    if state.step != last_saved or (path is not None and not path.exists()):
        save()


@torch.no_grad()
def held_out_terms(net: nn.Module, terms_of: Callable[[torch.Tensor], dict[str, float]],
                   sample: Callable[[int, int], torch.Tensor], n: int, batch: int) -> dict[str, float]:
    """Means of the objective's terms over `n` held-out sources, the net in eval mode meanwhile.

    Args:
        terms_of: sources [B, ...] → {"loss", ...} batch means.
        sample: (count, start index) → that many sources, the same ones for every run compared.
    """
    was_training = net.training
    net.eval()
    sums: dict[str, float] = {}
    for start in range(0, n, batch):
        sources = sample(min(batch, n - start), start)
        for key, value in terms_of(sources).items():
            sums[key] = sums.get(key, 0.0) + value * sources.shape[0]
    net.train(was_training)
    return {key: value / n for key, value in sums.items()}
