"""How the embedded generator's z encodes a face: the z layout, the face of a z, and its attribute code.

The generator is distilled from the renderer, so every z names one face (`params_of_z`). A discrete attribute
is a small binary tree of threshold decisions, each on its own entry of the pixel-normalised z; a continuous
attribute or nuisance is Phi of one entry. The mapping network's first two layers can be written as sharp
threshold detectors for this layout (`set_threshold_layers`): gradient descent learns a sharp threshold only
slowly, and a blurred threshold renders a blend of two faces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .attributes import ATTRIBUTES
from .renderer import NUISANCES, NUM_PARAMS, FaceParams

# One-hot per discrete attribute, then one value per continuous attribute and per nuisance.
CODE_DIM = sum(len(a.values) if a.kind == "discrete" else 1 for a in ATTRIBUTES) + NUM_PARAMS - len(ATTRIBUTES)


@dataclass(frozen=True)
class _Split:
    """One binary decision of a discrete attribute: z[dim] < threshold picks `left` (value indices), else the
    rest of `values`."""

    dim: int
    threshold: float
    values: tuple[int, ...]
    left: tuple[int, ...]


def _tree_splits(probs: tuple[float, ...], values: tuple[int, ...], next_dim: list[int]) -> list[_Split]:
    """Balanced binary splits of `values` (preorder), each on its own z entry, with thresholds that give every
    value its sampling probability."""
    if len(values) < 2:
        return []
    half = len(values) // 2
    left, right = values[:half], values[half:]
    p_left = sum(probs[i] for i in left) / sum(probs[i] for i in values)
    split = _Split(next_dim[0], float(_normal_ppf(p_left)), values, left)
    next_dim[0] += 1
    return [split] + _tree_splits(probs, left, next_dim) + _tree_splits(probs, right, next_dim)


def _normal_ppf(p: float) -> float:
    """Inverse standard normal CDF by bisection (p in (0, 1)); only used to build the layout once."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if 0.5 * math.erfc(-mid / math.sqrt(2)) < p else (lo, mid)
    return (lo + hi) / 2


def _build_z_layout() -> tuple[dict[str, list[_Split] | int], int]:
    """Which entries of z drive what: a list of splits per discrete attribute, one entry per continuous
    attribute and per nuisance."""
    next_dim, layout = [0], {}
    for attr in ATTRIBUTES:
        if attr.kind == "discrete":
            layout[attr.name] = _tree_splits(attr.probs, tuple(range(len(attr.values))), next_dim)
        else:
            layout[attr.name] = next_dim[0]
            next_dim[0] += 1
    for name in NUISANCES:
        layout[name] = next_dim[0]
        next_dim[0] += 1
    return layout, next_dim[0]


# Why a tree and not the renderer's own params_from_normal (one z entry per attribute, quantised into as many
# bins as values): the mapping network must reproduce the z → face map, and a 10-bin staircase on one input is
# hard for a small leaky-ReLU MLP to learn, while a few single thresholds on separate inputs, combined, are easy.
Z_LAYOUT, Z_DIMS_USED = _build_z_layout()


def params_of_z(z: np.ndarray) -> FaceParams:
    """z: [D] (D >= Z_DIMS_USED) → the face the generator learns to draw for it.

    The mapping network starts with a pixel norm, so the face is read from u = z · sqrt(D) / |z| (still close
    to standard normal per entry), not from the raw z. A discrete attribute walks its binary tree of splits (see
    Z_LAYOUT), each on its own entry of u; a continuous attribute or nuisance is Phi(u_i) on its own entry (mapped
    onto the nuisance's range). Every value keeps the renderer's sampling probability.
    """
    z = np.asarray(z, dtype=np.float64).reshape(-1)
    if z.shape[0] < Z_DIMS_USED:
        raise ValueError(f"params_of_z needs >= {Z_DIMS_USED} entries, got {z.shape[0]}")
    u = z / math.sqrt(float(np.mean(z ** 2)) + 1e-8)
    kwargs: dict[str, str | float] = {}
    for attr in ATTRIBUTES:
        entry = Z_LAYOUT[attr.name]
        if attr.kind == "discrete":
            values = tuple(range(len(attr.values)))
            for split in entry:
                if split.values == values:
                    values = split.left if u[split.dim] < split.threshold else tuple(
                        i for i in split.values if i not in split.left)
            kwargs[attr.name] = attr.values[values[0]]
        else:
            kwargs[attr.name] = _phi(u[entry])
    for name, (lo, hi) in NUISANCES.items():
        kwargs[name] = lo + (hi - lo) * _phi(u[Z_LAYOUT[name]])
    return FaceParams(**kwargs)  # type: ignore[arg-type]


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-float(x) / math.sqrt(2.0))


def attribute_code(params: FaceParams) -> np.ndarray:
    """[CODE_DIM] float32: one-hot discrete attributes, then continuous attributes in [0, 1], then nuisances
    scaled to [0, 1] over their ranges."""
    parts = []
    for attr in ATTRIBUTES:
        value = getattr(params, attr.name)
        if attr.kind == "discrete":
            one_hot = np.zeros(len(attr.values), np.float32)
            one_hot[attr.index(value)] = 1
            parts.append(one_hot)
        else:
            parts.append(np.array([value], np.float32))
    parts.append(np.array([(getattr(params, name) - lo) / (hi - lo) for name, (lo, hi) in NUISANCES.items()],
                          np.float32))
    return np.concatenate(parts)


def code_blocks() -> list[tuple[str, int, int]]:
    """(attribute, offset in the attribute code, number of values) for each discrete attribute."""
    out, offset = [], 0
    for attr in ATTRIBUTES:
        width = len(attr.values) if attr.kind == "discrete" else 1
        if attr.kind == "discrete":
            out.append((attr.name, offset, width))
        offset += width
    return out


def code_alternatives(code: torch.Tensor, offset: int, width: int) -> torch.Tensor:
    """[N, width, CODE_DIM]: the codes [N, CODE_DIM] with the attribute at `offset` set to each of its values."""
    alt = code[:, None, :].repeat(1, width, 1)
    alt[:, :, offset:offset + width] = torch.eye(width, device=code.device)
    return alt


@torch.no_grad()
def set_threshold_layers(mapping, sharpness: float) -> int:
    """Writes the mapping's first two layers (after the pixel norm) as threshold detectors for Z_LAYOUT and
    freezes them; the layers after them are left to learn the rest. Gradient descent sharpens a soft threshold
    only slowly, so the sharp ones are built in.

    Layer 1, per binary split (z entry d, threshold t): lrelu(K(u_d − t)) and lrelu(K(u_d − t) − 1), whose
    difference is a step from 0.2 to 1 of width 1/K; per continuous entry: lrelu(±u_d). Layer 2 turns each
    pair into one bounded feature: the step as about {−0.28, 1.41}, the continuous entry as ±u_d again. Every
    layer multiplies by √2 after its leaky ReLU (StyleGAN2's fused activation). Other units are zero.

    Returns the number of layer-2 features.
    """
    splits = [(split.dim, split.threshold) for entry in Z_LAYOUT.values() if isinstance(entry, list)
              for split in entry]
    passes = [entry for entry in Z_LAYOUT.values() if isinstance(entry, int)]
    first, second = mapping[1], mapping[2]
    width, in_dim = first.weight.shape
    pairs = len(splits) + len(passes)
    if 2 * pairs > width:
        raise ValueError(f"the mapping layers have {width} units; {2 * pairs} needed")
    w1, b1 = torch.zeros(width, in_dim), torch.zeros(width)
    for i, (dim, threshold) in enumerate(splits):
        w1[2 * i, dim] = w1[2 * i + 1, dim] = sharpness
        b1[2 * i], b1[2 * i + 1] = -sharpness * threshold, -sharpness * threshold - 1
    for j, dim in enumerate(passes, start=len(splits)):
        w1[2 * j, dim], w1[2 * j + 1, dim] = 1.0, -1.0
    w2, b2 = torch.zeros(width, width), torch.zeros(width)
    gain, c = math.sqrt(2), 2.5
    for i in range(len(splits)):  # (a − b)/√2 is the step in {0.2, 1}: c·(step − 0.6)
        w2[i, 2 * i], w2[i, 2 * i + 1], b2[i] = c / gain, -c / gain, -0.6 * c
    for j in range(len(splits), pairs):  # (p − n)/(1.2·√2) = u_d, passed on as ±u_d
        row = len(splits) + 2 * (j - len(splits))
        w2[row, 2 * j], w2[row, 2 * j + 1] = 1 / (1.2 * gain), -1 / (1.2 * gain)
        w2[row + 1] = -w2[row]
    for layer, weight, bias in ((first, w1, b1), (second, w2, b2)):
        layer.weight.copy_(weight / layer.scale)  # stored weights are the effective ones / scale
        layer.bias.copy_(bias / layer.lr_mul)
        layer.requires_grad_(False)
    return len(splits) + 2 * len(passes)
