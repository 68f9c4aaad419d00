"""CPU tests of the CUDA dispatch, autograd wiring and build-failure handling, without a GPU.

The compiled module is replaced by a pure-PyTorch stand-in with the same three functions, and
`ops._is_cuda` is patched so that CPU tensors take the CUDA branch. This checks everything
except the kernels themselves: the backward pads of upfirdn2d, double-backward, bias gradients,
the warning-once fallback and impl="cuda" errors.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import ops
from ops import _autograd, _plugin, reference


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threading only adds overhead
    yield
    torch.set_num_threads(before)


class FakeKernels:
    """Stand-in for the compiled module: same signatures, computed with the reference."""

    calls = 0

    @staticmethod
    def upfirdn2d(x, kernel, up, down, px0, px1, py0, py1):
        FakeKernels.calls += 1
        return reference.upfirdn2d(x, kernel, up, down, (px0, px1, py0, py1))

    @staticmethod
    def bias_act(x, bias, slope, scale):
        FakeKernels.calls += 1
        return reference.fused_leaky_relu(x, bias, slope, scale)

    @staticmethod
    def leaky_grad(g, out, slope, scale):
        FakeKernels.calls += 1
        return g * scale * torch.where(out * scale > 0, 1.0, slope).to(g.dtype)


@pytest.fixture
def fresh_plugin(monkeypatch):
    """Fresh, not-built plugin state; everything is restored after the test."""
    monkeypatch.setattr(_plugin, "_state", {"status": _plugin.NOT_BUILT, "module": None, "error": None,
                                            "build_dir": None})
    monkeypatch.setattr(ops, "_default_impl", "auto")
    return monkeypatch


@pytest.fixture
def fake_cuda(fresh_plugin):
    """CPU tensors take the CUDA path, and the "build" yields FakeKernels."""
    fresh_plugin.setattr(ops, "_is_cuda", lambda t: True)
    fresh_plugin.setattr(_plugin, "_loader", lambda: FakeKernels)
    FakeKernels.calls = 0
    return FakeKernels


UPFIRDN_CASES = [  # (up, down, pad, kernel shape, input H, W): generator-like and odd ones
    (2, 1, (2, 1), (4, 4), 4, 4), (1, 2, (1, 1), (4, 4), 8, 8), (1, 1, 1, (3, 3), 5, 4),
    (2, 2, (-1, 2, 0, 1), (2, 3), 5, 6), (3, 1, (1, 0, 2, -1), (1, 4), 3, 4),
    (1, 3, (0, 2, 1, 0), (3, 2), 7, 5),
    (1, 1, (-2, -1, 1, 3), (2, 2), 6, 6),
]


@pytest.mark.parametrize("up,down,pad,kshape,h,w", UPFIRDN_CASES)
def test_upfirdn2d_cuda_path_grads_match_reference(fake_cuda, up, down, pad, kshape, h, w):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, h, w, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(*kshape, generator=gen, dtype=torch.float64)
    y = ops.upfirdn2d(x, k, up, down, pad, impl="cuda")
    assert fake_cuda.calls == 1
    y_ref = reference.upfirdn2d(x, k, up, down, pad)
    torch.testing.assert_close(y, y_ref)
    # First and second order against autograd through the reference.
    g = torch.randn_like(y).requires_grad_()
    (gx,) = torch.autograd.grad(y, x, g, create_graph=True)
    (gx_ref,) = torch.autograd.grad(y_ref, x, g, create_graph=True)
    torch.testing.assert_close(gx, gx_ref)
    # Second order: gx is linear in g, and its derivative is the forward op again.
    v = torch.randn_like(gx)
    (gg,) = torch.autograd.grad((gx * gx).sum() + (gx * v).sum(), g)
    (gg_ref,) = torch.autograd.grad((gx_ref * gx_ref).sum() + (gx_ref * v).sum(), g)
    torch.testing.assert_close(gg, gg_ref)
    # And the Function on its own, numerically.
    pad4 = reference._normalize_pad(pad)
    fn = lambda x: _autograd.UpFirDn2d.apply(x, k, up, down, pad4, FakeKernels)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_kernel_requiring_grad_falls_back_under_auto_and_raises_under_cuda(fake_cuda):
    x = torch.randn(1, 1, 4, 4)
    k = torch.ones(3, 3, requires_grad=True)
    y = ops.upfirdn2d(x, k, pad=1)  # auto -> reference, so k gets a gradient
    y.sum().backward()
    assert k.grad is not None and fake_cuda.calls == 0
    with pytest.raises(RuntimeError, match="FIR kernel"):
        ops.upfirdn2d(x, k, pad=1, impl="cuda")
    with torch.no_grad():
        ops.upfirdn2d(x, k, pad=1)
    assert fake_cuda.calls == 1


@pytest.mark.parametrize("shape", [(4, 6), (2, 3, 4, 5)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_leaky_relu_cuda_path_grads_match_reference(fake_cuda, shape, with_bias):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    x = (x + 0.1 * x.sign()).requires_grad_()  # away from the kink
    b = 0.01 * torch.randn(shape[1], generator=gen, dtype=torch.float64)
    b = b.requires_grad_() if with_bias else None
    inputs = (x, b) if with_bias else (x,)
    fn = lambda x, b=None: ops.fused_leaky_relu(x, b, 0.2, math.sqrt(2), impl="cuda")  # noqa: E731
    ref = lambda x, b=None: reference.fused_leaky_relu(x, b, 0.2, math.sqrt(2))  # noqa: E731
    torch.testing.assert_close(fn(*inputs), ref(*inputs))
    assert fake_cuda.calls == 1
    g = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    grads = torch.autograd.grad(fn(*inputs), inputs, g, create_graph=True)
    grads_ref = torch.autograd.grad(ref(*inputs), inputs, g, create_graph=True)
    for a, b_ in zip(grads, grads_ref):
        torch.testing.assert_close(a, b_)
    # Second order w.r.t. the incoming gradient (what a gradient penalty differentiates).
    torch.testing.assert_close(torch.autograd.grad(grads[0].pow(2).sum(), g)[0],
                               torch.autograd.grad(grads_ref[0].pow(2).sum(), g)[0])
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_negative_slope_falls_back_under_auto(fake_cuda):
    x = torch.randn(2, 3)
    torch.testing.assert_close(ops.fused_leaky_relu(x, None, -0.1), reference.fused_leaky_relu(x, None, -0.1))
    assert fake_cuda.calls == 0
    with pytest.raises(RuntimeError, match="negative_slope"):
        ops.fused_leaky_relu(x, None, -0.1, impl="cuda")


def test_ref_default_bypasses_kernels(fake_cuda):
    ops.set_default_impl("ref")
    ops.fused_leaky_relu(torch.randn(2, 3))
    assert fake_cuda.calls == 0 and _plugin.status() == _plugin.NOT_BUILT


# ---------------------------------------------------------------- failed build: warn once

def test_failed_build_warns_once_and_falls_back(fresh_plugin):
    attempts = []

    def broken_loader():
        attempts.append(1)
        raise OSError("nvcc not found")

    fresh_plugin.setattr(_plugin, "_loader", broken_loader)
    fresh_plugin.setattr(ops, "_is_cuda", lambda t: True)
    x = torch.randn(2, 3, 6, 6)
    k = torch.tensor([1.0, 3.0, 3.0, 1.0]).outer(torch.tensor([1.0, 3.0, 3.0, 1.0])) / 64
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            torch.testing.assert_close(ops.upfirdn2d(x, k, 2, 1, (2, 1)),
                                       reference.upfirdn2d(x, k, 2, 1, (2, 1)))
            torch.testing.assert_close(ops.fused_leaky_relu(x, torch.ones(3)),
                                       reference.fused_leaky_relu(x, torch.ones(3)))
        assert _plugin.get_plugin() is None
    ours = [w for w in caught if "styleclip ops" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert issubclass(ours[0].category, RuntimeWarning)
    assert "nvcc not found" in str(ours[0].message) and "reference" in str(ours[0].message)
    assert len(attempts) == 1  # remembered, never retried
    assert _plugin.status() == _plugin.FAILED
    assert "nvcc not found" in _plugin.build_error()
    with pytest.raises(RuntimeError, match="unavailable: OSError: nvcc not found"):
        ops.upfirdn2d(x, k, impl="cuda")
    if torch.cuda.is_available():
        assert ops.describe("cuda").startswith("ref (CUDA build failed")


def test_successful_build_is_memoised(fake_cuda):
    loads = []
    fake_cuda_loader = _plugin._loader
    _plugin._loader = lambda: (loads.append(1), fake_cuda_loader())[1]
    try:
        for _ in range(3):
            ops.fused_leaky_relu(torch.randn(2, 3))
    finally:
        _plugin._loader = fake_cuda_loader
    assert loads == [1] and _plugin.status() == _plugin.BUILT


def test_source_hash_is_stable_and_covers_sources():
    h = _plugin.source_hash()
    assert h == _plugin.source_hash() and len(h) == 16
    for name in _plugin.HASHED:
        assert (_plugin.CSRC_DIR / name).is_file()
