"""Lazy, memoised build of the CUDA kernels in ops/csrc.

Nothing here runs at import time: `torch.utils.cpp_extension` is imported and ninja/nvcc invoked
only on the first call to `get_plugin()` (i.e. on first CUDA use). The result — a loaded module or
the failure reason — is remembered for the rest of the process, so a broken toolchain costs one
attempt and one warning, not one per call.

Build outputs go to `$STYLECLIP_OPS_CACHE/<hash>` (default `~/.cache/styleclip_ops/<hash>`), where
the hash covers the source files and the torch/CUDA versions: editing a kernel or upgrading torch
builds into a fresh directory instead of reusing a stale .so.
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

CSRC_DIR = Path(__file__).resolve().parent / "csrc"
SOURCES = ("ops.cpp", "ops_kernel.cu")  # compiled units; ops_math.cuh is hashed too (included)
HASHED = SOURCES + ("ops_math.cuh",)

NOT_BUILT, BUILT, FAILED = "not built", "built", "failed"

_lock = threading.Lock()
_state: dict = {"status": NOT_BUILT, "module": None, "error": None, "build_dir": None}


def source_hash() -> str:
    """Hex digest of the kernel sources + torch and CUDA versions (the cache key)."""
    h = hashlib.sha256()
    for name in HASHED:
        h.update(name.encode())
        h.update((CSRC_DIR / name).read_bytes())
    h.update(f"torch={torch.__version__};cuda={torch.version.cuda}".encode())
    return h.hexdigest()[:16]


def default_cache_root() -> Path:
    root = os.environ.get("STYLECLIP_OPS_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "styleclip_ops"


def compile_extension(build_dir: str | os.PathLike | None = None, verbose: bool = False) -> ModuleType:
    """Compiles (or reuses) and loads the extension; raises on any failure.

    Args:
        build_dir: where ninja writes objects and the .so; default `default_cache_root()/<hash>`.
        verbose: echo the compiler command lines.
    """
    _fix_cuda_home()
    from torch.utils.cpp_extension import load  # imported here on purpose: keep `import ops` light

    digest = source_hash()
    build_dir = Path(build_dir) if build_dir is not None else default_cache_root() / digest
    build_dir.mkdir(parents=True, exist_ok=True)
    _state["build_dir"] = str(build_dir)
    return load(
        name=f"styleclip_ops_{digest}",  # hash in the name: two builds never clash in sys.modules
        sources=[str(CSRC_DIR / s) for s in SOURCES],
        extra_include_paths=[str(CSRC_DIR)],
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3", "-lineinfo"],
        build_directory=str(build_dir),
        verbose=verbose,
    )


def _fix_cuda_home() -> None:
    """Points CUDA_HOME at a real toolkit when torch's guess would be wrong.

    torch guesses CUDA_HOME as dirname(dirname(which nvcc)). With nvcc installed as a wrapper
    script (e.g. /usr/local/bin/nvcc -> exec /usr/local/cuda/bin/nvcc) that gives /usr/local,
    whose include/ and lib64/ lack cudart, and the build fails. Only acts when the user set
    neither CUDA_HOME nor CUDA_PATH and torch.utils.cpp_extension (which reads it once, on
    import) has not been imported yet.
    """
    import shutil
    import sys

    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    if "torch.utils.cpp_extension" in sys.modules:  # too late: it already computed CUDA_HOME
        return
    nvcc = shutil.which("nvcc")
    guess = Path(nvcc).parent.parent if nvcc else None
    if guess is not None and (guess / "include" / "cuda_runtime.h").exists():
        return
    for candidate in (Path("/usr/local/cuda"), Path(os.path.realpath("/usr/local/cuda"))):
        if (candidate / "bin" / "nvcc").exists() and (candidate / "include" / "cuda_runtime.h").exists():
            os.environ["CUDA_HOME"] = str(candidate)
            return


# Indirection so tests can simulate a broken toolchain (monkeypatch `_loader`).
_loader = compile_extension


def get_plugin(strict: bool = False) -> ModuleType | None:
    """Returns the compiled module, building it on first use; None if the build failed.

    The first failure emits ONE `warnings.warn` (reason + "using the reference path") and is
    remembered; later calls return None immediately. With `strict=True` a failure raises
    RuntimeError instead of returning None (used by impl="cuda").
    """
    if _state["status"] == NOT_BUILT:
        with _lock:
            if _state["status"] == NOT_BUILT:  # another thread may have built it meanwhile
                try:
                    _state["module"] = _loader()
                    _state["status"] = BUILT
                except Exception as exc:  # noqa: BLE001 - any build/load error means "fall back"
                    _state["error"] = f"{type(exc).__name__}: {exc}".strip()
                    _state["status"] = FAILED
                    warnings.warn(
                        f"styleclip ops: building the CUDA kernels failed ({_short(_state['error'])}); "
                        "using the pure-PyTorch reference implementation instead "
                        "(set STYLECLIP_OPS_IMPL=ref to skip the build).",
                        RuntimeWarning,
                        stacklevel=3,
                    )
    if _state["status"] == BUILT:
        return _state["module"]
    if strict:
        raise RuntimeError(f"impl='cuda' requested but the CUDA kernels are unavailable: {_state['error']}")
    return None


def status() -> str:
    """"not built" | "built" | "failed"."""
    return _state["status"]


def build_error() -> str | None:
    return _state["error"]


def build_dir() -> str | None:
    return _state["build_dir"]


def reset() -> None:
    """Forgets the memoised result (tests only; a loaded module stays in sys.modules)."""
    with _lock:
        _state.update(status=NOT_BUILT, module=None, error=None, build_dir=None)


def _short(msg: str, limit: int = 300) -> str:
    """Compiler errors can be pages long: keep the warning readable, the full text is in build_error()."""
    msg = " ".join(msg.split())
    return msg if len(msg) <= limit else msg[:limit] + " ... (see ops._plugin.build_error())"
