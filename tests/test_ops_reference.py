"""CPU tests of ops.reference against an independent numpy oracle, plus the impl switch.

The oracle implements upfirdn2d literally from its definition with explicit loops (zero-insert
upsample, pad/crop, true convolution with the flipped kernel, keep every down-th sample), so it
shares no code or tricks (reshape/F.pad/conv2d) with the reference.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ops
from ops import _plugin, reference

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """These tensors are tiny: intra-op threading only adds overhead (~20 ms/conv on 2 cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- oracle

def oracle_pads(pad) -> tuple[int, int, int, int]:
    """(px0, px1, py0, py1): int -> all four; (a, b) -> (a, b) on both axes; 4-tuple as is."""
    if isinstance(pad, int):
        return (pad,) * 4
    return (pad[0], pad[1], pad[0], pad[1]) if len(pad) == 2 else tuple(pad)


def oracle_upfirdn2d(x: np.ndarray, k: np.ndarray, up: int, down: int, pad) -> np.ndarray:
    """x: [N, C, H, W], k: [kh, kw] -> [N, C, out_h, out_w], by explicit loops."""
    px0, px1, py0, py1 = oracle_pads(pad)
    n, c, h, w = x.shape
    kh, kw = k.shape
    # 1. upsample: sample (i, j) goes to (i*up, j*up); the up-1 slots AFTER it stay zero.
    uh, uw = h * up, w * up
    u = np.zeros((n, c, uh, uw))
    for i in range(h):
        for j in range(w):
            u[:, :, i * up, j * up] = x[:, :, i, j]
    # 2. pad (or crop, for negative values): padded[i, j] = u[i - py0, j - px0] when inside.
    ph, pw = uh + py0 + py1, uw + px0 + px1
    p = np.zeros((n, c, ph, pw))
    for i in range(ph):
        if 0 <= i - py0 < uh:
            for j in range(pw):
                if 0 <= j - px0 < uw:
                    p[:, :, i, j] = u[:, :, i - py0, j - px0]
    # 3. "valid" true convolution: out[i, j] = sum_ab k[a, b] * p[i + kh-1-a, j + kw-1-b],
    #    accumulated one tap (a, b) at a time as a shifted copy of p.
    ch, cw = ph - kh + 1, pw - kw + 1
    conv = np.zeros((n, c, ch, cw))
    for a in range(kh):
        for b in range(kw):
            conv += k[a, b] * p[:, :, kh - 1 - a: kh - 1 - a + ch, kw - 1 - b: kw - 1 - b + cw]
    # 4. downsample: keep rows/cols 0, down, 2*down, ...
    oh, ow = (ch - 1) // down + 1, (cw - 1) // down + 1
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = conv[:, :, i * down, j * down]
    return out


def oracle_leaky(x: np.ndarray, bias, slope: float, scale: float) -> np.ndarray:
    if bias is not None:
        x = x + bias.reshape((1, -1) + (1,) * (x.ndim - 2))
    return np.where(x > 0, x, x * slope) * scale


# ---------------------------------------------------------------- upfirdn2d vs oracle

KERNELS = [(1, 1), (3, 3), (4, 4), (2, 3), (1, 4), (4, 2)]
PADS = [0, 1, (1, 2), (-1, 2), (2, -1, 0, 1), (-2, 1, 3, -1)]
UPS_DOWNS = [(1, 1), (2, 1), (1, 2), (3, 1), (1, 3), (2, 2), (3, 2)]


def _out_len(size, up, down, p0, p1, k):
    return (size * up + p0 + p1 - k) // down + 1


@pytest.mark.parametrize("kshape", KERNELS, ids=lambda s: f"k{s[0]}x{s[1]}")
def test_upfirdn2d_matches_oracle(kshape):
    gen = torch.Generator().manual_seed(hash(kshape) % 1000)
    x = torch.randn(2, 3, 5, 4, generator=gen, dtype=torch.float64)  # non-square input
    k = torch.randn(*kshape, generator=gen, dtype=torch.float64)     # asymmetric: flips matter
    checked = 0
    for (up, down), pad in itertools.product(UPS_DOWNS, PADS):
        px0, px1, py0, py1 = oracle_pads(pad)
        if min(_out_len(5, up, down, py0, py1, kshape[0]), _out_len(4, up, down, px0, px1, kshape[1])) < 1:
            continue
        want = oracle_upfirdn2d(x.numpy(), k.numpy(), up, down, pad)
        got = reference.upfirdn2d(x, k, up=up, down=down, pad=pad)
        assert got.shape == want.shape, (up, down, pad)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12, err_msg=str((up, down, pad)))
        # The public function with impl="ref" is the same path.
        torch.testing.assert_close(ops.upfirdn2d(x, k, up, down, pad, impl="ref"), got)
        checked += 1
    assert checked > 30


def test_upfirdn2d_float32_and_shape_formula():
    x = torch.randn(1, 2, 8, 6)
    k = torch.ones(4, 4) / 16
    y = reference.upfirdn2d(x, k, up=2, down=1, pad=(2, 1))
    assert y.shape == (1, 2, _out_len(8, 2, 1, 2, 1, 4), _out_len(6, 2, 1, 2, 1, 4)) == (1, 2, 16, 12)
    want = oracle_upfirdn2d(x.double().numpy(), k.double().numpy(), 2, 1, (2, 1))
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-5, atol=1e-6)


def test_upfirdn2d_bad_pad_raises():
    with pytest.raises(ValueError):
        reference.upfirdn2d(torch.zeros(1, 1, 4, 4), torch.ones(2, 2), pad=(1, 2, 3))


# ---------------------------------------------------------------- leaky ReLU vs oracle

@pytest.mark.parametrize("shape", [(4, 7), (2, 3, 5, 4)])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("slope,scale", [(0.2, math.sqrt(2)), (0.0, 1.0), (0.5, 0.7)])
def test_fused_leaky_relu_matches_oracle(shape, with_bias, slope, scale):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    b = torch.randn(shape[1], generator=gen, dtype=torch.float64) if with_bias else None
    want = oracle_leaky(x.numpy(), None if b is None else b.numpy(), slope, scale)
    got = ops.fused_leaky_relu(x, b, slope, scale, impl="ref")
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- gradients (float64)

@pytest.mark.parametrize("up,down,pad,kshape", [
    (2, 1, (2, 1), (4, 4)), (1, 2, (1, 1), (3, 3)), (3, 2, (-1, 2, 1, -1), (2, 3)),
])
def test_upfirdn2d_gradcheck_ref(up, down, pad, kshape):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(*kshape, generator=gen, dtype=torch.float64, requires_grad=True)
    fn = lambda x, k: ops.upfirdn2d(x, k, up, down, pad, impl="ref")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, k))
    assert torch.autograd.gradgradcheck(fn, (x, k))


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4, 4)])
def test_fused_leaky_relu_gradcheck_ref(shape):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    x = (x + 0.1 * x.sign()).requires_grad_()  # keep finite differences away from the kink at 0
    b = torch.zeros(shape[1], dtype=torch.float64, requires_grad=True)
    fn = lambda x, b: ops.fused_leaky_relu(x, b, impl="ref")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


# ---------------------------------------------------------------- impl switch

def test_bad_impl_string_raises_value_error():
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="impl must be one of"):
        ops.upfirdn2d(x, torch.ones(2, 2), impl="fast")
    with pytest.raises(ValueError, match="impl must be one of"):
        ops.fused_leaky_relu(x, impl="CUDA")
    with pytest.raises(ValueError):
        ops.set_default_impl("gpu")


def test_impl_cuda_on_cpu_tensor_raises_clear_runtime_error():
    x = torch.zeros(1, 2, 4, 4)
    with pytest.raises(RuntimeError, match=r"needs a CUDA tensor.*impl='ref'"):
        ops.upfirdn2d(x, torch.ones(2, 2), impl="cuda")
    with pytest.raises(RuntimeError, match="needs a CUDA tensor"):
        ops.fused_leaky_relu(x, torch.zeros(2), impl="cuda")
    assert _plugin.status() == _plugin.NOT_BUILT  # the check happens before any build attempt


def test_auto_on_cpu_is_reference_and_reports_ref(caplog):
    x = torch.randn(1, 2, 4, 4)
    k = torch.ones(3, 3)
    torch.testing.assert_close(ops.upfirdn2d(x, k, pad=1), reference.upfirdn2d(x, k, pad=1))
    assert ops.active_impl("cpu") == "ref"
    assert ops.active_impl(torch.device("cpu")) == "ref"
    with caplog.at_level(logging.INFO):
        text = ops.log_active_impl(logging.getLogger("test.ops"), device="cpu")
    assert text.startswith("ref")
    assert "custom ops: ref" in caplog.text
    if not torch.cuda.is_available():
        assert text == "ref (no CUDA device)"
        assert ops.describe() == "ref (no CUDA device)"
        assert ops.active_impl("cuda") == "ref"
    assert _plugin.status() == _plugin.NOT_BUILT


def test_set_default_impl_ref(monkeypatch):
    monkeypatch.setattr(ops, "_default_impl", "auto")
    ops.set_default_impl("ref")
    assert ops.get_default_impl() == "ref"
    assert ops.active_impl("cuda") == "ref"
    assert ops.describe("cuda").startswith("ref (forced")
    ops.set_default_impl("auto")
    assert ops.get_default_impl() == "auto"


# ---------------------------------------------------------------- laziness

def test_import_and_cpu_calls_build_nothing(tmp_path):
    """In a fresh interpreter: no cpp_extension import, no build dir, plugin "not built"."""
    cache = tmp_path / "cache"
    code = (
        "import sys, torch, ops\n"
        "assert 'torch.utils.cpp_extension' not in sys.modules, 'imported eagerly'\n"
        "x = torch.randn(1, 2, 6, 6)\n"
        "ops.upfirdn2d(x, torch.ones(3, 3), up=2, pad=1); ops.fused_leaky_relu(x, torch.zeros(2))\n"
        "ops.active_impl('cpu'); ops.describe('cpu')\n"
        "assert 'torch.utils.cpp_extension' not in sys.modules, 'imported by a CPU call'\n"
        "print(ops._plugin.status())\n"
    )
    env = {**os.environ, "STYLECLIP_OPS_CACHE": str(cache), "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "not built"
    assert not cache.exists()


def test_env_var_selects_default_and_typo_does_not_break_import():
    code = (
        "import importlib, os, warnings, ops\n"
        "for value in ('ref', 'bogus'):\n"
        f"    os.environ[{ops.ENV_VAR!r}] = value\n"
        "    with warnings.catch_warnings(record=True) as caught:\n"
        "        warnings.simplefilter('always')\n"
        "        importlib.reload(ops)\n"
        "    print(ops.get_default_impl(), len(caught))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["ref", "0", "auto", "1"]
