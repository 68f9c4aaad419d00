"""StyleCLIP global directions: text pair → Δt (CLIP) → channel relevance → Δs(beta) → s + alpha·Δs → image.

The math follows the official implementation (styleclip_facts.md §1): Δt is the normalised difference of
template-averaged text embeddings, relevance r = fs3 · Δt (or, where a model opts in, the cosine in a whitened
metric: statistics.WhitenedRelevance), channels with |r| < beta are dropped, the rest are
divided by max|r| and scaled by each channel's std; ToRGB channels never move.

Caching keeps slider moves cheap: Δt and r are cached per text pair, Δs per (pair, beta), and the source's s
per source; a new alpha only costs one multiply-add and one synthesis.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from ..models.clip_model import ClipModel
from ..models.generator import Generator
from .statistics import GlobalStatistics, WhitenedRelevance

__all__ = ["NoChannelsError", "Direction", "EditResult", "GlobalDirections", "text_direction",
           "style_direction", "auto_beta", "beta_for_min_channels", "AUTO_BETA_GRID"]

AUTO_BETA_GRID = tuple(round(0.10 + 0.01 * i, 2) for i in range(20))  # 0.10 … 0.29, as the official GUI
MIN_CHANNELS_SUGGESTED = 10


class NoChannelsError(ValueError):
    """No channel passes the disentanglement threshold; the message suggests a beta that keeps some."""

    def __init__(self, beta: float, suggested_beta: float, max_relevance: float, lowest_beta: float | None = None):
        """lowest_beta: the smallest beta the caller accepts (a slider's minimum); a suggestion below it is not
        offered, the message asks for other words instead."""
        self.beta, self.suggested_beta, self.max_relevance = beta, suggested_beta, max_relevance
        start = (f"No style channel has relevance ≥ beta={beta:.3f} for this text pair (the largest is "
                 f"{max_relevance:.3f}).")
        if lowest_beta is not None and suggested_beta < lowest_beta:
            super().__init__(
                f"{start} Even the lowest beta, {lowest_beta:g}, would move fewer than {MIN_CHANNELS_SUGGESTED} "
                "channels: CLIP sees little difference between the two texts. Describe the change differently.")
        else:
            super().__init__(f"{start} Lower beta to {suggested_beta:.2f} to move at least "
                             f"{MIN_CHANNELS_SUGGESTED} channels, or describe the change differently.")


def text_direction(clip_model: ClipModel, neutral: str, target: str) -> tuple[torch.Tensor, float]:
    """Δt = normalise(T(target) − T(neutral)), T = template-averaged text embedding.

    Returns:
        (Δt [D] unit vector, the norm before normalisation: small values mean the texts barely differ).
    """
    if neutral.strip() == target.strip():
        raise ValueError("The neutral and target texts are the same, so there is no direction to follow. "
                         "Describe the change in the target text (e.g. 'face' → 'smiling face').")
    diff = clip_model.encode_text_templates(target) - clip_model.encode_text_templates(neutral)
    norm = float(diff.norm())
    if norm < 1e-6:
        raise ValueError("CLIP sees no difference between the neutral and target texts; rephrase the target.")
    return diff / norm, norm


def beta_for_min_channels(relevance: torch.Tensor, n: int = MIN_CHANNELS_SUGGESTED) -> float:
    """The largest beta (rounded down to 0.01) that keeps at least `n` channels."""
    mags = relevance.abs().sort(descending=True).values
    kth = float(mags[min(n, mags.numel()) - 1])
    return max(np.floor(kth * 100) / 100, 0.0)


def style_direction(relevance: torch.Tensor, beta: float, std_conv: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Δs over the conv channels for a threshold beta.

    Args:
        relevance: [C] relevance r_c of each conv channel (zeros for channels the matrix does not cover).
        beta: disentanglement threshold; channels with |r| < beta are left alone.
        std_conv: [C] per-channel std of s.

    Returns:
        (Δs [C] in s units, number of channels moved). Largest |Δs/std| is exactly 1.

    Raises:
        NoChannelsError: no channel passes beta (never returns NaN).
    """
    keep = relevance.abs() >= beta
    count = int(keep.sum())
    if count == 0:
        raise NoChannelsError(beta, beta_for_min_channels(relevance), float(relevance.abs().max()))
    kept = torch.where(keep, relevance, torch.zeros_like(relevance))
    return kept / kept.abs().max() * std_conv, count


def auto_beta(relevance: torch.Tensor, min_channels: int) -> float:
    """The official GUI's choice: the largest beta in 0.10…0.29 moving more than `min_channels`, else 0.10."""
    mags = relevance.abs()
    best = AUTO_BETA_GRID[0]
    for beta in AUTO_BETA_GRID:
        if int((mags >= beta).sum()) > min_channels:
            best = beta
    return best


@dataclass(frozen=True)
class Direction:
    """A text pair turned into a style direction for one beta."""

    neutral: str
    target: str
    beta: float
    delta_s: torch.Tensor        # [s_dim] in s units (ToRGB part zero)
    num_channels: int
    top_channels: tuple[tuple[str, int, float], ...]  # (layer name, channel in layer, relevance)
    text_norm: float


@dataclass
class EditResult:
    img: torch.Tensor            # [1, 3, R, R]
    s: torch.Tensor              # [1, s_dim] the edited style code
    direction: Direction
    alpha: float
    timings: dict[str, float] = field(default_factory=dict)


class GlobalDirections:
    """The global-direction engine for one generator + CLIP pair and its precomputed statistics.

    relevance_shrinkage: None for the official relevance (the plain cosine fs3 · Δt); a number > 0 for the
    cosine in a whitened metric with that shrinkage (`WhitenedRelevance`), which each model bundle may choose.
    """

    def __init__(self, generator: Generator, clip_model: ClipModel, stats: GlobalStatistics,
                 cache_size: int = 256, relevance_shrinkage: float | None = None):
        stats.check_compatible(generator, clip_model)
        self.generator, self.clip, self.stats = generator, clip_model, stats
        self.relevance_shrinkage = relevance_shrinkage
        self._relevance_of = stats.relevance_of if relevance_shrinkage is None else WhitenedRelevance(
            stats, relevance_shrinkage)
        self._conv_index = stats.conv_index  # [C] positions of conv channels in the flat s vector
        self._names = self._channel_names(generator)
        self._relevance: OrderedDict[tuple[str, str], tuple[torch.Tensor, float]] = OrderedDict()
        self._directions: OrderedDict[tuple[str, str, float], Direction] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @property
    def relevance_metric(self) -> str:
        """'official', or 'whitened (shrinkage X)'."""
        return "official" if self.relevance_shrinkage is None else f"whitened (shrinkage {self.relevance_shrinkage:g})"

    @staticmethod
    def _channel_names(generator: Generator) -> list[tuple[str, int]]:
        return [(layer.name, c) for layer in generator.conv_layers for c in range(layer.dim)]

    def _lru_put(self, cache: OrderedDict, key, value) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > self._cache_size:
            cache.popitem(last=False)

    def relevance(self, neutral: str, target: str) -> tuple[torch.Tensor, float]:
        """[C] relevance of every conv channel to the text pair (cached), and the Δt norm."""
        key = (neutral.strip(), target.strip())
        with self._lock:
            if key in self._relevance:
                self._relevance.move_to_end(key)
                return self._relevance[key]
        dt, norm = text_direction(self.clip, *key)
        r = self._relevance_of(dt.cpu())  # the statistics stay on the CPU: one [C, D] product per text pair
        with self._lock:
            self._lru_put(self._relevance, key, (r, norm))
        return r, norm

    def auto_beta(self, neutral: str, target: str, min_channels: int) -> float:
        return auto_beta(self.relevance(neutral, target)[0], min_channels)

    def direction(self, neutral: str, target: str, beta: float) -> Direction:
        """Δs for the text pair at this beta (cached); raises NoChannelsError when nothing passes beta."""
        beta = round(float(beta), 4)
        key = (neutral.strip(), target.strip(), beta)
        with self._lock:
            if key in self._directions:
                self._directions.move_to_end(key)
                return self._directions[key]
        r, norm = self.relevance(neutral, target)
        delta_conv, count = style_direction(r, beta, self.stats.std_conv)
        delta_s = torch.zeros(self.generator.s_dim)
        delta_s[self._conv_index] = delta_conv
        top = torch.argsort(r.abs(), descending=True)[:count][:20].tolist()
        direction = Direction(key[0], key[1], beta, delta_s, count,
                              tuple((*self._names[i], float(r[i])) for i in top), norm)
        with self._lock:
            self._lru_put(self._directions, key, direction)
        return direction

    @property
    def device(self) -> torch.device:
        """The generator's device: codes are moved there to render."""
        return self.generator.device

    @torch.inference_mode()
    def source_s(self, w_plus: torch.Tensor) -> torch.Tensor:
        """w_plus [1, L, D] (any device) → flat s [1, s_dim] on the generator's device (callers cache it)."""
        return self.generator.s_to_flat(self.generator.w_plus_to_s(w_plus.to(self.device)))

    @torch.inference_mode()
    def render_s(self, s: torch.Tensor) -> torch.Tensor:
        """Flat s [N, s_dim] (any device) → img [N, 3, R, R] on the generator's device."""
        return self.generator.synthesis(self.generator.flat_to_s(s.to(self.device)))

    def edit(self, s: torch.Tensor, neutral: str, target: str, alpha: float, beta: float) -> EditResult:
        """s [1, s_dim] (any device) → the edited image and code (s + alpha·Δs(beta)) on the generator's device.

        Δs itself stays on the CPU (`Direction.delta_s`) and is copied per edit: s_dim floats."""
        t0 = time.perf_counter()
        direction = self.direction(neutral, target, beta)
        t1 = time.perf_counter()
        s = s.to(self.device)
        s_edit = s + alpha * direction.delta_s.to(s)
        img = self.render_s(s_edit)
        t2 = time.perf_counter()
        return EditResult(img, s_edit, direction, alpha, {"direction_s": t1 - t0, "render_s": t2 - t1})
