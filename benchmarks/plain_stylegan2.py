"""A plain forward pass in the upstream (rosinality) design, over the weights of our `Generator`.

Used as the equivalence oracle in tests and as the baseline in the speed benchmark: per-sample
modulated weights in a grouped convolution, stride-2 transposed conv then a separate blur, and the
reference ops (zero-insertion upfirdn2d), exactly as the upstream module layout describes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ops import reference
from styleclip.models.generator import Generator, ModulatedConv2d


def _modulated_conv(conv: ModulatedConv2d, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    n, in_ch, h, w = x.shape
    out_ch, k = conv.out_channel, conv.kernel_size
    weight = conv.scale * conv.weight * s.view(n, 1, in_ch, 1, 1)  # [N, out, in, k, k]
    if conv.demodulate:
        demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)
        weight = weight * demod.view(n, out_ch, 1, 1, 1)
    x = x.reshape(1, n * in_ch, h, w)
    if conv.upsample:
        weight = weight.transpose(1, 2).reshape(n * in_ch, out_ch, k, k)
        out = F.conv_transpose2d(x, weight, padding=0, stride=2, groups=n)
        out = out.view(n, out_ch, out.shape[2], out.shape[3])
        return reference.upfirdn2d(out, conv.blur.kernel, pad=conv.blur.pad)
    out = F.conv2d(x, weight.view(n * out_ch, in_ch, k, k), padding=k // 2, groups=n)
    return out.view(n, out_ch, h, w)


def _styled(block, x, s, noise):
    x = _modulated_conv(block.conv, x, s)
    x = x + block.noise.weight * noise
    return F.leaky_relu(x + block.activate.bias.view(1, -1, 1, 1), 0.2) * math.sqrt(2)


def _to_rgb(block, x, s, skip):
    out = _modulated_conv(block.conv, x, s) + block.bias
    if skip is not None:
        up = block.upsample
        out = out + reference.upfirdn2d(skip, up.kernel, up=up.factor, pad=up.pad)
    return out


def plain_synthesis(g: Generator, w_plus: torch.Tensor) -> torch.Tensor:
    """w_plus: [N, L, D] → img [N, 3, R, R], upstream-style, with the generator's stored noise buffers
    (differentiable; wrap it in torch.no_grad() for timing)."""
    noise = g.noise_buffers()
    s = [conv.modulation(w_plus[:, w_idx]) for _, conv, _, _, w_idx in g._style_modules()]
    x = g.input.input.repeat(w_plus.shape[0], 1, 1, 1)
    x = _styled(g.conv1, x, s[0], noise[0])
    skip = _to_rgb(g.to_rgb1, x, s[1], None)
    for b in range(len(g.to_rgbs)):
        x = _styled(g.convs[2 * b], x, s[3 * b + 2], noise[2 * b + 1])
        x = _styled(g.convs[2 * b + 1], x, s[3 * b + 3], noise[2 * b + 2])
        skip = _to_rgb(g.to_rgbs[b], x, s[3 * b + 4], skip)
    return skip
