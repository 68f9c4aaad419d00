"""StyleGAN2 custom ops with an implementation switch: impl="auto" | "cuda" | "ref".

* "ref"  - pure PyTorch (`ops.reference`), any device.
* "cuda" - our CUDA kernels (`ops/csrc`), built lazily on first CUDA use by `ops._plugin`;
           raises RuntimeError on a CPU tensor or when the build failed.
* "auto" - the process default (`set_default_impl`, env STYLECLIP_OPS_IMPL, initially "auto"):
           CUDA kernels for CUDA tensors when the build succeeded, otherwise the reference.

Importing this package never compiles anything and does not import torch.utils.cpp_extension.
"""

from __future__ import annotations

import logging
import math
import os
import warnings

import torch

from . import _plugin, reference
from ._autograd import FusedLeakyReLU, UpFirDn2d

__all__ = ["upfirdn2d", "fused_leaky_relu", "active_impl", "set_default_impl", "get_default_impl",
           "describe", "log_active_impl"]

_IMPLS = ("auto", "cuda", "ref")
ENV_VAR = "STYLECLIP_OPS_IMPL"


def _check_impl(impl: str) -> None:
    if impl not in _IMPLS:
        raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}")


def _initial_default() -> str:
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in _IMPLS:  # a typo in the environment must not break `import ops`
        warnings.warn(f"{ENV_VAR}={value!r} is not one of {_IMPLS}; using 'auto'", RuntimeWarning,
                      stacklevel=2)
        return "auto"
    return value


_default_impl = _initial_default()


def set_default_impl(impl: str) -> None:
    """Sets what impl="auto" means for this process ("auto", "cuda" or "ref")."""
    global _default_impl
    _check_impl(impl)
    _default_impl = impl


def get_default_impl() -> str:
    return _default_impl


def _is_cuda(t: torch.Tensor) -> bool:
    """Seam for tests: lets a CPU test drive the CUDA dispatch branch."""
    return t.is_cuda


def _backend(impl: str, x: torch.Tensor, op: str, cuda_ok: bool = True, why_not: str = ""):
    """Resolves `impl` for input `x`: the compiled module, or None for the reference path.

    `cuda_ok=False` marks a call the kernels do not support (`why_not` says why): "auto" then
    quietly uses the reference, "cuda" raises.
    """
    _check_impl(impl)
    if impl == "auto":
        impl = _default_impl
    if impl == "ref":
        return None
    if impl == "cuda":
        if not _is_cuda(x):
            raise RuntimeError(f"{op}(impl='cuda') needs a CUDA tensor, got one on {x.device}; "
                               "use impl='auto' or impl='ref' for CPU tensors")
        if not cuda_ok:
            raise RuntimeError(f"{op}(impl='cuda'): not supported by the CUDA kernels ({why_not})")
        return _plugin.get_plugin(strict=True)
    if not _is_cuda(x) or not cuda_ok:
        return None
    return _plugin.get_plugin()


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad: int | tuple[int, ...] = 0, impl: str = "auto") -> torch.Tensor:
    """Upsample (zero insertion), pad/crop, FIR-filter (true convolution), downsample.

    x: [N, C, H, W]; kernel: [kh, kw]; returns [N, C, (H*up+py0+py1-kh)//down+1, (W*up+px0+px1-kw)//down+1].
    See `reference.upfirdn2d` for the exact semantics. The CUDA path treats `kernel` as a constant
    (no gradient for it), so a kernel that requires grad goes to the reference under "auto".
    """
    kernel_grad = kernel.requires_grad and torch.is_grad_enabled()
    backend = _backend(impl, x, "upfirdn2d", cuda_ok=not kernel_grad,
                       why_not="gradient w.r.t. the FIR kernel")
    if backend is None:
        return reference.upfirdn2d(x, kernel, up=up, down=down, pad=pad)
    return UpFirDn2d.apply(x, kernel, int(up), int(down), reference._normalize_pad(pad), backend)


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor | None = None, negative_slope: float = 0.2,
                     scale: float = math.sqrt(2), impl: str = "auto") -> torch.Tensor:
    """leaky_relu(x + bias[None, :, None, ...], negative_slope) * scale.

    x: [N, C, ...] (2-D or 4-D in the generator); bias: [C] or None; returns x's shape and dtype.
    The CUDA backward recovers the activation's sign from the saved output, which needs
    negative_slope >= 0 (always true in StyleGAN2); other slopes use the reference under "auto".
    """
    backend = _backend(impl, x, "fused_leaky_relu", cuda_ok=negative_slope >= 0,
                       why_not="negative_slope < 0")
    if backend is None:
        return reference.fused_leaky_relu(x, bias, negative_slope, scale)
    return FusedLeakyReLU.apply(x, bias, float(negative_slope), float(scale), backend)


def active_impl(device: torch.device | str = "cpu") -> str:
    """"cuda" or "ref": what impl="auto" uses on `device` (builds the kernels for a CUDA device)."""
    device = torch.device(device)
    if _default_impl == "ref" or device.type != "cuda" or not torch.cuda.is_available():
        return "ref"
    return "cuda" if _plugin.get_plugin() is not None else "ref"


def describe(device: torch.device | str | None = None) -> str:
    """One line naming the active implementation on `device` (default: cuda if available) and why."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if _default_impl == "ref":
        return f"ref (forced by {ENV_VAR}/set_default_impl)"
    if device.type != "cuda":
        return "ref (no CUDA device)" if not torch.cuda.is_available() else f"ref ({device.type} device)"
    if not torch.cuda.is_available():
        return "ref (no CUDA device)"
    if active_impl(device) == "cuda":
        return f"cuda (custom kernels, built in {_plugin.build_dir()})"
    return f"ref (CUDA build failed: {_plugin._short(_plugin.build_error() or '?', 160)})"


def log_active_impl(logger: logging.Logger | None = None, device: torch.device | str | None = None) -> str:
    """Logs (INFO) and returns `describe(device)`; call once at app start-up."""
    text = describe(device)
    (logger or logging.getLogger(__name__)).info("custom ops: %s", text)
    return text
