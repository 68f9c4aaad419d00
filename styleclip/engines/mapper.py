"""StyleCLIP latent mapper: a per-text network M, w_plus_edit = w_plus + 0.1·M(w_plus); training and files.

Architecture (styleclip_facts.md §3): the W+ rows are split into coarse / medium / fine groups; each group has
its own small MLP (a PixelNorm, then 4 equalized-lr linear layers with leaky ReLU) and can be switched off, in
which case its rows are left unchanged. The width is the generator's style_dim and the split follows its
n_latent (see `level_splits`), so the FFHQ generator (18 x 512) and the embedded toyfaces model use the same
code.

Files: `save_mapper` writes our own `{"format", "version", "config", "state_dict", "meta"}`; `load_mapper`
reads that and the official StyleCLIP checkpoints (`{"state_dict": {"mapper.course_mapping.mapping.1.weight",
..., "decoder.*"}, "opts"}`), always with `torch.load(weights_only=True)`. Training checkpoints are our format
plus the optimizer state, step and loss history, so a training checkpoint is also a usable mapper file.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.checkpoints import CheckpointError, load_checkpoint, preview_keys
from ..models.clip_model import ClipModel
from ..models.generator import EqualLinear, Generator
from ..models.identity import IdentityModel
from .clip_losses import directional_loss, text_change_direction
from .precompute import Cancelled, ProgressFn, clip_render_resolution
from .training import TrainState, atomic_save, check_resumable, held_out_terms, run_steps

__all__ = [
    "FORMAT",
    "GROUPS",
    "MAPPER_FILE_EXPECTED",
    "NORM_AXES",
    "RESIDUAL_SCALE",
    "Cancelled",
    "GroupMapper",
    "IdentityLossFn",
    "LevelsMapper",
    "MapperCheckpointError",
    "MapperConfig",
    "PreviewFn",
    "apply_mapper",
    "level_splits",
    "load_mapper",
    "mapper_from_checkpoint",
    "sample_w_plus",
    "save_mapper",
    "train_mapper",
    "validation_objective",
]

FORMAT = "styleclip-studio-mapper"
FORMAT_VERSION = 1
GROUPS = ("coarse", "medium", "fine")
# "layers" is the official behaviour (PixelNorm over dim 1 of [N, k, D], see GroupMapper); "features"
# normalises each row over its D features, as the StyleGAN mapping network does for z.
NORM_AXES = ("layers", "features")
# The official residual step: w_hat = w + 0.1·M(w), in training and inference alike.
RESIDUAL_SCALE = 0.1
_PIXEL_NORM_EPS = 1e-8
# The official module names; "course" is the upstream spelling and must be kept to read its files.
_OFFICIAL_GROUP = {"coarse": "course_mapping", "medium": "medium_mapping", "fine": "fine_mapping"}
_OFFICIAL_FLAG = {"coarse": "no_coarse_mapper", "medium": "no_medium_mapper", "fine": "no_fine_mapper"}
_MAX_LISTED = 6

# (img_edit, img_source) → loss, a scalar or one value per sample (averaged). An `IdentityModel`
# (styleclip.models.identity) is used through its `loss` method, which has this form.
IdentityLossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
PreviewFn = Callable[[int, torch.Tensor, torch.Tensor], None]  # (step, img_source, img_edit)


class MapperCheckpointError(CheckpointError):
    """The file is a checkpoint but not a mapper this generator can use (wrong format, keys or shapes)."""


def level_splits(n_latent: int) -> tuple[int, int]:
    """W+ row indices where medium and fine start: coarse = [0, a), medium = [a, b), fine = [b, n_latent).

    The official split for FFHQ-1024 (18 rows) is 0-4 / 4-8 / 8-18. Row i of W+ feeds the layers at about
    2^(i//2 + 2) px, so these are the 4-8 px, 16-32 px and 64 px-and-up layers of any StyleGAN2 generator; we
    keep the same row indices for every n_latent (capped at n_latent) so that "fine" keeps meaning the colour
    and micro-texture layers. A generator of 32 px or less (n_latent <= 8) therefore has no fine rows and its
    fine group is empty; a 64 px generator (n_latent 10) has two.
    """
    if n_latent < 1:
        raise ValueError(f"n_latent must be >= 1, got {n_latent}")
    return min(4, n_latent), min(8, n_latent)


@dataclass(frozen=True)
class MapperConfig:
    """Everything that fixes a mapper's architecture; stored in our files, inferred for official ones.

    Attributes:
        style_dim: D, the width of w (512 for FFHQ).
        n_latent: L, the number of W+ rows (18 for FFHQ-1024).
        groups: the enabled groups, a subset of ("coarse", "medium", "fine"); disabled groups leave their rows
            unchanged (the official --no_*_mapper flags).
        num_layers: linear layers per group (4 officially).
        lr_mul: the equalized learning-rate multiplier of those layers (0.01 officially).
        norm_axis: "layers" (official: PixelNorm over the rows of a group) or "features" (over each row's D).
    """

    style_dim: int
    n_latent: int
    groups: tuple[str, ...] = GROUPS
    num_layers: int = 4
    lr_mul: float = 0.01
    norm_axis: str = "layers"

    def __post_init__(self) -> None:
        groups = tuple(self.groups)
        unknown = [g for g in groups if g not in GROUPS]
        if unknown:
            raise ValueError(f"unknown mapper group(s) {unknown}; choose from {list(GROUPS)}")
        # Canonical order and no duplicates, so equal configs compare equal.
        object.__setattr__(self, "groups", tuple(g for g in GROUPS if g in groups))
        if self.style_dim < 1 or self.n_latent < 1 or self.num_layers < 1:
            raise ValueError(
                f"style_dim, n_latent and num_layers must be >= 1, got {self.style_dim}, "
                f"{self.n_latent}, {self.num_layers}"
            )
        if not self.lr_mul > 0:
            raise ValueError(f"lr_mul must be > 0, got {self.lr_mul}")
        if self.norm_axis not in NORM_AXES:
            raise ValueError(f"norm_axis must be one of {list(NORM_AXES)}, got {self.norm_axis!r}")

    def ranges(self) -> dict[str, tuple[int, int]]:
        """Every group's W+ row range [start, stop) (empty ranges included)."""
        a, b = level_splits(self.n_latent)
        return {"coarse": (0, a), "medium": (a, b), "fine": (b, self.n_latent)}

    def active_groups(self) -> tuple[str, ...]:
        """Enabled groups that own at least one row (the ones with parameters)."""
        ranges = self.ranges()
        return tuple(g for g in self.groups if ranges[g][1] > ranges[g][0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "style_dim": self.style_dim,
            "n_latent": self.n_latent,
            "groups": list(self.groups),
            "num_layers": self.num_layers,
            "lr_mul": self.lr_mul,
            "norm_axis": self.norm_axis,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MapperConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown mapper config fields {sorted(unknown)}")
        d = dict(d)
        if "groups" in d:
            d["groups"] = tuple(d["groups"])
        return cls(**d)


class GroupMapper(nn.Module):
    """One group's network: PixelNorm, then `num_layers` x EqualLinear(D → D, lr_mul) + leaky ReLU(0.2)·√2.

    Every layer, the last included, has the activation, as officially. The parameters of layer i are
    `layers.{i}.weight` [D, D] (stored as N(0, 1)/lr_mul, scaled by lr_mul/√D at run time) and
    `layers.{i}.bias` [D] (scaled by lr_mul): the generator's own EqualLinear.
    """

    def __init__(self, dim: int, num_layers: int = 4, lr_mul: float = 0.01, norm_axis: str = "layers"):
        super().__init__()
        if norm_axis not in NORM_AXES:
            raise ValueError(f"norm_axis must be one of {list(NORM_AXES)}, got {norm_axis!r}")
        self.norm_axis = norm_axis
        self.layers = nn.ModuleList(
            EqualLinear(dim, dim, lr_mul=lr_mul, activation=True) for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, k, D] (k rows of W+) → [N, k, D]."""
        # The official PixelNorm takes the mean over dim 1, which for [N, k, D] is the row axis: each feature
        # is normalised across the group's rows. Official checkpoints were trained that way, so we keep it to
        # reproduce their outputs. (When all rows are equal, as for sampled w, it reduces the input to
        # sign(w).)
        dim = 1 if self.norm_axis == "layers" else 2
        x = x * torch.rsqrt(x.square().mean(dim=dim, keepdim=True) + _PIXEL_NORM_EPS)
        n, k, d = x.shape
        # EqualLinear's fused activation adds its bias on dim 1; flattened to [N·k, D] that is the feature
        # axis, which is where the official 3-D activation adds it too.
        h = x.reshape(n * k, d)
        for layer in self.layers:
            h = layer(h)
        return h.view(n, k, d)


class LevelsMapper(nn.Module):
    """The official default mapper: one GroupMapper per enabled level group.

    `forward` returns the raw mapper output M(w_plus); use `apply_mapper` for the edit w_plus +
    0.1·strength·M. State-dict keys: `groups.{coarse,medium,fine}.layers.{0..num_layers-1}.{weight,bias}`
    (active groups only).

    Attributes:
        config: the MapperConfig.
        meta: free-form information from the file it was loaded from (text, model, steps, ...); {} otherwise.
    """

    def __init__(self, config: MapperConfig):
        super().__init__()
        self.config = config
        self.meta: dict[str, Any] = {}
        self.groups = nn.ModuleDict(
            {
                name: GroupMapper(config.style_dim, config.num_layers, config.lr_mul, config.norm_axis)
                for name in config.active_groups()
            }
        )

    @classmethod
    def for_generator(
        cls,
        generator: Generator,
        groups: Sequence[str] = GROUPS,
        norm_axis: str = "layers",
        seed: int | None = None,
    ) -> LevelsMapper:
        """A freshly initialised mapper sized for `generator` (D = style_dim, L = n_latent).

        Args:
            seed: seeds the initialisation without touching the global RNG state.
        """
        config = MapperConfig(generator.style_dim, generator.n_latent, tuple(groups), norm_axis=norm_axis)
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            mapper = cls(config)
        return mapper.to(generator.device)

    def forward(self, w_plus: torch.Tensor) -> torch.Tensor:
        """w_plus: [N, L, D] → M(w_plus): [N, L, D]; rows of disabled (or empty) groups are zero."""
        _check_w_plus(w_plus, self.config)
        parts = []
        for name, (start, stop) in self.config.ranges().items():
            if stop == start:
                continue
            rows = w_plus[:, start:stop]  # [N, k, D]
            parts.append(self.groups[name](rows) if name in self.groups else torch.zeros_like(rows))
        return torch.cat(parts, dim=1)

    def extra_repr(self) -> str:
        ranges = self.config.ranges()
        return (
            ", ".join(
                f"{g}: rows {ranges[g][0]}-{ranges[g][1]}" + ("" if g in self.groups else " (off)")
                for g in GROUPS
            )
            + f", norm over {self.config.norm_axis}"
        )


def _check_w_plus(w_plus: torch.Tensor, config: MapperConfig) -> None:
    if (
        not isinstance(w_plus, torch.Tensor)
        or w_plus.ndim != 3
        or tuple(w_plus.shape[1:]) != (config.n_latent, config.style_dim)
    ):
        shape = tuple(w_plus.shape) if isinstance(w_plus, torch.Tensor) else type(w_plus).__name__
        raise ValueError(f"the mapper expects w_plus [N, {config.n_latent}, {config.style_dim}], got {shape}")


def apply_mapper(mapper: LevelsMapper, w_plus: torch.Tensor, strength: float = 1.0,
                 groups: Sequence[str] | None = None) -> torch.Tensor:
    """The mapper edit: w_plus + strength · 0.1 · M(w_plus).

    Args:
        w_plus: [N, L, D] source codes (L, D must match the mapper's config).
        strength: scales the residual; 1 is the trained edit, 0 the source, negative values the opposite.
        groups: apply only these groups' part of the edit (the other rows keep w_plus); None applies all. This
            shows where a trained edit lives (benchmarks/bench_edits.py --groups) without retraining.

    Returns:
        [N, L, D] edited codes; differentiable w.r.t. the mapper (and w_plus) when grad is enabled.
    """
    if not math.isfinite(float(strength)):
        raise ValueError(f"strength must be a finite number, got {strength}")
    delta = mapper(w_plus)
    if groups is not None:
        unknown = sorted(set(groups) - set(GROUPS))
        if unknown:
            raise ValueError(f"unknown mapper groups {unknown}; known: {list(GROUPS)}")
        keep = torch.zeros(delta.shape[1], 1, dtype=delta.dtype, device=delta.device)
        for name, (start, stop) in mapper.config.ranges().items():
            if name in groups:
                keep[start:stop] = 1
        delta = delta * keep
    return w_plus + (RESIDUAL_SCALE * float(strength)) * delta


# ------------------------------------------------------------------------------------------------- files
def _mapper_dict(mapper: LevelsMapper, meta: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "config": mapper.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in mapper.state_dict().items()},
        "meta": dict(meta or {}),
    }


def save_mapper(
    mapper: LevelsMapper, path: str | os.PathLike[str], meta: dict[str, Any] | None = None
) -> None:
    """Write `{"format", "version", "config", "state_dict", "meta"}` (readable by `load_mapper`).

    Args:
        meta: JSON-like values only (str, numbers, bools, None, lists, dicts), e.g. {"text": ..., "model":
            ...}; anything else would not load back under weights_only=True. Defaults to `mapper.meta`.
    """
    atomic_save(_mapper_dict(mapper, mapper.meta if meta is None else meta), Path(path))


def _first(keys, n: int = _MAX_LISTED) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _check_state_dict(
    expected: dict[str, tuple[int, ...]], found: dict[str, Any], source: str, what: str
) -> None:
    """Compares key sets and shapes; raises MapperCheckpointError naming expected vs found."""
    missing = set(expected) - set(found)
    unexpected = set(found) - set(expected)
    problems = []
    if missing:
        problems.append(f"{len(missing)} keys missing ({_first(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
    not_tensors = [k for k in set(expected) & set(found) if not torch.is_tensor(found[k])]
    if not_tensors:
        problems.append(f"not tensors: {_first(not_tensors)}")
    wrong = [
        f"{k}: expected {expected[k]}, found {tuple(found[k].shape)}"
        for k in sorted(set(expected) & set(found))
        if torch.is_tensor(found[k]) and tuple(found[k].shape) != expected[k]
    ]
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches ({'; '.join(wrong[:_MAX_LISTED])})")
    if problems:
        raise MapperCheckpointError(f"{source}: does not match {what}: " + "; ".join(problems))


def _describe(config: MapperConfig) -> str:
    return (
        f"a mapper with groups {list(config.active_groups())} over w_plus [N, {config.n_latent}, "
        f"{config.style_dim}]"
    )


def _check_generator(config: MapperConfig, generator: Generator, source: str) -> None:
    if (config.n_latent, config.style_dim) != (generator.n_latent, generator.style_dim):
        raise MapperCheckpointError(
            f"{source}: the mapper was made for w_plus with {config.n_latent} rows of {config.style_dim} "
            f"values, but this generator ({generator.size} px) has {generator.n_latent} rows of "
            f"{generator.style_dim}; use the generator it was trained with."
        )


def _official_key(key: str) -> str:
    """Our state-dict key → the official file's spelling (groups.coarse.layers.0.weight →
    mapper.course_mapping.mapping.1.weight; index 0 of the official Sequential is the PixelNorm)."""
    group, _, index, param = key.split(".")[1:]
    return f"mapper.{_OFFICIAL_GROUP[group]}.mapping.{int(index) + 1}.{param}"


_OFFICIAL_KEY_RE = re.compile(r"mapper\.(course|medium|fine)_mapping\.mapping\.(\d+)\.(weight|bias)")


def _load_official(ckpt: dict[str, Any], generator: Generator, source: str) -> LevelsMapper:
    state_dict = ckpt["state_dict"]
    opts = ckpt.get("opts") or {}
    if not isinstance(opts, dict):
        opts = {}
    mapper_type = opts.get("mapper_type", "LevelsMapper")
    if any(k.startswith("mapper.mapping.") for k in state_dict):
        mapper_type = "SingleMapper"  # one network over all rows: its keys have no group name
    if mapper_type != "LevelsMapper":
        raise MapperCheckpointError(
            f"{source}: this official mapper is a {mapper_type}; only the default LevelsMapper "
            "(coarse/medium/fine groups) is supported."
        )
    if opts.get("work_in_stylespace"):
        raise MapperCheckpointError(
            f"{source}: this official mapper works in StyleSpace (--work_in_stylespace); only W+ mappers "
            "are supported."
        )
    mapper_keys = {k: v for k, v in state_dict.items() if k.startswith("mapper.")}
    present = {
        name
        for name, official in _OFFICIAL_GROUP.items()
        if any(k.startswith(f"mapper.{official}.") for k in mapper_keys)
    }
    # Official files carry no config: the groups are the modules present (disabled ones are not built), and
    # the flags in opts, when there, must agree.
    for name, flag in _OFFICIAL_FLAG.items():
        if flag in opts and bool(opts[flag]) == (name in present):
            state = "has" if name in present else "lacks"
            raise MapperCheckpointError(
                f"{source}: opts[{flag!r}] is {opts[flag]} but the file {state} the {name} group's weights."
            )
    if not present:
        raise MapperCheckpointError(
            f"{source}: no mapper weights found (expected keys like mapper.course_mapping.mapping.1.weight); "
            f"found {preview_keys(state_dict)}."
        )
    layer_ids = {int(m.group(2)) for k in mapper_keys if (m := _OFFICIAL_KEY_RE.fullmatch(k))}
    num_layers = max(layer_ids) if layer_ids else 4
    # The official MLP width is the decoder's style_dim; read it off the weights so a mismatch reads clearly.
    some_weight = next(
        (v for k, v in mapper_keys.items() if k.endswith(".weight") and torch.is_tensor(v)), None
    )
    dim = int(some_weight.shape[-1]) if some_weight is not None else generator.style_dim
    n_latent = _official_n_latent(state_dict, opts)
    config = MapperConfig(
        dim,
        n_latent if n_latent is not None else generator.n_latent,
        tuple(present),
        num_layers=num_layers,
        norm_axis="layers",
    )
    if dim != generator.style_dim:
        raise MapperCheckpointError(
            f"{source}: the official mapper works on {dim}-dim latents, but this generator's style_dim is "
            f"{generator.style_dim}; use the generator it was trained with (StyleGAN2 FFHQ for the official "
            "ones)."
        )
    _check_generator(config, generator, source)
    mapper = LevelsMapper(config)
    expected = {_official_key(k): tuple(v.shape) for k, v in mapper.state_dict().items()}
    _check_state_dict(
        expected, mapper_keys, source, f"an official StyleCLIP LevelsMapper ({_describe(config)})"
    )
    mapper.load_state_dict({k: mapper_keys[_official_key(k)].float() for k in mapper.state_dict()})
    mapper.meta = {
        "format": "official",
        "text": opts.get("description"),
        "opts": {k: v for k, v in opts.items() if isinstance(v, (str, int, float, bool, type(None)))},
    }
    return mapper


def _official_n_latent(state_dict: dict[str, Any], opts: dict[str, Any]) -> int | None:
    """W+ rows of the generator an official mapper was trained with: from the bundled decoder's ToRGB blocks,
    else from opts["stylegan_size"]; None when neither is there."""
    blocks = {
        m.group(1) for k in state_dict if (m := re.fullmatch(r"decoder\.to_rgbs\.(\d+)\.conv\.weight", k))
    }
    if blocks:
        return 2 * (len(blocks) + 2) - 2  # size 2^(blocks + 2); n_latent = 2·log2(size) - 2
    size = opts.get("stylegan_size")
    if isinstance(size, int) and size >= 4 and size & (size - 1) == 0:
        return 2 * int(math.log2(size)) - 2
    return None


def _load_ours(ckpt: dict[str, Any], generator: Generator, source: str) -> LevelsMapper:
    version = ckpt.get("version")
    if version != FORMAT_VERSION:
        raise MapperCheckpointError(
            f"{source}: mapper file version {version!r} is not supported (this code reads version "
            f"{FORMAT_VERSION})."
        )
    try:
        config = MapperConfig.from_dict(ckpt["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise MapperCheckpointError(f"{source}: invalid mapper config: {exc}") from None
    _check_generator(config, generator, source)
    mapper = LevelsMapper(config)
    state_dict = ckpt.get("state_dict")
    if not isinstance(state_dict, dict):
        raise MapperCheckpointError(f"{source}: 'state_dict' is missing or not a dict of tensors.")
    expected = {k: tuple(v.shape) for k, v in mapper.state_dict().items()}
    _check_state_dict(expected, state_dict, source, _describe(config))
    mapper.load_state_dict({k: v.float() for k, v in state_dict.items()})
    meta = ckpt.get("meta")
    mapper.meta = dict(meta) if isinstance(meta, dict) else {}
    return mapper


MAPPER_FILE_EXPECTED = (
    "a latent mapper checkpoint: ours {'format': 'styleclip-studio-mapper', 'config', 'state_dict'} "
    "or the official StyleCLIP {'state_dict': {'mapper.course_mapping.mapping.1.weight', ...}, 'opts'}"
)


def mapper_from_checkpoint(ckpt: dict[str, Any], generator: Generator, source: str,
                           expected: str = MAPPER_FILE_EXPECTED) -> LevelsMapper:
    """A loaded checkpoint dict (ours or official) → the mapper on the generator's device; `source` names it in
    errors, and `expected` says what else would have been read."""
    if ckpt.get("format") == FORMAT:
        mapper = _load_ours(ckpt, generator, source)
    elif isinstance(ckpt.get("state_dict"), dict) and any(
        isinstance(k, str) and k.startswith("mapper.") for k in ckpt["state_dict"]
    ):
        mapper = _load_official(ckpt, generator, source)
    else:
        hint = " (it looks like a generator checkpoint)" if "g_ema" in ckpt else ""
        raise MapperCheckpointError(
            f"{source} is not {expected}; found top-level keys {preview_keys(ckpt)}{hint}."
        )
    return mapper.to(generator.device)


def _read_mapper(path: str | os.PathLike[str], generator: Generator) -> tuple[LevelsMapper, dict[str, Any]]:
    ckpt = load_checkpoint(path, expected=MAPPER_FILE_EXPECTED)
    return mapper_from_checkpoint(ckpt, generator, str(path)), ckpt


def load_mapper(path: str | os.PathLike[str], generator: Generator) -> LevelsMapper:
    """Load a mapper for `generator` from our format or an official StyleCLIP mapper file.

    Official files: the "course"/"medium"/"fine" `mapping.{1..4}` weights are renamed to ours, the enabled
    groups are the ones present, PixelNorm stays over the row axis, and the bundled `decoder.*` weights are
    ignored (they only tell which generator size the mapper was trained for).

    Args:
        path: the checkpoint file (read with weights_only=True).
        generator: the generator the mapper will edit; its n_latent and style_dim must match the file.

    Returns:
        The mapper in eval mode on the generator's device, `meta` filled from the file ({"text": ...}).

    Raises:
        FileNotFoundError: no such file.
        MapperCheckpointError (a CheckpointError, a ValueError): not a mapper, an unsupported official
            variant, missing/unexpected keys or shapes (the message says expected vs found), or made for
            another generator.
    """
    return _read_mapper(path, generator)[0].eval()


# ------------------------------------------------------------------------------------------------- training
def _seed_for(seed: int, *stream: int) -> int:
    """A 63-bit torch seed for (seed, stream...) that does not depend on how many draws came before,
    so a resumed run sees exactly the batches of an uninterrupted one."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *stream]).generate_state(2, np.uint32)
    return (int(state[0]) << 31 ^ int(state[1])) & (2**63 - 1)


@torch.no_grad()
def sample_w_plus(
    generator: Generator, n: int, seed: int, truncation: float, stream: int = 0, index: int = 0
) -> torch.Tensor:
    """n codes z ~ N(0, I) → w (truncated toward latent_avg) → w_plus [n, L, D], reproducible per index.

    `stream` 0 is the training batches (index = step), 1 the fixed preview batch.
    """
    g = torch.Generator().manual_seed(_seed_for(seed, stream, index))
    z = torch.randn(n, generator.style_dim, generator=g).to(generator.device)
    return generator.z_to_w_plus(z, truncation)


def _training_checkpoint(state: TrainState, train: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    ckpt = _mapper_dict(state.net, {**meta, "steps": state.step})
    ckpt.update(train=train, optimizer=state.optimizer.state_dict(), step=state.step, history=state.history)
    return ckpt


def _resume(path: Path, generator: Generator, train: dict[str, Any], state: TrainState) -> None:
    mapper, ckpt = _read_mapper(path, generator)
    check_resumable(path, ckpt, train, "mapper")
    state.net.load_state_dict(mapper.state_dict())
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.step = int(ckpt["step"])
    state.history = list(ckpt.get("history") or [])


def _identity_fn(identity: Any) -> IdentityLossFn:
    """An IdentityModel's `loss` (1 − cos per sample, source detached), or the callable itself."""
    return identity.loss if isinstance(identity, nn.Module) and hasattr(identity, "loss") else identity


def _objective(mapper: LevelsMapper, generator: Generator, clip_model: ClipModel, target: torch.Tensor,
               w_plus: torch.Tensor, resolution: int, weights: tuple[float, float, float, float],
               identity: IdentityModel | IdentityLossFn | None,
               text_change: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The mapper objective on w_plus [B, L, D] toward target [1, E]:
    (loss, {"clip", "l2"[, "id"][, "dir"], "loss"}).

    weights: (clip, l2, id, direction); the directional term needs text_change [1, E]
    (`clip_losses.text_change_direction`).
    """
    clip_weight, l2_weight, id_weight, dir_weight = weights
    w_edit = apply_mapper(mapper, w_plus)
    img = generator.synthesis_w_plus(w_edit, until_resolution=resolution)  # [B, 3, R, R]
    emb = clip_model.encode_image(img)
    clip_loss = (1 - emb @ target.t()).mean()
    l2_loss = F.mse_loss(w_edit, w_plus)
    loss = clip_weight * clip_loss + l2_weight * l2_loss
    terms = {"clip": clip_loss.item(), "l2": l2_loss.item()}
    img_src = None
    if id_weight > 0 or dir_weight > 0:
        with torch.no_grad():
            img_src = generator.synthesis_w_plus(w_plus, until_resolution=resolution)
    if id_weight > 0:
        id_loss = _identity_fn(identity)(img, img_src).mean()
        loss = loss + id_weight * id_loss
        terms["id"] = float(id_loss.detach())
    if dir_weight > 0:
        # StyleGAN-NADA's directional loss: the image should change along the text change and nowhere else, which
        # the plain CLIP loss does not ask (it rewards any route toward the prompt, attribute leaks included).
        with torch.no_grad():
            emb_src = clip_model.encode_image(img_src)
        dir_loss = directional_loss(emb, emb_src, text_change).mean()
        loss = loss + dir_weight * dir_loss
        terms["dir"] = float(dir_loss.detach())
    terms["loss"] = loss.item()
    return loss, terms


VALIDATION_SEED = 20261126  # held-out sources for validation_objective, shared by every run it compares


@torch.no_grad()
def validation_objective(mapper: LevelsMapper, generator: Generator, clip_model: ClipModel, text: str, *,
                         clip_weight: float, l2_weight: float, id_weight: float = 0.0,
                         identity: IdentityModel | IdentityLossFn | None = None, truncation: float = 0.7,
                         direction_weight: float = 0.0, neutral: str = "face",
                         n: int = 64, batch: int = 16) -> dict[str, float]:
    """The training objective of train_mapper on `n` held-out sources (the same ones for every mapper), so runs of
    one prompt trained from different seeds or settings can be compared without any attribute classifier.

    Returns:
        {"clip", "l2"[, "id"][, "dir"], "loss"}: means over the n sources.
    """
    if id_weight > 0 and identity is None:
        raise ValueError("id_weight > 0 needs an identity loss (identity=...); none was given.")
    target = clip_model.encode_text([text.strip()])
    text_change = text_change_direction(clip_model, neutral.strip(), text.strip()) if direction_weight > 0 else None
    resolution = clip_render_resolution(generator, clip_model)
    weights = (clip_weight, l2_weight, id_weight, direction_weight)
    return held_out_terms(
        mapper,
        lambda w_plus: _objective(mapper, generator, clip_model, target, w_plus, resolution, weights, identity,
                                  text_change)[1],
        lambda count, start: sample_w_plus(generator, count, VALIDATION_SEED, truncation, stream=2, index=start),
        n, batch)


def _loss_text(record: dict[str, float]) -> str:
    parts = f"loss {record['loss']:.4f} (clip {record['clip']:.4f}, l2 {record['l2']:.5f}"
    parts += f", id {record['id']:.4f}" if "id" in record else ""
    return parts + (f", dir {record['dir']:.4f})" if "dir" in record else ")")


def train_mapper(
    generator: Generator,
    clip_model: ClipModel,
    text: str,
    *,
    steps: int,
    batch: int,
    lr: float,
    clip_weight: float,
    l2_weight: float,
    id_weight: float = 0.0,
    identity: IdentityModel | IdentityLossFn | None = None,
    truncation: float = 0.7,
    direction_weight: float = 0.0,
    neutral: str = "face",
    seed: int,
    groups: Sequence[str] = GROUPS,
    norm_axis: str = "layers",
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 100,
    preview_every: int | None = None,
    on_preview: PreviewFn | None = None,
    preview_count: int = 4,
    meta: dict[str, Any] | None = None,
    on_step: Callable[[dict[str, float]], None] | None = None,
) -> tuple[LevelsMapper, list[dict[str, float]]]:
    """Train a mapper for one text prompt (StyleCLIP's mapper objective), resumable and cancellable.

    Each step samples `batch` codes z → w (truncation `truncation`) → w_plus, edits them with
    w_hat = w_plus + 0.1·M(w_plus), renders w_hat at CLIP's input resolution (the generator stops at the
    smallest resolution >= CLIP's input, as the precompute does; the generator's stored noise is used) and
    minimises
        clip_weight·mean(1 − cos(CLIP(img_hat), CLIP(text))) + l2_weight·MSE(w_hat, w_plus)
        + id_weight·identity(img_hat, img_source)
        + direction_weight·mean(1 − cos(CLIP(img_hat) − CLIP(img_source), CLIP(text) − CLIP(neutral))).
    The last term (off by default, as in the official mapper) is StyleGAN-NADA's directional loss: it asks the
    image to change only along the text's change, which keeps the other attributes.
    Only the mapper learns (Adam; the official code uses Ranger, which torch does not ship). The generator and
    CLIP are read-only: gradients are taken w.r.t. the mapper's parameters only (shared models stay as they
    are).

    Args:
        generator: the StyleGAN2 generator; the mapper gets its style_dim and n_latent.
        clip_model: the CLIP wrapper; `encode_text(text)` is the target.
        text: the driving prompt, e.g. "a face with a mohawk".
        steps: total optimisation steps (a resumed run continues up to this number).
        batch: codes per step (official: 2).
        lr: Adam learning rate (official: 0.5 with Ranger; the equalized-lr layers make such values sensible).
        clip_weight, l2_weight, id_weight: loss weights (official: 1.0, 0.8, 0.1).
        identity: required when id_weight > 0: an `IdentityModel` (its `loss`, 1 − cos to the source's
            embedding, as the official ID loss) or any callable
            (img_edit [N, 3, R, R], img_source [N, 3, R, R]) → scalar or [N] loss. Both images are the
            CLIP-resolution renders (256 px for FFHQ, the size ArcFace's preparation pools to anyway); the
            source is rendered without grad.
        truncation: psi of the sampled sources (official: 0.7).
        direction_weight, neutral: the directional term's weight and the text the change starts from.
        seed: seeds the initialisation, the batches and the preview codes; runs are deterministic per seed.
        groups: enabled level groups; norm_axis: see MapperConfig.
        progress: progress(done_steps, steps, "training mapper | loss … (clip …, l2 …)") after each step.
        should_stop: polled before each step; when it returns True the checkpoint is saved (if a path is
            given) and `Cancelled` is raised.
        checkpoint_path: a training checkpoint (our mapper format plus optimizer, step, history and settings);
            if the file exists the run resumes from it (its settings must equal these, except `steps`). It is
            written every `checkpoint_every` steps, on cancel and at the end, and loads with `load_mapper`.
        preview_every, on_preview: every `preview_every` steps, on_preview(step, img_source, img_edit) gets
            `preview_count` fixed sources and their edits at full resolution ([P, 3, R, R], no grad).
        meta: extra JSON-like values stored in the checkpoint's meta (e.g. {"model": "toyfaces"}).
        on_step: on_step(record) after each step, the record as in the returned history (for live plots).

    Returns:
        (mapper in eval mode, history): one record per step done so far, including resumed ones:
        {"step": 1-based step, "loss", "clip", "l2"[, "id" (batch mean)]} as floats.

    Raises:
        ValueError: bad arguments (empty text, steps < 0, batch < 1, lr <= 0, negative weights, id_weight > 0
            without `identity`) or a checkpoint from a run with other settings.
        Cancelled: should_stop() returned True.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("The mapper text is empty; describe the edit, e.g. 'a smiling face'.")
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a whole number >= 0, got {steps}")
    if int(batch) != batch or batch < 1:
        raise ValueError(f"batch must be a whole number >= 1, got {batch}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    for name, value in (("clip_weight", clip_weight), ("l2_weight", l2_weight), ("id_weight", id_weight),
                        ("direction_weight", direction_weight)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    if id_weight > 0 and identity is None:
        raise ValueError("id_weight > 0 needs an identity loss (identity=...); none was given.")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    steps, batch = int(steps), int(batch)

    mapper = LevelsMapper.for_generator(generator, groups, norm_axis, seed=seed).train()
    params = list(mapper.parameters())
    if not params:
        raise ValueError(
            f"no mapper group is enabled with rows to edit (groups {list(groups)}, "
            f"n_latent {generator.n_latent})."
        )
    state = TrainState(mapper, torch.optim.Adam(params, lr=lr))
    text = text.strip()
    # Settings a resumed run must share; `steps` may grow between runs.
    train = {
        "text": text,
        "batch": batch,
        "lr": float(lr),
        "clip_weight": float(clip_weight),
        "l2_weight": float(l2_weight),
        "id_weight": float(id_weight),
        "truncation": float(truncation),
        "seed": int(seed),
        "mapper": mapper.config.to_dict(),
        "generator": generator.config.to_dict(),
        "clip_resolution": clip_model.input_resolution,
        "clip_embed_dim": clip_model.embed_dim,
        "identity": getattr(identity, "kind", None) if id_weight > 0 else None,
    }
    meta = {"text": text, **(meta or {})}
    text_change = None
    if direction_weight > 0:  # only then, so runs started before the directional term still resume
        if not isinstance(neutral, str) or not neutral.strip():
            raise ValueError("The directional loss needs a neutral text, e.g. 'face'.")
        train.update(direction_weight=float(direction_weight), neutral=neutral.strip())
        meta.update(direction_weight=float(direction_weight), neutral=neutral.strip())  # provenance in the file
        text_change = text_change_direction(clip_model, neutral.strip(), text)
    path = Path(checkpoint_path) if checkpoint_path is not None else None
    if path is not None and path.exists():
        _resume(path, generator, train, state)

    def save() -> None:
        if path is not None:
            atomic_save(_training_checkpoint(state, train, meta), path)

    target = clip_model.encode_text([text])  # [1, E], unit norm
    resolution = clip_render_resolution(generator, clip_model)
    weights = (clip_weight, l2_weight, id_weight, direction_weight)
    preview_src = sample_w_plus(generator, preview_count, seed, truncation, stream=1) if on_preview else None

    def step_fn(step: int) -> dict[str, float]:
        w_plus = sample_w_plus(generator, batch, seed, truncation, stream=0, index=step)  # [B, L, D]
        loss, terms = _objective(mapper, generator, clip_model, target, w_plus, resolution, weights, identity,
                                 text_change)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=params)  # the mapper's parameters only: generator and CLIP get no .grad
        state.optimizer.step()
        return terms

    def preview(step: int) -> None:
        on_preview(step, generator.synthesis_w_plus(preview_src),
                   generator.synthesis_w_plus(apply_mapper(mapper, preview_src)))

    run_steps(state, steps, step_fn, save, what="mapper", describe=_loss_text, path=path,
              checkpoint_every=checkpoint_every, should_stop=should_stop, progress=progress, on_step=on_step,
              preview_every=preview_every, preview=preview if on_preview is not None else None)
    return mapper.eval(), list(state.history)
