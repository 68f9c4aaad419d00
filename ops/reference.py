"""Pure-PyTorch reference implementations of StyleGAN2's custom ops (upfirdn2d, bias + leaky ReLU)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _normalize_pad(pad: int | tuple[int, ...]) -> tuple[int, int, int, int]:
    """Returns (pad_x0, pad_x1, pad_y0, pad_y1) from an int, a (p0, p1) pair or a 4-tuple."""
    if isinstance(pad, int):
        return pad, pad, pad, pad
    pad = tuple(int(p) for p in pad)
    if len(pad) == 2:
        return pad[0], pad[1], pad[0], pad[1]
    if len(pad) == 4:
        return pad  # type: ignore[return-value]
    raise ValueError(f"pad must be an int, a pair or a 4-tuple, got {pad!r}")


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad: int | tuple[int, ...] = 0) -> torch.Tensor:
    """Upsample by zero insertion, pad, convolve with a 2-D FIR kernel, then downsample.

    Args:
        x: [N, C, H, W] input.
        kernel: [kh, kw] FIR filter, applied as a true convolution (flipped), as upstream does.
        up: integer upsampling factor (zeros inserted after each sample).
        down: integer downsampling factor (keeps every `down`-th sample, starting at 0).
        pad: (p0, p1) applied to both axes, or (px0, px1, py0, py1); negative values crop.

    Returns:
        [N, C, (H*up + py0 + py1 - kh) // down + 1, (W*up + px0 + px1 - kw) // down + 1].
    """
    px0, px1, py0, py1 = _normalize_pad(pad)
    n, c, h, w = x.shape
    kh, kw = kernel.shape
    kernel = kernel.to(x.dtype)
    if down == 1 and up == 1 and px0 == px1 >= 0 and py0 == py1 >= 0:
        # Symmetric padding inside the convolution: no padded copy of a large activation.
        weight = torch.flip(kernel, [0, 1])[None, None].expand(c, 1, kh, kw)
        return F.conv2d(x, weight, padding=(py0, px0), groups=c)
    if down == 1 and up > 1:
        # Zero insertion + padded correlation with the flipped kernel == a strided transposed convolution
        # (a true convolution with the kernel), cropped by P = k - 1 - p0 on both sides; the end is matched
        # with output_padding. Avoids materialising the zero-inserted tensor (4x the data for up=2).
        pad_y, pad_x = kh - 1 - py0, kw - 1 - px0
        out_pad_y, out_pad_x = up + py1 - py0 - 1, up + px1 - px0 - 1
        if pad_y >= 0 and pad_x >= 0 and 0 <= out_pad_y < up and 0 <= out_pad_x < up:
            weight = kernel[None, None].expand(c, 1, kh, kw)
            return F.conv_transpose2d(x, weight, stride=up, padding=(pad_y, pad_x),
                                      output_padding=(out_pad_y, out_pad_x), groups=c)
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, (max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)))
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    weight = torch.flip(kernel, [0, 1])[None, None].expand(c, 1, kh, kw)
    x = F.conv2d(x, weight, groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor | None = None, negative_slope: float = 0.2,
                     scale: float = math.sqrt(2)) -> torch.Tensor:
    """leaky_relu(x + bias) * scale, with bias broadcast along dim 1 (the channel axis).

    Args:
        x: [N, C, ...] input (2-D or 4-D).
        bias: [C] or None.
    """
    if bias is not None:
        x = x + bias.to(x.dtype).reshape(1, -1, *([1] * (x.ndim - 2)))
    return F.leaky_relu(x, negative_slope) * scale
