"""Compiles the CUDA kernels (ops/csrc) with nvcc into a temp dir; no GPU needed.

Run with `python3 -m pytest tests/test_ops_build.py -m slow -q` (a minute or more on 2 cores).
When the built module can be imported (possible without a driver: CUDA is only touched when a
kernel launches), its CPU emulation entry points, which run the kernels' per-element code on the
host, are checked against the reference, including gradients through ops/_autograd.py.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ops import _autograd, _plugin, reference

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """Builds in a subprocess (fresh env/arch list, no state leaks); returns (dir, result, seconds)."""
    if shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME"):
        pytest.skip("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
    build_dir = tmp_path_factory.mktemp("styleclip_ops_build")
    env = dict(os.environ)
    if not torch.cuda.is_available() and not env.get("TORCH_CUDA_ARCH_LIST"):
        env["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"  # no device to query: A100 + H100
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 2))
    code = "import sys; from ops import _plugin; _plugin.compile_extension(sys.argv[1])"
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code, str(build_dir)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - start
    print(f"\n[ops build] {seconds:.1f} s, rc={res.returncode}, dir={build_dir}")
    return build_dir, res, seconds


@pytest.fixture(scope="module")
def kernels(build):
    """The built module imported straight from its .so, or skip when it cannot be loaded here."""
    build_dir, _, _ = build
    sos = sorted(build_dir.glob("*.so"))
    if not sos:
        pytest.skip("no shared object built")
    name = sos[0].stem  # must match TORCH_EXTENSION_NAME for PyInit_<name>
    try:
        spec = importlib.util.spec_from_file_location(name, sos[0])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except (ImportError, OSError) as exc:
        pytest.skip(f"built but not loadable on this machine: {exc}")
    return module


def test_build_produces_shared_object(build):
    build_dir, res, _ = build
    sos = list(build_dir.glob("*.so"))
    assert sos, f"no .so in {build_dir}\nstdout:\n{res.stdout[-4000:]}\nstderr:\n{res.stderr[-4000:]}"
    assert sos[0].stem == f"styleclip_ops_{_plugin.source_hash()}"
    assert sos[0].stat().st_size > 10_000
    if res.returncode != 0:  # compiled, but the import inside load() failed (e.g. no driver)
        assert "Error building extension" not in res.stderr, res.stderr[-4000:]


def test_emulated_upfirdn2d_matches_reference(kernels):
    gen = torch.Generator().manual_seed(5)
    checked = 0
    for (up, down), pad, kshape, dtype in itertools.product(
            [(1, 1), (2, 1), (1, 2), (3, 2), (2, 3)], [0, (2, 1), (-1, 2), (2, -1, 0, 1), (-2, 1, 3, -1)],
            [(1, 1), (4, 4), (3, 3), (2, 3), (4, 1)], [torch.float32, torch.float64]):
        x = torch.randn(2, 3, 6, 5, generator=gen, dtype=dtype)
        k = torch.randn(*kshape, generator=gen, dtype=dtype)
        p = reference._normalize_pad(pad)
        if min(_autograd.out_size(6, up, down, p[2], p[3], kshape[0]),
               _autograd.out_size(5, up, down, p[0], p[1], kshape[1])) < 1:
            with pytest.raises(RuntimeError, match="empty output"):
                kernels.emu_upfirdn2d(x, k, up, down, *p)
            continue
        got = kernels.emu_upfirdn2d(x, k, up, down, *p)
        want = reference.upfirdn2d(x, k, up, down, pad)
        torch.testing.assert_close(got, want, msg=str((up, down, pad, kshape)))
        checked += 1
    assert checked > 100
    # Non-contiguous input is accepted (the binding makes it contiguous).
    x = torch.randn(1, 4, 5, 6, dtype=torch.float64).transpose(2, 3)
    k = torch.randn(3, 3, dtype=torch.float64)
    got = kernels.emu_upfirdn2d(x, k, 2, 1, 1, 1, 1, 1)
    torch.testing.assert_close(got, reference.upfirdn2d(x, k, 2, 1, 1))


def test_emulated_bias_act_and_grad_match_reference(kernels):
    for shape, with_bias in itertools.product([(4, 6), (2, 3, 4, 5), (2, 3, 7)], [True, False]):
        x = torch.randn(*shape, dtype=torch.float64)
        b = torch.randn(shape[1], dtype=torch.float64) if with_bias else None
        out = kernels.emu_bias_act(x, b, 0.2, math.sqrt(2))
        torch.testing.assert_close(out, reference.fused_leaky_relu(x, b, 0.2, math.sqrt(2)))
        g = torch.randn_like(x)
        pre = x if b is None else x + b.reshape(1, -1, *([1] * (x.ndim - 2)))
        torch.testing.assert_close(kernels.emu_leaky_grad(g, out, 0.2, math.sqrt(2)),
                                   g * math.sqrt(2) * torch.where(pre > 0, 1.0, 0.2).double())


def test_binding_rejects_bad_arguments(kernels):
    with pytest.raises(RuntimeError, match=r"\[N, C, H, W\]"):
        kernels.emu_upfirdn2d(torch.zeros(3, 4, 4), torch.ones(2, 2), 1, 1, 0, 0, 0, 0)
    with pytest.raises(RuntimeError, match="bias must be"):
        kernels.emu_bias_act(torch.zeros(2, 3), torch.zeros(4), 0.2, 1.0)
    with pytest.raises(RuntimeError, match="CUDA tensor"):
        kernels.upfirdn2d(torch.zeros(1, 1, 4, 4), torch.ones(2, 2), 1, 1, 0, 0, 0, 0)


@pytest.mark.parametrize("up,down,pad,kshape", [(2, 1, (2, 1, 2, 1), (4, 4)), (1, 2, (1, 1, 1, 1), (4, 4)),
                                                (3, 2, (-1, 2, 1, -1), (2, 3))])
def test_autograd_through_emulated_kernels(kernels, up, down, pad, kshape):
    backend = SimpleNamespace(upfirdn2d=kernels.emu_upfirdn2d, bias_act=kernels.emu_bias_act,
                              leaky_grad=kernels.emu_leaky_grad)
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(*kshape, dtype=torch.float64)
    fir = lambda x: _autograd.UpFirDn2d.apply(x, k, up, down, pad, backend)  # noqa: E731
    assert torch.autograd.gradcheck(fir, (x,))
    assert torch.autograd.gradgradcheck(fir, (x,))
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    xa = (x.detach() + 0.1 * x.detach().sign()).requires_grad_()
    act = lambda x, b: _autograd.FusedLeakyReLU.apply(x, b, 0.2, math.sqrt(2), backend)  # noqa: E731
    assert torch.autograd.gradcheck(act, (xa, b))
    assert torch.autograd.gradgradcheck(act, (xa, b))
