"""CUDA kernels vs the reference: forward, gradient and double gradient (needs a GPU).

Run with `python3 -m pytest tests/test_ops_cuda.py -m gpu -q`; the first test builds the kernels
(about a minute, cached under ~/.cache/styleclip_ops afterwards).
"""

from __future__ import annotations

import math

import pytest
import torch

import ops
from ops import _plugin, reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

DEV = "cuda"
TOL = {  # (atol, rtol) against a float64 reference
    torch.float64: (1e-10, 1e-8),
    torch.float32: (2e-5, 1e-5),
    torch.float16: (2e-2, 1e-2),
}

FIR_CASES = [  # (up, down, pad, kernel shape, [N, C, H, W])
    (2, 1, (2, 1), (4, 4), (2, 8, 8, 8)),       # generator upsample (pad for up=2, 4-tap)
    (1, 1, (2, 1), (4, 4), (2, 8, 17, 17)),     # blur after a transposed conv
    (1, 2, (1, 1), (4, 4), (2, 8, 16, 16)),     # downsample
    (1, 1, 1, (3, 3), (1, 3, 7, 5)),
    (2, 2, (-1, 2, 0, 1), (2, 3), (1, 4, 6, 9)),
    (3, 1, (1, 0, 2, -1), (1, 4), (2, 2, 5, 4)),
    (1, 3, (0, 2, 1, 0), (3, 2), (1, 2, 11, 7)),
    (4, 1, (3, 2), (6, 6), (1, 2, 5, 5)),
]


@pytest.fixture(scope="module", autouse=True)
def kernels():
    module = _plugin.get_plugin(strict=True)  # fail loudly here rather than fall back silently
    assert ops.active_impl(DEV) == "cuda"
    assert ops.describe(DEV).startswith("cuda")
    return module


def _fir_kernel(kshape, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*kshape, generator=gen, dtype=torch.float64).to(DEV)


def _close(got, want, dtype):
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got.double(), want.double(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("up,down,pad,kshape,shape", FIR_CASES)
def test_upfirdn2d_forward_parity(up, down, pad, kshape, shape, dtype):
    x64 = torch.randn(*shape, device=DEV, dtype=torch.float64)
    k = _fir_kernel(kshape, 0) / math.prod(kshape) ** 0.5
    want = reference.upfirdn2d(x64, k, up, down, pad)
    got = ops.upfirdn2d(x64.to(dtype), k, up, down, pad, impl="cuda")  # taps cast by the binding
    assert got.dtype == dtype and got.shape == want.shape
    _close(got, want, dtype)


@pytest.mark.parametrize("up,down,pad,kshape,shape", FIR_CASES[:6])
def test_upfirdn2d_grad_and_double_grad_parity(up, down, pad, kshape, shape):
    k = _fir_kernel(kshape, 1)
    x = torch.randn(*shape, device=DEV, dtype=torch.float64, requires_grad=True)
    y, y_ref = (ops.upfirdn2d(x, k, up, down, pad, impl=i) for i in ("cuda", "ref"))
    _close(y, y_ref, torch.float64)
    g = torch.randn_like(y).requires_grad_()
    (gx,) = torch.autograd.grad(y, x, g, create_graph=True)
    (gx_ref,) = torch.autograd.grad(y_ref, x, g, create_graph=True)
    _close(gx, gx_ref, torch.float64)
    (gg,) = torch.autograd.grad(gx.pow(2).sum(), g)
    (gg_ref,) = torch.autograd.grad(gx_ref.pow(2).sum(), g)
    _close(gg, gg_ref, torch.float64)


@pytest.mark.parametrize("up,down,pad,kshape", [(2, 1, (2, 1), (4, 4)), (1, 2, (1, 1), (3, 3)),
                                                (3, 2, (-1, 2, 1, -1), (2, 3))])
def test_upfirdn2d_gradcheck_cuda(up, down, pad, kshape):
    k = _fir_kernel(kshape, 2)
    x = torch.randn(1, 2, 5, 4, device=DEV, dtype=torch.float64, requires_grad=True)
    fn = lambda x: ops.upfirdn2d(x, k, up, down, pad, impl="cuda")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_upfirdn2d_grad_low_precision(dtype):
    k = torch.outer(*(torch.tensor([1.0, 3.0, 3.0, 1.0], device=DEV),) * 2) / 16  # generator blur * up^2
    x = torch.randn(2, 16, 16, 16, device=DEV, dtype=torch.float64, requires_grad=True)
    y_ref = reference.upfirdn2d(x, k.double(), 2, 1, (2, 1))
    g = torch.randn_like(y_ref)
    (gx_ref,) = torch.autograd.grad(y_ref, x, g)
    xl = x.detach().to(dtype).requires_grad_()
    y = ops.upfirdn2d(xl, k, 2, 1, (2, 1), impl="cuda")
    (gx,) = torch.autograd.grad(y, xl, g.to(dtype))
    assert gx.dtype == dtype
    _close(y, y_ref, dtype)
    _close(gx, gx_ref, dtype)


def test_upfirdn2d_generator_sized_and_non_contiguous():
    k = torch.outer(*(torch.tensor([1.0, 3.0, 3.0, 1.0], device=DEV),) * 2) / 16
    x = torch.randn(4, 256, 64, 64, device=DEV).to(memory_format=torch.channels_last)
    y = ops.upfirdn2d(x, k, 2, 1, (2, 1), impl="cuda")
    torch.testing.assert_close(y, reference.upfirdn2d(x.contiguous(), k, 2, 1, (2, 1)), atol=1e-4, rtol=1e-4)
    xs = torch.randn(2, 8, 20, 20, device=DEV)[:, ::2, 1:-1, 2:]  # strided view
    got = ops.upfirdn2d(xs, k, 1, 2, 1, impl="cuda")
    torch.testing.assert_close(got, reference.upfirdn2d(xs, k, 1, 2, 1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("shape", [(4, 512), (2, 8, 9, 7)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_leaky_relu_forward_parity(dtype, shape, with_bias):
    x = torch.randn(*shape, device=DEV, dtype=torch.float64)
    b = torch.randn(shape[1], device=DEV, dtype=torch.float64) if with_bias else None
    want = reference.fused_leaky_relu(x, b)
    got = ops.fused_leaky_relu(x.to(dtype), None if b is None else b.to(dtype), impl="cuda")
    assert got.dtype == dtype
    _close(got, want, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(4, 64), (2, 8, 9, 7)])
def test_fused_leaky_relu_grad_and_double_grad_parity(dtype, shape):
    x = torch.randn(*shape, device=DEV, dtype=torch.float64)
    x = (x + 0.05 * x.sign()).to(dtype).requires_grad_()  # no sign flips from rounding
    b = torch.zeros(shape[1], device=DEV, dtype=dtype, requires_grad=True)
    g = torch.randn(*shape, device=DEV, dtype=dtype, requires_grad=True)
    res = {}
    for impl in ("cuda", "ref"):
        out = ops.fused_leaky_relu(x, b, 0.2, math.sqrt(2), impl=impl)
        gx, gb = torch.autograd.grad(out, (x, b), g, create_graph=True)
        (gg,) = torch.autograd.grad(gx.pow(2).sum() + gb.sum(), g)
        res[impl] = (out, gx, gb, gg)
    for got, want in zip(res["cuda"], res["ref"]):
        atol, rtol = TOL[dtype]
        scale = 1.0 if got.ndim > 1 else math.prod(shape) / shape[1]  # bias grads are sums
        torch.testing.assert_close(got.double(), want.double(), atol=atol * scale * 4, rtol=rtol * 4)


def test_fused_leaky_relu_gradcheck_cuda():
    x = torch.randn(2, 3, 4, 4, device=DEV, dtype=torch.float64)
    x = (x + 0.1 * x.sign()).requires_grad_()
    b = (0.01 * torch.randn(3, device=DEV, dtype=torch.float64)).requires_grad_()
    fn = lambda x, b: ops.fused_leaky_relu(x, b, impl="cuda")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


def test_auto_uses_kernels_on_cuda_and_reference_on_cpu(kernels):
    x = torch.randn(1, 2, 4, 4, device=DEV)
    y = ops.fused_leaky_relu(x, torch.zeros(2, device=DEV))
    assert y.grad_fn is None  # no grad needed: still correct
    x.requires_grad_()
    y = ops.fused_leaky_relu(x, torch.zeros(2, device=DEV))
    assert type(y.grad_fn).__name__.startswith("FusedLeakyReLU")
    assert ops.active_impl("cpu") == "ref"
