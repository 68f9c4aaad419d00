"""Rendered toyfaces datasets (images, labels, params) with an on-disk cache under data/toyfaces/."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from styleclip.toyfaces.attributes import ATTRIBUTES
from styleclip.toyfaces.renderer import (
    NUM_PARAMS,
    RENDERER_VERSION,
    FaceParams,
    labels_of,
    observable,
    params_from_normal,
    render,
)

__all__ = ["make_dataset", "cached_renders", "render_normals", "normals_for", "labels_array", "observable_array", "cache_dir"]

_REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    """data/toyfaces/ in the repository (gitignored), or $STYLECLIP_DATA_DIR/toyfaces when that is set."""
    root = Path(os.environ.get("STYLECLIP_DATA_DIR", _REPO_ROOT / "data"))
    return root / "toyfaces"


def normals_for(n: int, seed: int) -> np.ndarray:
    """The [n, NUM_PARAMS] float64 standard normals behind make_dataset(n, seed): row i gives face i."""
    return np.random.default_rng(seed).standard_normal((n, NUM_PARAMS))


def labels_array(params_list: Sequence[FaceParams]) -> dict[str, np.ndarray]:
    """name -> [N] labels (int64 value indices for discrete attributes, float32 in [0, 1] for continuous)."""
    rows = [labels_of(p) for p in params_list]
    return {
        a.name: np.array([r[a.name] for r in rows], dtype=np.int64 if a.kind == "discrete" else np.float32)
        for a in ATTRIBUTES
    }


def observable_array(params_list: Sequence[FaceParams]) -> dict[str, np.ndarray]:
    """name -> [N] bool, whether the attribute is visible in each render (see renderer.observable)."""
    rows = [observable(p) for p in params_list]
    return {a.name: np.array([r[a.name] for r in rows], dtype=bool) for a in ATTRIBUTES}


def _render_rows(args: tuple[np.ndarray, int]) -> np.ndarray:
    u, size = args
    return np.stack([render(params_from_normal(row), size) for row in u])


def render_normals(u: np.ndarray, size: int, workers: int) -> np.ndarray:
    """Renders the faces of renderer normals u [N, NUM_PARAMS] → uint8 [N, size, size, 3] (forked workers)."""
    if workers <= 1 or len(u) < 256:
        return _render_rows((u, size))
    chunks = np.array_split(u, workers * 8)
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return np.concatenate(pool.map(_render_rows, [(c, size) for c in chunks]))


def make_dataset(
    n: int, seed: int, size: int = 64, workers: int = 2, use_cache: bool = True
) -> tuple[np.ndarray, dict[str, np.ndarray], list[FaceParams]]:
    """Renders (or loads from the cache) n random faces.

    Args:
        n: number of faces.
        seed: seed of the normals (normals_for(n, seed)); the same (n, seed, size) always gives the same data.
        size: image side in pixels.
        workers: rendering processes (1 renders in this process).
        use_cache: read/write data/toyfaces/faces_v{RENDERER_VERSION}_n{n}_s{seed}_r{size}.npz.

    Returns:
        images uint8 [N, size, size, 3], labels (name -> [N], see labels_array), params list of length N.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    u = normals_for(n, seed)
    params = [params_from_normal(row) for row in u]
    path = cache_dir() / f"faces_v{RENDERER_VERSION}_n{n}_s{seed}_r{size}.npz"
    images = cached_renders(path if use_cache else None, u, size, workers)
    return images, labels_array(params), params


def cached_renders(path: Path | None, u: np.ndarray, size: int, workers: int) -> np.ndarray:
    """The renders of normals u [N, NUM_PARAMS] → uint8 [N, size, size, 3], read from the .npz at `path` when it
    holds them, else rendered (`render_normals`) and written there atomically (path None: no cache)."""
    if path is not None and path.is_file():
        with np.load(path) as f:
            if f["images"].shape == (len(u), size, size, 3):
                return f["images"]
    images = render_normals(u, size, workers) if len(u) else np.zeros((0, size, size, 3), np.uint8)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + f".tmp{os.getpid()}.npz")
        np.savez(tmp, images=images)
        os.replace(tmp, path)
    return images
