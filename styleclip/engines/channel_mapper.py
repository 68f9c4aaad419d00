"""A channel mapper: a per-face refinement of a global direction, trained for one text pair.

Global directions move a few well-chosen style channels by the same amount on every face, so an absolute target
("black hair", "purple background") is reached only from nearby starting values. The W+ latent mapper adapts to each
face but may move every layer (and fragile attributes with them). A channel mapper keeps the global direction's
choice of channels and learns, per face, how far to move them:

    Δs[positions] = strength · (alpha · Δs_global[positions] + σ[positions] ⊙ MLP(w))

`positions` are the channels the global direction picks at auto-beta followed by the `extra` next most relevant
conv channels; σ is the per-channel std of s; w is the mean of the source's W+ rows (its w for a sampled face). The
MLP's last layer starts at zero, so training starts from the global edit. Objective: CLIP loss toward the target
text, StyleGAN-NADA's directional loss along the text pair's change, the identity loss, and the squared residual in
σ units (the global edit is the prior). ToRGB channels are never moved (conv channels only).

Files: `{"format": "styleclip-studio-channel-mapper", "version", "config", "state_dict", "meta"}`, read with
`torch.load(weights_only=True)`; a training checkpoint is the same plus optimizer state, so it is a usable file too.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.checkpoints import load_checkpoint, preview_keys
from ..models.clip_model import ClipModel
from ..models.generator import Generator
from .clip_losses import directional_loss, text_change_direction
from .global_directions import GlobalDirections
from .mapper import (
    MAPPER_FILE_EXPECTED,
    VALIDATION_SEED,
    IdentityLossFn,
    LevelsMapper,
    MapperCheckpointError,
    PreviewFn,
    _check_state_dict,
    _identity_fn,
    apply_mapper,
    mapper_from_checkpoint,
    sample_w_plus,
)
from .precompute import ProgressFn, clip_render_resolution
from .training import TrainState, atomic_save, check_resumable, held_out_terms, run_steps

__all__ = ["EXTRA_DEFAULT", "FORMAT", "ChannelMapper", "ChannelMapperConfig", "apply_channel_mapper",
           "channel_mapper_from_checkpoint", "channels_for_pair", "edit_channels", "is_channel_mapper_file", "load_any_mapper",
           "load_channel_mapper", "mapped_s", "save_channel_mapper", "select_channels", "train_channel_mapper",
           "validation_objective"]

FORMAT = "styleclip-studio-channel-mapper"
FORMAT_VERSION = 1
EXTRA_DEFAULT = 512  # channels beyond auto-beta's; BENCHMARKS.md "A mapper over the global direction's channels"
HIDDEN_DEFAULT = 128


@dataclass(frozen=True)
class ChannelMapperConfig:
    """Shapes a channel mapper depends on: the generator's w width, W+ rows and flat-s length, the MLP's width
    and the number of channels it moves."""

    style_dim: int
    n_latent: int
    s_dim: int
    channels: int
    hidden: int = HIDDEN_DEFAULT

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChannelMapperConfig:
        try:
            return cls(**{k: int(d[k]) for k in ("style_dim", "n_latent", "s_dim", "channels", "hidden")})
        except (KeyError, TypeError, ValueError) as exc:
            raise MapperCheckpointError(f"a channel mapper config needs whole numbers style_dim, n_latent, s_dim, "
                                        f"channels and hidden; found {d!r}") from exc


class ChannelMapper(nn.Module):
    """w_plus [N, L, D] → Δs on `positions` [N, K] = base + scale ⊙ MLP(mean over rows of w_plus)."""

    def __init__(self, config: ChannelMapperConfig, positions: torch.Tensor, base: torch.Tensor,
                 scale: torch.Tensor):
        super().__init__()
        k = config.channels
        if positions.shape != (k,) or base.shape != (k,) or scale.shape != (k,):
            raise ValueError(f"positions, base and scale must each have shape ({k},); found "
                             f"{tuple(positions.shape)}, {tuple(base.shape)}, {tuple(scale.shape)}")
        if k and (int(positions.min()) < 0 or int(positions.max()) >= config.s_dim):
            raise ValueError(f"channel positions must lie in [0, {config.s_dim}) (the flat s vector)")
        if positions.unique().numel() != k:
            raise ValueError("channel positions must be distinct")
        self.config = config
        self.register_buffer("positions", positions.long().clone())
        self.register_buffer("base", base.float().clone())
        self.register_buffer("scale", scale.float().clone())
        self.net = nn.Sequential(nn.Linear(config.style_dim, config.hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(config.hidden, config.hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(config.hidden, k))
        nn.init.zeros_(self.net[-1].weight)  # the untrained mapper is exactly the global edit
        nn.init.zeros_(self.net[-1].bias)
        self.meta: dict[str, Any] = {}

    def residual(self, w_plus: torch.Tensor) -> torch.Tensor:
        """The learned part in σ units [N, K]."""
        return self.net(w_plus.mean(dim=1))

    def forward(self, w_plus: torch.Tensor) -> torch.Tensor:
        return self.base + self.scale * self.residual(w_plus)


def edit_channels(mapper: ChannelMapper, w_plus: torch.Tensor, s: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Flat s [N, s_dim] of the sources w_plus [N, L, D] → the edited flat s [N, s_dim] (a new tensor)."""
    if w_plus.ndim != 3 or w_plus.shape[1:] != (mapper.config.n_latent, mapper.config.style_dim):
        raise ValueError(f"expected w_plus [N, {mapper.config.n_latent}, {mapper.config.style_dim}], "
                         f"got {list(w_plus.shape)}")
    s = s.clone()
    s[:, mapper.positions] = s[:, mapper.positions] + float(strength) * mapper(w_plus)
    return s


def apply_channel_mapper(mapper: ChannelMapper, generator: Generator, w_plus: torch.Tensor,
                         strength: float = 1.0) -> torch.Tensor:
    """w_plus [N, L, D] → edited flat s [N, s_dim] (the sources' own S codes with the mapper's change)."""
    return edit_channels(mapper, w_plus, generator.s_to_flat(generator.w_plus_to_s(w_plus)), strength)


def mapped_s(mapper: LevelsMapper | ChannelMapper, generator: Generator, w_plus: torch.Tensor,
             strength: float = 1.0, groups=None) -> torch.Tensor:
    """Either kind of mapper applied to w_plus [N, L, D] → the edited flat s [N, s_dim].

    Both kinds end in S, so callers render one way and can carry a change over to another start code:
    mapped − S(w_plus) is the edit (only the channel mapper's channels for a channel mapper). `groups` (W+ row groups)
    applies to W+ mappers only.
    """
    if isinstance(mapper, ChannelMapper):
        if groups is not None:
            raise ValueError("W+ layer groups do not apply to a channel mapper; leave the groups out.")
        return apply_channel_mapper(mapper, generator, w_plus, strength)
    return generator.s_to_flat(generator.w_plus_to_s(apply_mapper(mapper, w_plus, strength, groups)))


def select_channels(relevance: torch.Tensor, delta_s: torch.Tensor, conv_index: torch.Tensor, std: torch.Tensor,
                    alpha: float, extra: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The channels a mapper moves and its starting point.

    Args:
        relevance: [C] the text pair's relevance of each conv channel.
        delta_s: [s_dim] the global direction at auto-beta (nonzero on the chosen conv channels).
        conv_index: [C] positions of the conv channels in the flat s vector.
        std: [s_dim] per-channel std of s.
        alpha, extra: the global edit's strength; how many channels to add beyond the global direction's, by
            |relevance|.

    Returns:
        (positions [K] long, base [K] = alpha·Δs_global there, scale [K] = σ there).
    """
    chosen = delta_s.nonzero()[:, 0]
    if extra > 0:
        taken = torch.zeros(delta_s.shape[0], dtype=torch.bool)
        taken[chosen] = True
        by_relevance = conv_index[torch.argsort(relevance.abs(), descending=True)]
        chosen = torch.cat([chosen, by_relevance[~taken[by_relevance]][:extra]])
    return chosen, float(alpha) * delta_s[chosen], std[chosen]


def channels_for_pair(engine: GlobalDirections, neutral: str, target: str, alpha: float, extra: int,
                      min_channels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """`select_channels` for a text pair through the global-direction engine at auto-beta (keeping more than
    `min_channels`): (positions [K], base [K], scale [K], the beta used)."""
    beta = engine.auto_beta(neutral, target, min_channels)
    positions, base, scale = select_channels(engine.relevance(neutral, target)[0],
                                             engine.direction(neutral, target, beta).delta_s, engine.stats.conv_index,
                                             engine.stats.std, alpha, extra)
    return positions, base, scale, beta


# ------------------------------------------------------------------------------------------------- files
def _digest(t: torch.Tensor) -> str:
    """A short fingerprint of a tensor's values, so a resume refuses a run over other channels or another base."""
    return hashlib.sha256(t.detach().cpu().float().numpy().tobytes()).hexdigest()[:16]


def _mapper_dict(mapper: ChannelMapper, meta: dict[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "version": FORMAT_VERSION, "config": mapper.config.to_dict(),
            "state_dict": {k: v.detach().cpu().clone() for k, v in mapper.state_dict().items()},
            "meta": dict(meta)}


def save_channel_mapper(mapper: ChannelMapper, path: str | os.PathLike[str], meta: dict[str, Any] | None = None,
                        half: bool = False) -> None:
    """Writes the mapper (`half`: the MLP's weights as float16, half the size, for shipping)."""
    ckpt = _mapper_dict(mapper, mapper.meta if meta is None else meta)
    if half:
        ckpt["state_dict"] = {k: v.half() if k.startswith("net.") else v for k, v in ckpt["state_dict"].items()}
    atomic_save(ckpt, Path(path))


def is_channel_mapper_file(ckpt: dict[str, Any]) -> bool:
    """True when a loaded checkpoint dict is a channel mapper (ours)."""
    return ckpt.get("format") == FORMAT


def channel_mapper_from_checkpoint(ckpt: dict[str, Any], generator: Generator, source: str) -> ChannelMapper:
    """A loaded checkpoint dict → the mapper on the generator's device, shapes checked against both."""
    if not is_channel_mapper_file(ckpt):
        raise MapperCheckpointError(f"{source} is not a channel mapper; found top-level keys {preview_keys(ckpt)}.")
    if int(ckpt.get("version", 0)) > FORMAT_VERSION:
        raise MapperCheckpointError(f"{source} is a channel mapper of format version {ckpt.get('version')}; this "
                                    f"version reads up to {FORMAT_VERSION}. Update StyleCLIP Studio.")
    config = ChannelMapperConfig.from_dict(ckpt.get("config") or {})
    wanted = (generator.style_dim, generator.n_latent, generator.s_dim)
    if (config.style_dim, config.n_latent, config.s_dim) != wanted:
        raise MapperCheckpointError(
            f"{source}: the channel mapper was made for a generator with w of {config.style_dim} values, "
            f"{config.n_latent} W+ rows and {config.s_dim} style channels, but this one ({generator.size} px) has "
            f"{wanted[0]}, {wanted[1]} and {wanted[2]}; use the generator it was trained with.")
    k = config.channels
    expected = {"positions": (k,), "base": (k,), "scale": (k,),
                "net.0.weight": (config.hidden, config.style_dim), "net.0.bias": (config.hidden,),
                "net.2.weight": (config.hidden, config.hidden), "net.2.bias": (config.hidden,),
                "net.4.weight": (k, config.hidden), "net.4.bias": (k,)}
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise MapperCheckpointError(f"{source}: a channel mapper file needs a 'state_dict' dict.")
    _check_state_dict(expected, state, source, f"a channel mapper moving {k} channels")
    try:
        mapper = ChannelMapper(config, state["positions"], state["base"], state["scale"])
    except ValueError as exc:
        raise MapperCheckpointError(f"{source}: {exc}") from exc
    mapper.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    mapper.meta = dict(ckpt.get("meta") or {})
    return mapper.to(generator.device)


def load_channel_mapper(path: str | os.PathLike[str], generator: Generator) -> ChannelMapper:
    """Reads a channel mapper file for `generator` (weights_only); MapperCheckpointError says what is wrong."""
    ckpt = load_checkpoint(path, expected=f"a channel mapper {{'format': '{FORMAT}', 'config', 'state_dict'}}")
    return channel_mapper_from_checkpoint(ckpt, generator, str(path)).eval()


def load_any_mapper(path: str | os.PathLike[str], generator: Generator) -> LevelsMapper | ChannelMapper:
    """Any mapper file, read once: a channel mapper, or a W+ mapper (ours or the official StyleCLIP format)."""
    expected = MAPPER_FILE_EXPECTED + f", or a channel mapper {{'format': '{FORMAT}', 'config', 'state_dict'}}"
    ckpt = load_checkpoint(path, expected=expected)
    if is_channel_mapper_file(ckpt):
        return channel_mapper_from_checkpoint(ckpt, generator, str(path)).eval()
    return mapper_from_checkpoint(ckpt, generator, str(path), expected).eval()


# ------------------------------------------------------------------------------------------------- training
def _loss_text(record: dict[str, float]) -> str:
    return (f"loss {record['loss']:.4f} (clip {record['clip']:.4f}, dir {record['dir']:.4f}, "
            f"residual {record['residual']:.4f}" + (f", id {record['id']:.4f})" if "id" in record else ")"))


class _Objective:
    """The training objective of a channel mapper for one text pair; (mapper, w_plus [B, L, D]) → (loss, terms)."""

    def __init__(self, generator: Generator, clip_model: ClipModel, neutral: str, target: str,
                 direction_weight: float, residual_weight: float, id_weight: float,
                 identity: IdentityLossFn | nn.Module | None):
        self.generator, self.clip = generator, clip_model
        self.text_target = clip_model.encode_text([target]).detach()  # [1, E]
        self.change = text_change_direction(clip_model, neutral, target).detach()  # [1, E]
        self.resolution = clip_render_resolution(generator, clip_model)
        self.direction_weight, self.residual_weight, self.id_weight = direction_weight, residual_weight, id_weight
        self.id_loss_fn = _identity_fn(identity) if id_weight > 0 else None

    def __call__(self, mapper: ChannelMapper, w_plus: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        g, clip_model = self.generator, self.clip
        with torch.no_grad():
            s_source = g.s_to_flat(g.w_plus_to_s(w_plus))
            img_source = g.synthesis(g.flat_to_s(s_source), until_resolution=self.resolution)
            emb_source = clip_model.encode_image(img_source)
        img = g.synthesis(g.flat_to_s(edit_channels(mapper, w_plus, s_source)), until_resolution=self.resolution)
        emb = clip_model.encode_image(img)
        clip_loss = (1 - emb @ self.text_target.t()).mean()
        dir_loss = directional_loss(emb, emb_source, self.change).mean()
        residual = mapper.residual(w_plus).square().mean()
        loss = clip_loss + self.direction_weight * dir_loss + self.residual_weight * residual
        terms = {"clip": clip_loss.item(), "dir": dir_loss.item(), "residual": residual.item()}
        if self.id_loss_fn is not None:
            id_loss = self.id_loss_fn(img, img_source).mean()
            loss = loss + self.id_weight * id_loss
            terms["id"] = id_loss.item()
        return loss, {**terms, "loss": loss.item()}


@torch.no_grad()
def validation_objective(mapper: ChannelMapper, generator: Generator, clip_model: ClipModel, neutral: str,
                         target: str, *, direction_weight: float = 3.0, residual_weight: float = 0.05,
                         id_weight: float = 0.0, identity: IdentityLossFn | nn.Module | None = None,
                         truncation: float = 0.7, n: int = 64, batch: int = 16) -> dict[str, float]:
    """The training objective on `n` held-out sources (the W+ mapper's `VALIDATION_SEED` ones), so runs of one text
    pair from different seeds can be compared without any attribute classifier: {"clip", "dir", "residual"[, "id"],
    "loss"}, means over the sources."""
    objective = _Objective(generator, clip_model, neutral.strip(), target.strip(), direction_weight,
                           residual_weight, id_weight, identity)
    return held_out_terms(mapper, lambda w_plus: objective(mapper, w_plus)[1],
                          lambda count, start: sample_w_plus(generator, count, VALIDATION_SEED, truncation, stream=2,
                                                             index=start), n, batch)


def train_channel_mapper(
    generator: Generator,
    clip_model: ClipModel,
    neutral: str,
    target: str,
    positions: torch.Tensor,
    base: torch.Tensor,
    scale: torch.Tensor,
    *,
    steps: int,
    batch: int = 4,
    lr: float = 1e-3,
    direction_weight: float = 3.0,
    residual_weight: float = 0.05,
    id_weight: float = 0.0,
    identity: IdentityLossFn | nn.Module | None = None,
    truncation: float = 0.7,
    seed: int = 0,
    hidden: int = HIDDEN_DEFAULT,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 50,
    preview_every: int | None = None,
    on_preview: PreviewFn | None = None,
    preview_count: int = 4,
    meta: dict[str, Any] | None = None,
    on_step: Callable[[dict[str, float]], None] | None = None,
) -> tuple[ChannelMapper, list[dict[str, float]]]:
    """Trains a channel mapper for the text pair (see the module docstring), resumable and cancellable.

    Each step samples `batch` faces (z → w at `truncation` → w_plus → flat s), adds the mapper's change on
    `positions`, renders at CLIP's input resolution and minimises
        mean(1 − cos(CLIP(img_edit), CLIP(target))) + direction_weight · directional loss (neutral → target)
        + residual_weight · mean(residual²) + id_weight · identity(img_edit, img_source).

    Args:
        positions, base, scale: [K] each, from `select_channels`.
        steps: total steps (a resumed run continues up to this number); batch, lr: Adam's batch and rate.
        identity: required when id_weight > 0 (an IdentityModel or a callable (img_edit, img_source) → loss).
        seed: seeds the initialisation, the batches and the previews; runs are deterministic per seed.
        checkpoint_path: written every `checkpoint_every` steps, on cancel and at the end; an existing file with
            the same settings is resumed (other settings: ValueError).
        progress, on_step, on_preview, should_stop: as in `mapper.train_mapper`; previews show `preview_count`
            fixed sources and their edits at full resolution.

    Returns:
        (mapper in eval mode, history: {"step", "loss", "clip", "dir", "residual"[, "id"]} per step).

    Raises:
        ValueError: empty texts, bad numbers, id_weight > 0 without identity, or a checkpoint of other settings.
        Cancelled: should_stop() returned True (the checkpoint is saved first).
    """
    neutral, target = (neutral or "").strip(), (target or "").strip()
    if not neutral or not target:
        raise ValueError("A channel mapper needs both texts: the neutral one (e.g. 'face') and the target.")
    if int(steps) != steps or steps < 0 or int(batch) != batch or batch < 1:
        raise ValueError(f"steps must be a whole number >= 0 and batch >= 1; got {steps} and {batch}")
    for name, value in (("lr", lr), ("direction_weight", direction_weight), ("residual_weight", residual_weight),
                        ("id_weight", id_weight)):
        if not (math.isfinite(value) and value >= 0) or (name == "lr" and value == 0):
            raise ValueError(f"{name} must be a finite number {'> 0' if name == 'lr' else '>= 0'}, got {value}")
    if id_weight > 0 and identity is None:
        raise ValueError("id_weight > 0 needs an identity loss (identity=...); none was given.")
    if positions.numel() == 0:
        raise ValueError("The channel mapper has no channels to move; lower beta or add extra channels.")
    steps, batch = int(steps), int(batch)
    device = generator.device
    config = ChannelMapperConfig(generator.style_dim, generator.n_latent, generator.s_dim, positions.numel(), hidden)
    with torch.random.fork_rng(devices=[]):  # seeds the MLP's initialisation, not the caller's RNG
        torch.manual_seed(seed)
        mapper = ChannelMapper(config, positions, base, scale).to(device).train()
    params = list(mapper.parameters())
    state = TrainState(mapper, torch.optim.Adam(params, lr=lr))
    train = {"neutral": neutral, "target": target, "batch": batch, "lr": float(lr),
             "direction_weight": float(direction_weight), "residual_weight": float(residual_weight),
             "id_weight": float(id_weight), "truncation": float(truncation), "seed": int(seed),
             "mapper": config.to_dict(), "positions_sha": _digest(positions), "base_sha": _digest(base),
             "generator": generator.config.to_dict(), "clip_resolution": clip_model.input_resolution,
             "identity": getattr(identity, "kind", None) if id_weight > 0 else None}
    meta = {"neutral": neutral, "target": target, "text": target, **(meta or {})}
    path = Path(checkpoint_path) if checkpoint_path is not None else None
    if path is not None and path.exists():
        ckpt = load_checkpoint(path, expected=f"a channel mapper {{'format': '{FORMAT}'}}")
        check_resumable(path, ckpt, train, "channel mapper")
        mapper.load_state_dict(channel_mapper_from_checkpoint(ckpt, generator, str(path)).state_dict())
        state.optimizer.load_state_dict(ckpt["optimizer"])
        state.step, state.history = int(ckpt["step"]), list(ckpt.get("history") or [])

    def save() -> None:
        if path is not None:
            ckpt = _mapper_dict(mapper, {**meta, "steps": state.step})
            ckpt.update(train=train, optimizer=state.optimizer.state_dict(), step=state.step, history=state.history)
            atomic_save(ckpt, path)

    objective = _Objective(generator, clip_model, neutral, target, direction_weight, residual_weight, id_weight,
                           identity)

    def step_fn(step: int) -> dict[str, float]:
        loss, terms = objective(mapper, sample_w_plus(generator, batch, seed, truncation, stream=0, index=step))
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=params)  # generator and CLIP stay read-only
        state.optimizer.step()
        return terms

    preview_src = sample_w_plus(generator, preview_count, seed, truncation, stream=1) if on_preview else None

    def preview(step: int) -> None:
        on_preview(step, generator.synthesis_w_plus(preview_src),
                   generator.synthesis(generator.flat_to_s(apply_channel_mapper(mapper, generator, preview_src))))

    run_steps(state, steps, step_fn, save, what="channel mapper", describe=_loss_text, path=path,
              checkpoint_every=checkpoint_every, should_stop=should_stop, progress=progress, on_step=on_step,
              preview_every=preview_every, preview=preview if on_preview is not None else None)
    mapper.meta = {**meta, "steps": state.step}
    return mapper.eval(), list(state.history)

