"""Autograd wrappers around the compiled kernels (any order of differentiation).

The kernels only compute forwards; gradients are expressed with the same kernels:

* upfirdn2d is linear in x, and its adjoint is again an upfirdn2d: upsample the incoming gradient
  by `down`, convolve with the flipped kernel, downsample by `up`, with pads chosen so the result
  has x's shape (see `_grad_pads`). Its backward is therefore the same Function, which makes
  double-backward (and beyond) free.
* bias + leaky ReLU saves its output; d out / d pre only depends on the sign of the output, so the
  backward is `leaky_grad(g, out)`, which is linear in g with a piecewise-constant mask: its own
  backward is `leaky_grad(gg, out)` again, and nothing flows into `out`.

`backend` is any object with the three functions of ops/csrc/ops.cpp (`upfirdn2d`, `bias_act`,
`leaky_grad`); tests pass a pure-PyTorch or CPU-emulation backend to check this wiring without a GPU.
The FIR kernel is treated as a constant (it is a fixed buffer in StyleGAN2): no gradient for it.
"""

from __future__ import annotations

import torch
from torch.autograd import Function

Pad4 = tuple[int, int, int, int]


def out_size(size: int, up: int, down: int, p0: int, p1: int, k: int) -> int:
    """Output length along one axis: (size*up + p0 + p1 - k) // down + 1."""
    return (size * up + p0 + p1 - k) // down + 1


def _grad_pads(in_hw: tuple[int, int], out_hw: tuple[int, int], kernel_hw: tuple[int, int],
               up: int, down: int, pad: Pad4) -> Pad4:
    """Pads (px0, px1, py0, py1) of the adjoint upfirdn2d(g, flip(k), up=down, down=up, pads).

    Per axis with input length n, output length m, kernel length k, pads (p0, p1): the gradient
    is the correlation of the `down`-upsampled g with k, shifted so that tap 0 sees x's first
    upsampled sample: leading pad k - 1 - p0, trailing pad n*up - m*down + p0 (so that the
    convolution output has exactly n*up samples; downsampling by `up` then gives n).
    """
    (h, w), (oh, ow), (kh, kw) = in_hw, out_hw, kernel_hw
    px0, _, py0, _ = pad
    return (kw - 1 - px0, w * up - ow * down + px0, kh - 1 - py0, h * up - oh * down + py0)


class UpFirDn2d(Function):
    """y = upfirdn2d(x, kernel, up, down, pad) with x: [N, C, H, W], kernel: [kh, kw] (constant)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, kernel: torch.Tensor, up: int, down: int, pad: Pad4, backend):
        y = backend.upfirdn2d(x, kernel, up, down, *pad)
        ctx.save_for_backward(kernel)
        ctx.cfg = (up, down, pad, backend, tuple(x.shape[2:]), tuple(y.shape[2:]))
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        (kernel,) = ctx.saved_tensors
        up, down, pad, backend, in_hw, out_hw = ctx.cfg
        grad_x = None
        if ctx.needs_input_grad[0]:
            gpad = _grad_pads(in_hw, out_hw, tuple(kernel.shape), up, down, pad)
            grad_x = UpFirDn2d.apply(grad_y, kernel.flip([0, 1]), down, up, gpad, backend)
        return grad_x, None, None, None, None, None


class FusedLeakyReLU(Function):
    """out = leaky_relu(x + bias, slope) * scale; x: [N, C, ...], bias: [C] or None."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bias: torch.Tensor | None, slope: float, scale: float, backend):
        out = backend.bias_act(x, bias, slope, scale)
        ctx.save_for_backward(out)
        ctx.cfg = (slope, scale, backend, bias is not None, bias.dtype if bias is not None else None)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (out,) = ctx.saved_tensors
        slope, scale, backend, has_bias, bias_dtype = ctx.cfg
        grad_x = LeakyGrad.apply(grad_out, out, slope, scale, backend)
        grad_bias = None
        if has_bias and ctx.needs_input_grad[1]:
            dims = [0] + list(range(2, grad_x.ndim))  # everything but the channel axis
            grad_bias = grad_x.sum(dims).to(bias_dtype)
        return (grad_x if ctx.needs_input_grad[0] else None), grad_bias, None, None, None


class LeakyGrad(Function):
    """grad_x = g * scale * where(out*scale > 0, 1, slope); g, out: [N, C, ...]."""

    @staticmethod
    def forward(ctx, g: torch.Tensor, out: torch.Tensor, slope: float, scale: float, backend):
        ctx.save_for_backward(out)
        ctx.cfg = (slope, scale, backend)
        return backend.leaky_grad(g, out, slope, scale)

    @staticmethod
    def backward(ctx, gg: torch.Tensor):
        (out,) = ctx.saved_tensors
        slope, scale, backend = ctx.cfg
        # Linear in g with a mask that is constant almost everywhere: zero gradient for `out`.
        return LeakyGrad.apply(gg, out, slope, scale, backend), None, None, None, None
