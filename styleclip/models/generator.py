"""StyleGAN2 (config-f) generator with rosinality-compatible state-dict names, exposing z, w, w_plus and s.

One implementation serves every engine. Its parameter and buffer names and shapes are those of the
rosinality `stylegan2-pytorch` checkpoints (`{"g_ema", "latent_avg"}`), so the official FFHQ file loads
with strict checking. The forward pass is written for speed on the CPU: the style modulates the
activations instead of the weights (mathematically identical to per-sample weight modulation), so one
shared weight serves the whole batch and the demodulation is a cheap [N, out] rescale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import ops

__all__ = ["Generator", "StyleLayer", "GeneratorConfig", "channels_for"]

_BLUR_KERNEL = (1, 3, 3, 1)
_DEMOD_EPS = 1e-8


def channels_for(size: int, channel_multiplier: int = 2, channel_max: int = 512) -> dict[int, int]:
    """Feature-map channels per resolution, as in config-f (rosinality's table, capped at `channel_max`)."""
    base = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier,
            128: 128 * channel_multiplier, 256: 64 * channel_multiplier, 512: 32 * channel_multiplier,
            1024: 16 * channel_multiplier, 2048: 8 * channel_multiplier}
    return {res: min(ch, channel_max) for res, ch in base.items() if res <= size}


@dataclass(frozen=True)
class GeneratorConfig:
    """Everything needed to rebuild a generator; stored in our own checkpoints and inferred from official ones."""

    size: int
    style_dim: int = 512
    n_mlp: int = 8
    channel_multiplier: int = 2
    channel_max: int = 512
    lr_mlp: float = 0.01
    channel_table: tuple[int, ...] | None = None  # channels at 4, 8, ..., size; overrides the two above

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def n_latent(self) -> int:
        return self.log_size * 2 - 2

    @property
    def num_noises(self) -> int:
        return (self.log_size - 2) * 2 + 1

    def channels(self) -> dict[int, int]:
        if self.channel_table is not None:
            if len(self.channel_table) != self.log_size - 1:
                raise ValueError(f"channel_table needs {self.log_size - 1} entries (4..{self.size}), "
                                 f"got {len(self.channel_table)}")
            return {2 ** (i + 2): int(c) for i, c in enumerate(self.channel_table)}
        return channels_for(self.size, self.channel_multiplier, self.channel_max)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["channel_table"] = list(self.channel_table) if self.channel_table is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> GeneratorConfig:
        d = dict(d)
        if d.get("channel_table") is not None:
            d["channel_table"] = tuple(int(c) for c in d["channel_table"])
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown generator config fields: {sorted(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class StyleLayer:
    """Metadata of one style vector in S (one per modulated conv or ToRGB layer)."""

    index: int          # position in S (0..num_styles-1)
    name: str           # e.g. "conv1_resolution_4", "toRGB_resolution_8" (names used by StyleCLIP's files)
    module: str         # rosinality module path, e.g. "convs.2"
    resolution: int
    dim: int
    is_torgb: bool
    w_index: int        # which W+ row feeds it
    offset: int         # start of this layer in the flat S vector


def _make_kernel(taps: tuple[int, ...]) -> torch.Tensor:
    k = torch.tensor(taps, dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum()


class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate: weights stored as N(0,1)/lr_mul, scaled at run time."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation:
            return ops.fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class ModulatedConv2d(nn.Module):
    """Modulated (and optionally demodulated) convolution; `upsample` = stride-2 transposed conv + blur."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False):
        super().__init__()
        self.in_channel, self.out_channel, self.kernel_size = in_channel, out_channel, kernel_size
        self.demodulate, self.upsample = demodulate, upsample
        self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        if upsample:
            self.blur = Blur(_BLUR_KERNEL, pad=(1, 1), upsample_factor=2)
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1.0)

    def _scaled_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale·weight [out, in, k, k], its squares summed over the kernel [out, in]).

        Cached while no gradient is needed: between slider moves the weights do not change, and recomputing
        these is most of the cost of a low-resolution layer. The cache is keyed on the parameter's version,
        so an optimizer step (in-place update) invalidates it.
        """
        key = (self.weight._version, self.weight.data_ptr(), self.weight.device)
        if torch.is_grad_enabled() and self.weight.requires_grad:
            weight = self.weight[0] * self.scale
            return weight, weight.square().sum(dim=(2, 3))
        cache = getattr(self, "_weight_cache", None)
        # Tensors made under inference_mode cannot enter autograd (e.g. a latent optimisation after a UI edit
        # with frozen weights), so such a cache is rebuilt the first time it is used outside inference mode.
        stale_inference = cache is not None and cache[1].is_inference() and not torch.is_inference_mode_enabled()
        if cache is None or cache[0] != key or stale_inference:
            with torch.no_grad():
                weight = self.weight[0] * self.scale
                cache = (key, weight, weight.square().sum(dim=(2, 3)))
            self._weight_cache = cache
        return cache[1], cache[2]

    def _phase_weights(self) -> list[torch.Tensor]:
        """The four kernel slices of `_upsample_conv_polyphase` (no-grad use only), cached like the weight."""
        weight, _ = self._scaled_weight()
        cache = getattr(self, "_phase_cache", None)
        if cache is None or cache[0] is not weight:
            with torch.no_grad():
                phases = [weight[:, :, rows][:, :, :, cols].contiguous() for rows in _PHASE_TAPS
                          for cols in _PHASE_TAPS]
            cache = (weight, phases)
            self._phase_cache = cache
        return cache[1]

    def forward(self, x: torch.Tensor, s: torch.Tensor, bias: torch.Tensor | None = None,
                input_gain: float = 1.0) -> torch.Tensor:
        """Modulated conv of `input_gain * x`.

        Args:
            x: [N, in, H, W]; s: [N, in] style (the output of `modulation`).
            bias: optional [out] bias added to the output (fused into the convolution when possible).
            input_gain: a constant factor of the input (the previous activation's gain); it is folded into the
                style instead of costing a pass over the activation.

        Returns:
            [N, out, H', W'] (H' = 2H with `upsample`).
        """
        weight, wsq = self._scaled_weight()
        n, _, h, w = x.shape
        # Demodulation normalises the modulated weight, so it depends on s but not on the input gain.
        demod = torch.rsqrt(s.square() @ wsq.t() + _DEMOD_EPS) if self.demodulate else None  # [N, out]
        s_in = s * input_gain if input_gain != 1.0 else s
        # Modulate whichever is smaller: the weight (once per sample) or the activations. When s needs a
        # gradient, a modulated weight would cost a weight-gradient convolution in the backward pass (as many
        # FLOPs as the forward one); modulated activations need only an elementwise product there.
        factor = None  # [out, in] when the weight is modulated
        if n == 1 and not s.requires_grad and weight.numel() <= x[0].numel() + (
                self.out_channel * h * w if self.demodulate else 0):
            factor = s_in[0][None, :] if demod is None else demod[0][:, None] * s_in[0][None, :]
            out_scale = None
        else:
            x = x * s_in[:, :, None, None]
            out_scale = demod
        if self.upsample and not torch.is_grad_enabled() and x.device.type == "cpu" and self.kernel_size == 3:
            # Slicing the cached weight, then modulating the slices, saves a gather of the full modulated weight.
            phases = [p if factor is None else p * factor[:, :, None, None] for p in self._phase_weights()]
            x = self.blur.valid(_upsample_conv_polyphase(x, phases))
            if out_scale is not None:  # a per-channel scale commutes with the depthwise blur
                x = _scale_channels(x, out_scale)
            return _add_bias(x, bias)
        if factor is not None:
            weight = weight * factor[:, :, None, None]
        if self.upsample:
            # conv_transpose2d wants [in, out, k, k]; stride 2 then blur equals upstream's upsampling conv.
            x = self.blur(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2))
            if out_scale is not None:  # a per-channel scale commutes with the depthwise blur
                x = _scale_channels(x, out_scale)
            return _add_bias(x, bias)
        if out_scale is not None:
            x = _scale_channels(F.conv2d(x, weight, padding=self.kernel_size // 2), out_scale)
            return _add_bias(x, bias)
        return F.conv2d(x, weight, bias, padding=self.kernel_size // 2)


# Output phase 0 of the zero-padded transposed convolution reads kernel row/column 1, phase 1 reads rows 2 then 0.
_PHASE_TAPS = ([1], [2, 0])


def _upsample_conv_polyphase(x: torch.Tensor, phases: list[torch.Tensor]) -> torch.Tensor:
    """The stride-2 transposed 3x3 convolution, zero-padded by one on every side, as four small convolutions.

    Equals F.pad(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2), (1, 1, 1, 1)): output pixel
    (2m + a, 2n + b) of the padded map only sees taps of one parity, so each of the four output phases is an
    ordinary convolution of x with a 1- or 2-tap slice of the kernel. oneDNN runs these at the speed of plain
    convolutions, where its transposed convolution is 2-4x slower on this CPU.

    Args:
        x: [N, in, H, W]; phases: the slices weight[:, :, rows][:, :, :, cols] for (rows, cols) in
            _PHASE_TAPS x _PHASE_TAPS of the (modulated) weight [out, in, 3, 3].

    Returns:
        [N, out, 2H + 3, 2W + 3], ready for a valid (unpadded) blur.
    """
    n, _, h, w = x.shape
    out = torch.empty(n, phases[0].shape[0], 2 * h + 3, 2 * w + 3, dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last)
    for k, kernel in enumerate(phases):
        a, b = divmod(k, 2)
        out[:, :, a::2, b::2] = F.conv2d(x, kernel, padding=1)
    return out


# In inference the elementwise steps update fresh tensors in place: at 1024 px an out-of-place broadcast add costs
# ~8x an in-place one (a new 128 MB tensor is allocated and faulted in), and these run on the largest activations.
def _scale_channels(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x: [N, C, H, W] times scale [N, C]."""
    if torch.is_grad_enabled():
        return x * scale[:, :, None, None]
    return x.mul_(scale[:, :, None, None])


def _add_bias(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x: [N, C, H, W] plus bias [C] (or unchanged when bias is None)."""
    if bias is None:
        return x
    if torch.is_grad_enabled():
        return x + bias[None, :, None, None]
    return x.add_(bias[None, :, None, None])


class Blur(nn.Module):
    def __init__(self, taps: tuple[int, ...], pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        self.register_buffer("kernel", _make_kernel(taps) * upsample_factor ** 2)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.upfirdn2d(x, self.kernel, pad=self.pad)

    def valid(self, x_padded: torch.Tensor) -> torch.Tensor:
        """The blur of an input that already carries its zero padding (see `_upsample_conv_polyphase`)."""
        return ops.upfirdn2d(x_padded, self.kernel, pad=0)


class Upsample(nn.Module):
    def __init__(self, taps: tuple[int, ...], factor: int = 2):
        super().__init__()
        self.register_buffer("kernel", _make_kernel(taps) * factor ** 2)
        p = len(taps) - factor
        self.factor = factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return x + self.weight * noise


class FusedLeakyReLU(nn.Module):
    def __init__(self, channel: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.fused_leaky_relu(x, self.bias)


# Every activation is leaky_relu(.) * sqrt(2); the generator leaves the sqrt(2) to the next layer's weights.
ACT_GAIN = math.sqrt(2)


class StyledConv(nn.Module):
    """Modulated conv → noise → bias → leaky ReLU. Returns the activation WITHOUT its sqrt(2) gain."""

    def __init__(self, in_channel: int, out_channel: int, style_dim: int, upsample: bool = False):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x: torch.Tensor, s: torch.Tensor, noise: torch.Tensor,
                input_gain: float = ACT_GAIN) -> torch.Tensor:
        """x: [N, in, H, W] (times `input_gain`), s: [N, in], noise: [N or 1, 1, H', W'] → [N, out, H', W']."""
        x = self.conv(x, s, bias=self.activate.bias, input_gain=input_gain)
        if torch.is_grad_enabled():
            return F.leaky_relu(torch.addcmul(x, noise, self.noise.weight), 0.2)
        # Inference: update in place, saving two passes over the largest tensors of the network.
        if x.is_cuda:  # reading the weight as a Python number would wait for the GPU at every layer
            return F.leaky_relu_(x.addcmul_(noise, self.noise.weight), 0.2)
        # add_ with a Python scalar is ~4x faster than addcmul_ with the [1] weight tensor on channels_last maps.
        return F.leaky_relu_(x.add_(noise, alpha=float(self.noise.weight)), 0.2)


class ToRGB(nn.Module):
    def __init__(self, in_channel: int, style_dim: int, upsample: bool = True):
        super().__init__()
        if upsample:
            self.upsample = Upsample(_BLUR_KERNEL)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, s: torch.Tensor, skip: torch.Tensor | None = None,
                input_gain: float = ACT_GAIN) -> torch.Tensor:
        """x: [N, in, H, W] (times `input_gain`), s: [N, in], skip: [N, 3, H/2, W/2] → [N, 3, H, W]."""
        out = self.conv(x, s, bias=self.bias.view(3), input_gain=input_gain)
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class ConstantInput(nn.Module):
    def __init__(self, channel: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)


class Generator(nn.Module):
    """StyleGAN2 generator: mapping z → w, and synthesis from w_plus or from s.

    Latent shapes (D = style_dim, L = n_latent, e.g. 512 and 18 for FFHQ-1024):
        z: [N, D] standard normal; w: [N, D]; w_plus: [N, L, D];
        s: list of `num_styles` tensors, s[i]: [N, style_layers[i].dim] (26 of them for FFHQ-1024).
    """

    def __init__(self, size: int, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2,
                 channel_max: int = 512, lr_mlp: float = 0.01, channel_table: tuple[int, ...] | None = None):
        super().__init__()
        self.config = GeneratorConfig(size, style_dim, n_mlp, channel_multiplier, channel_max, lr_mlp,
                                      None if channel_table is None else tuple(channel_table))
        cfg = self.config
        if size < 4 or 2 ** cfg.log_size != size:
            raise ValueError(f"generator size must be a power of two >= 4, got {size}")
        self.size, self.style_dim, self.n_latent = size, style_dim, cfg.n_latent
        channels = cfg.channels()

        self.style = nn.Sequential(PixelNorm(), *[
            EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation=True) for _ in range(n_mlp)])
        self.input = ConstantInput(channels[4])
        self.conv1 = StyledConv(channels[4], channels[4], style_dim)
        self.to_rgb1 = ToRGB(channels[4], style_dim, upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for i in range(cfg.num_noises):
            res = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, res, res))
        in_ch = channels[4]
        for log_res in range(3, cfg.log_size + 1):
            out_ch = channels[2 ** log_res]
            self.convs.append(StyledConv(in_ch, out_ch, style_dim, upsample=True))
            self.convs.append(StyledConv(out_ch, out_ch, style_dim))
            self.to_rgbs.append(ToRGB(out_ch, style_dim))
            in_ch = out_ch
        self.register_buffer("latent_avg", torch.zeros(style_dim), persistent=False)
        self.style_layers = self._build_style_layers()

    @classmethod
    def from_config(cls, config: GeneratorConfig) -> Generator:
        return cls(config.size, config.style_dim, config.n_mlp, config.channel_multiplier, config.channel_max,
                   config.lr_mlp, config.channel_table)

    # ----------------------------------------------------------------------------------------- layout
    def _style_modules(self) -> list[tuple[str, ModulatedConv2d, bool, int, int]]:
        """(module path, conv, is_torgb, resolution, w_index) in S order."""
        out = [("conv1", self.conv1.conv, False, 4, 0), ("to_rgb1", self.to_rgb1.conv, True, 4, 1)]
        for b in range(len(self.to_rgbs)):
            res = 2 ** (b + 3)
            out.append((f"convs.{2 * b}", self.convs[2 * b].conv, False, res, 2 * b + 1))
            out.append((f"convs.{2 * b + 1}", self.convs[2 * b + 1].conv, False, res, 2 * b + 2))
            out.append((f"to_rgbs.{b}", self.to_rgbs[b].conv, True, res, 2 * b + 3))
        return out

    def _build_style_layers(self) -> tuple[StyleLayer, ...]:
        layers, offset = [], 0
        for idx, (path, conv, is_rgb, res, w_idx) in enumerate(self._style_modules()):
            if is_rgb:
                name = f"toRGB_resolution_{res}"
            elif path == "conv1" or path.startswith("convs.") and int(path.split(".")[1]) % 2 == 1:
                name = f"conv1_resolution_{res}"
            else:
                name = f"conv0_resolution_{res}"
            layers.append(StyleLayer(idx, name, path, res, conv.in_channel, is_rgb, w_idx, offset))
            offset += conv.in_channel
        return tuple(layers)

    @property
    def num_styles(self) -> int:
        return len(self.style_layers)

    @property
    def device(self) -> torch.device:
        """Where the generator's weights are (its constant input's device); codes go there to render."""
        return self.input.input.device

    @property
    def s_dim(self) -> int:
        return sum(layer.dim for layer in self.style_layers)

    @property
    def conv_layers(self) -> tuple[StyleLayer, ...]:
        """The non-ToRGB style layers (the channels global directions may move)."""
        return tuple(layer for layer in self.style_layers if not layer.is_torgb)

    # ----------------------------------------------------------------------------------------- latents
    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """z: [N, D] → w: [N, D]."""
        return self.style(z)

    def truncate(self, w: torch.Tensor, psi: float) -> torch.Tensor:
        """Moves w ([N, D] or [N, L, D]) toward `latent_avg`: avg + psi * (w - avg)."""
        if psi == 1:
            return w
        return self.latent_avg + psi * (w - self.latent_avg)

    def w_to_w_plus(self, w: torch.Tensor) -> torch.Tensor:
        """w: [N, D] → w_plus: [N, L, D] (the same w for every layer)."""
        return w[:, None, :].expand(-1, self.n_latent, -1).contiguous()

    def z_to_w_plus(self, z: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        """z: [N, D] → w_plus: [N, L, D], truncated toward `latent_avg`."""
        return self.w_to_w_plus(self.truncate(self.mapping(z), truncation))

    def w_plus_to_s(self, w_plus: torch.Tensor) -> list[torch.Tensor]:
        """w_plus: [N, L, D] → s: list of [N, dim_l] (one per style layer, in S order)."""
        return [conv.modulation(w_plus[:, w_idx]) for _, conv, _, _, w_idx in self._style_modules()]

    def s_to_flat(self, s: list[torch.Tensor]) -> torch.Tensor:
        """s list → [N, s_dim] (the 9088-dim vector for FFHQ-1024)."""
        return torch.cat(s, dim=1)

    def flat_to_s(self, s_flat: torch.Tensor) -> list[torch.Tensor]:
        """[N, s_dim] → s list."""
        return list(torch.split(s_flat, [layer.dim for layer in self.style_layers], dim=1))

    @torch.no_grad()
    def mean_latent(self, n: int = 4096, seed: int = 0) -> torch.Tensor:
        """Mean of the mapping output over `n` random z (used when a checkpoint lacks `latent_avg`)."""
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.style_dim, generator=g).to(self.device)
        return self.mapping(z).mean(0)

    # ----------------------------------------------------------------------------------------- synthesis
    def noise_buffers(self) -> list[torch.Tensor]:
        return [getattr(self.noises, f"noise_{i}") for i in range(self.config.num_noises)]

    def synthesis(self, s: list[torch.Tensor], noise: list[torch.Tensor] | None = None,
                  until_resolution: int | None = None,
                  start: tuple[int, torch.Tensor, torch.Tensor | None] | None = None) -> torch.Tensor:
        """Renders from style vectors.

        Args:
            s: list of `num_styles` tensors [N, dim_l] (see `w_plus_to_s`).
            noise: per-layer noise maps [N or 1, 1, R, R]; default the stored buffers (deterministic).
            until_resolution: stop after the ToRGB at this resolution and return the skip image there
                (cheap previews at CLIP's input size); default the full resolution.
            start: (style layer index i, x, skip) from `synthesis_prefix`: resume at layer i, whose inputs these
                are ([1 or N, C, H, W] each; skip None before the first ToRGB), so layers before i (and their
                entries in s) are not used. Re-rendering many edits of one layer from one prefix saves the
                layers before it.

        Returns:
            img: [N, 3, R, R] float, roughly in [-1, 1].
        """
        if len(s) != self.num_styles:
            raise ValueError(f"expected {self.num_styles} style tensors, got {len(s)}")
        noise = self.noise_buffers() if noise is None else noise
        stop = self.size if until_resolution is None else until_resolution
        if stop not in self.config.channels():
            raise ValueError(f"until_resolution must be a power of two in 4..{self.size}, got {stop}")
        last = 1 if stop == 4 else 3 * (stop.bit_length() - 4) + 4  # the ToRGB at `stop`
        n = s[-1].shape[0]
        if start is None:
            first, skip = 0, None
            # channels_last lets oneDNN run the convolutions and the depthwise blur without layout reorders.
            x = self.input(n).contiguous(memory_format=torch.channels_last)
        else:
            first, x, skip = start
            if first > last:
                raise ValueError(f"start layer {first} lies beyond the ToRGB at resolution {stop}")
            x = x.expand(n, -1, -1, -1).contiguous(memory_format=torch.channels_last) if x.shape[0] != n else x
            skip = skip.expand(n, -1, -1, -1) if skip is not None and skip.shape[0] != n else skip
        for i in range(first, last + 1):
            x, skip = self._style_layer_step(i, x, skip, s[i], noise)
        return skip.contiguous()

    @torch.no_grad()
    def synthesis_prefix(self, s: list[torch.Tensor], layer_index: int,
                         noise: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The inputs (x, skip) of style layer `layer_index` for codes s ([N, dim_l] each): pass them as
        `synthesis(..., start=(layer_index, x, skip))` to render edits of that layer or later ones."""
        noise = self.noise_buffers() if noise is None else noise
        x, skip = self.input(s[0].shape[0]).contiguous(memory_format=torch.channels_last), None
        for i in range(layer_index):
            x, skip = self._style_layer_step(i, x, skip, s[i], noise)
        return x, skip

    def _style_layer_step(self, i: int, x: torch.Tensor, skip: torch.Tensor | None, s_i: torch.Tensor,
                          noise: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Style layer i (S order: conv1, to_rgb1, then per block: conv up, conv, ToRGB) → (x, skip)."""
        if i == 0:
            return self.conv1(x, s_i, noise[0], input_gain=1.0), skip
        if i == 1:
            return x, self.to_rgb1(x, s_i)
        block, kind = divmod(i - 2, 3)
        if kind < 2:
            return self.convs[2 * block + kind](x, s_i, noise[2 * block + kind + 1]), skip
        return x, self.to_rgbs[block](x, s_i, skip)

    def synthesis_w_plus(self, w_plus: torch.Tensor, **kwargs) -> torch.Tensor:
        """w_plus: [N, L, D] → img [N, 3, R, R]; kwargs as in `synthesis`."""
        return self.synthesis(self.w_plus_to_s(w_plus), **kwargs)

    def forward(self, z: torch.Tensor, truncation: float = 1.0, **kwargs) -> torch.Tensor:
        """z: [N, D] → img [N, 3, R, R]."""
        return self.synthesis_w_plus(self.z_to_w_plus(z, truncation), **kwargs)
