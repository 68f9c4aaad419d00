"""Computing global-direction statistics for any generator + CLIP pair, in resumable chunks.

The official relevance matrix renders every conv channel at mean ± 5σ on 100 images at full resolution and takes
CLIP's embedding difference: 2·C renders per image (12,096 for FFHQ). We compute the same quantity from the
linearisation instead: the embedding difference at ±5σ is ≈ 10σ_c · ∂e/∂s_c, so the per-image unit vector is the
normalised Jacobian column. One forward pass (stopped at CLIP's input resolution) and D backward passes give the
whole [D, C] Jacobian of an image, on the official procedure's own images (the first 100 codes of the seed-5
statistics sample). `reference_relevance` implements the official procedure for comparison
(benchmarks/bench_precompute.py measures the cost ratio and the top-channel agreement).

Optionally (`basis_energy`, the CLI's `--basis-energy`), fewer backward passes: the Jacobian's columns span few
directions of CLIP space (on the embedded model 51 of 256 dimensions hold 99.5% of their energy), so only the
first `RELEVANCE_BASIS_IMAGES` images take all D backward passes; their Gram matrix gives an orthonormal basis of
the directions that hold that share of the energy, and every later image takes one backward pass per basis vector
(the columns projected onto the basis). Its top channels agree with the official procedure as well as the full
Jacobian's do, but the whitened relevance, which weighs the weak directions the basis drops, loses with it
(BENCHMARKS.md), so the default stays the full Jacobian.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..imaging import img_to_images
from ..models.clip_model import ClipModel
from ..models.generator import Generator
from .statistics import GlobalStatistics, conv_channel_index

__all__ = ["compute_s_stats", "image_jacobian_directions", "energy_basis", "compute_relevance", "precompute",
           "reference_relevance", "sample_w", "Cancelled", "ProgressFn"]

ProgressFn = Callable[[int, int, str], None]  # (done, total, stage)
PARTIAL_DIR = ".partial"
# The official relevance matrix averages over the first 100 codes of its statistics sample (seed 5, psi 0.7).
RELEVANCE_IMAGES = 100
RELEVANCE_SEED = 5
# With a basis: the images that take the full Jacobian.
RELEVANCE_BASIS_IMAGES = 10


class Cancelled(RuntimeError):
    """A long job stopped at a cancel request; its checkpoint stays for a later resume."""


def sample_w(generator: Generator, n: int, seed: int, truncation: float) -> torch.Tensor:
    """n truncated w [n, D] from numpy RandomState(seed) normals (the official stats use seed 5, psi 0.7)."""
    z = torch.from_numpy(np.random.RandomState(seed).randn(n, generator.style_dim).astype(np.float32))
    with torch.inference_mode():
        return generator.truncate(generator.mapping(z), truncation)


@torch.inference_mode()
def compute_s_stats(generator: Generator, n: int = 100_000, seed: int = 5, truncation: float = 0.7,
                    chunk: int = 2000, progress: ProgressFn | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and population std of s over n sampled latents → ([s_dim], [s_dim])."""
    z_all = np.random.RandomState(seed).randn(n, generator.style_dim).astype(np.float32)
    total = torch.zeros(generator.s_dim, dtype=torch.float64)
    total_sq = torch.zeros(generator.s_dim, dtype=torch.float64)
    for start in range(0, n, chunk):
        w = generator.truncate(generator.mapping(torch.from_numpy(z_all[start:start + chunk])), truncation)
        s = generator.s_to_flat(generator.w_plus_to_s(generator.w_to_w_plus(w))).double()
        total += s.sum(0)
        total_sq += s.square().sum(0)
        if progress:
            progress(min(start + chunk, n), n, "S statistics")
    mean = total / n
    std = (total_sq / n - mean.square()).clamp_min(0).sqrt()
    return mean.float(), std.float()


def clip_render_resolution(generator: Generator, clip_model: ClipModel) -> int:
    """The smallest generator resolution at least CLIP's input size (early exit avoids the rest)."""
    for res in sorted(generator.config.channels()):
        if res >= clip_model.input_resolution:
            return res
    return generator.size


def image_jacobian_directions(generator: Generator, clip_model: ClipModel, w: torch.Tensor,
                              cotangent_chunk: int = 64, unit: bool = True,
                              basis: torch.Tensor | None = None) -> torch.Tensor:
    """Unit Jacobian columns of CLIP's normalised image embedding w.r.t. every conv channel, for one image.

    Args:
        w: [D_w] one latent (used for every layer).
        unit: False keeps each column's length |∂e/∂s_c|.
        basis: optional [r, D] orthonormal rows: one backward pass per row instead of D, and the columns
            projected onto their span (exact when the columns lie in it).

    Returns:
        [C, D] rows u_c = (∂e/∂s_c) / |∂e/∂s_c| (zero rows where a channel has no effect).
    """
    res = clip_render_resolution(generator, clip_model)
    with torch.no_grad():
        s = generator.w_plus_to_s(generator.w_to_w_plus(w[None]))
    conv_ids = [layer.index for layer in generator.conv_layers]
    leaves = {i: s[i].clone().requires_grad_(True) for i in conv_ids}
    s_in = [leaves.get(i, t) for i, t in enumerate(s)]
    emb = clip_model.encode_image(generator.synthesis(s_in, until_resolution=res))[0]  # [D]
    cotangents = torch.eye(emb.shape[0]) if basis is None else basis.to(emb.dtype)
    columns = []
    for start in range(0, len(cotangents), cotangent_chunk):
        chunk = cotangents[start:start + cotangent_chunk]
        grads = torch.autograd.grad(emb, [leaves[i] for i in conv_ids], grad_outputs=chunk,
                                    is_grads_batched=True, retain_graph=start + cotangent_chunk < len(cotangents))
        columns.append(torch.cat([g[:, 0, :] for g in grads], dim=1))  # [k, C]
    jac = torch.cat(columns, dim=0).t()  # [C, r]: the columns' coordinates on the cotangents
    if basis is not None:
        jac = jac @ cotangents  # [C, D]
    return jac / jac.norm(dim=1, keepdim=True).clamp_min(1e-12) if unit else jac


def energy_basis(gram: torch.Tensor, energy: float) -> torch.Tensor:
    """The fewest orthonormal directions holding `energy` of the columns behind a Gram matrix.

    Args:
        gram: [D, D] sum of J^T J over images (J: [C, D] Jacobian columns as rows).

    Returns:
        [r, D] orthonormal rows, largest eigenvalue first.
    """
    eigvals, eigvecs = torch.linalg.eigh(gram.double())
    eigvals, eigvecs = eigvals.flip(0).clamp_min(0), eigvecs.flip(1)
    share = eigvals.cumsum(0) / eigvals.sum().clamp_min(1e-30)
    rank = min(int((share < energy).sum()) + 1, len(eigvals))
    return eigvecs[:, :rank].t().float().contiguous()


def compute_relevance(generator: Generator, clip_model: ClipModel, n_images: int = RELEVANCE_IMAGES,
                      seed: int = RELEVANCE_SEED,
                      truncation: float = 0.7, state_dir: Path | None = None, progress: ProgressFn | None = None,
                      should_stop: Callable[[], bool] | None = None, basis_images: int = RELEVANCE_BASIS_IMAGES,
                      basis_energy: float | None = None, info: dict | None = None) -> torch.Tensor:
    """The relevance matrix [C, D] (unit rows) averaged over n_images, resumable through `state_dir`.

    With `basis_energy` (a share in (0, 1)), the first `basis_images` images take the full Jacobian and the rest
    are projected onto the directions holding that share of it (`energy_basis`); None (default), a share >= 1 or
    basis_images >= n_images take the full Jacobian everywhere. `info`, when given, receives "basis_rank" (0: the
    full Jacobian everywhere).
    """
    if basis_energy is not None and not 0 < basis_energy <= 1:
        raise ValueError(f"basis_energy must be a share in (0, 1], got {basis_energy}")
    ws = sample_w(generator, n_images, seed, truncation)
    c, dim = conv_channel_index(generator).numel(), clip_model.embed_dim
    acc, gram, done = torch.zeros(c, dim, dtype=torch.float64), torch.zeros(dim, dim, dtype=torch.float64), 0
    use_basis = basis_energy is not None and basis_energy < 1 and basis_images < n_images
    config = {"n_images": n_images, "seed": seed, "truncation": truncation,
              "basis_images": basis_images if use_basis else None,
              "basis_energy": basis_energy if use_basis else None}
    saved_arrays = {"relevance_acc": acc} | ({"relevance_gram": gram} if use_basis else {})
    if state_dir is not None and (state_dir / "relevance.json").is_file():
        saved = json.loads((state_dir / "relevance.json").read_text())
        if saved.get("config") == config:
            for name, value in saved_arrays.items():
                value.copy_(torch.from_numpy(np.load(state_dir / f"{name}.npy")))
            done = int(saved["done"])
    basis = None
    for i in range(done, n_images):
        if should_stop is not None and should_stop():
            raise Cancelled(f"stopped after {i} of {n_images} images; run again to resume")
        if basis is None and use_basis and i >= basis_images:
            basis = energy_basis(gram, basis_energy)
        jac = image_jacobian_directions(generator, clip_model, ws[i], unit=False, basis=basis).double()
        if use_basis and i < basis_images:
            gram += jac.t() @ jac
        acc += jac / jac.norm(dim=1, keepdim=True).clamp_min(1e-12)
        if state_dir is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
            for name, value in saved_arrays.items():
                np.save(state_dir / f"{name}.tmp.npy", value.numpy())
                (state_dir / f"{name}.tmp.npy").replace(state_dir / f"{name}.npy")
            (state_dir / "relevance.json").write_text(json.dumps({"config": config, "done": i + 1}))
        if progress:
            progress(i + 1, n_images, "relevance")
    if basis is None and use_basis:  # resumed after the last image
        basis = energy_basis(gram, basis_energy)
    if info is not None:
        info["basis_rank"] = 0 if basis is None else int(basis.shape[0])
    mean = acc / n_images
    return (mean / mean.norm(dim=1, keepdim=True).clamp_min(1e-12)).float()


def precompute(generator: Generator, clip_model: ClipModel, out_dir: Path, *, n_stats: int = 100_000,
               n_images: int = RELEVANCE_IMAGES, truncation: float = 0.7, basis_energy: float | None = None,
               basis_images: int = RELEVANCE_BASIS_IMAGES, generator_sha256: str | None = None,
               clip_sha256: str | None = None, progress: ProgressFn | None = None,
               should_stop: Callable[[], bool] | None = None) -> GlobalStatistics:
    """Computes S statistics and the relevance matrix into out_dir (stats.npz, fs3.npy, manifest.json).

    Work in progress lives in out_dir/.partial/ and is picked up by the next call with the same settings;
    the final files are written only when everything is done. `basis_*`: see `compute_relevance`.
    """
    out_dir = Path(out_dir)
    state_dir = out_dir / PARTIAL_DIR
    state_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    stats_file = state_dir / "stats.npz"
    if stats_file.is_file():
        with np.load(stats_file) as npz:
            mean, std = torch.from_numpy(npz["mean"]), torch.from_numpy(npz["std"])
    else:
        mean, std = compute_s_stats(generator, n=n_stats, truncation=truncation, progress=progress)
        np.savez(state_dir / "stats.tmp.npz", mean=mean.numpy(), std=std.numpy())
        (state_dir / "stats.tmp.npz").replace(stats_file)
    relevance_info: dict = {}
    fs3 = compute_relevance(generator, clip_model, n_images=n_images, truncation=truncation,
                            state_dir=state_dir, progress=progress, should_stop=should_stop,
                            basis_energy=basis_energy, basis_images=basis_images, info=relevance_info)
    manifest = {
        "generator_sha256": generator_sha256, "clip_sha256": clip_sha256,
        "method": "jacobian", "n_stats": n_stats, "stats_seed": 5, "n_images": n_images,
        "basis_images": basis_images if relevance_info["basis_rank"] else 0,
        "basis_energy": basis_energy if relevance_info["basis_rank"] else None,
        "basis_rank": relevance_info["basis_rank"],
        "relevance_seed": RELEVANCE_SEED,
        "truncation": truncation, "fs3_rows": int(fs3.shape[0]), "clip_dim": int(fs3.shape[1]),
        "seconds": round(time.time() - t0, 1), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    stats = GlobalStatistics(mean, std, fs3, conv_channel_index(generator), manifest)
    stats.save(out_dir)
    shutil.rmtree(state_dir, ignore_errors=True)
    return stats


@torch.inference_mode()
def reference_relevance(generator: Generator, clip_model: ClipModel, mean: torch.Tensor, std: torch.Tensor,
                        n_images: int = RELEVANCE_IMAGES, seed: int = RELEVANCE_SEED, truncation: float = 0.7,
                        batch: int = 50,
                        channels: torch.Tensor | None = None, progress: ProgressFn | None = None) -> torch.Tensor:
    """The official procedure (for comparison): each conv channel set to mean ± 5σ on n_images codes, rendered at
    full resolution, uint8-quantised, encoded through CLIP's PIL preprocessing; normalised differences averaged.

    Args:
        channels: optional subset of conv-channel indices (rows) to compute; default all.

    Returns:
        [len(channels), D] unit rows.
    """
    s0 = generator.s_to_flat(generator.w_plus_to_s(generator.w_to_w_plus(
        sample_w(generator, n_images, seed, truncation))))
    conv_index = conv_channel_index(generator)
    rows = torch.arange(conv_index.numel()) if channels is None else channels
    out = torch.zeros(len(rows), clip_model.embed_dim)
    for k, row in enumerate(rows.tolist()):
        p = int(conv_index[row])
        embs = []
        for sign in (-1.0, 1.0):
            s = s0.clone()
            s[:, p] = mean[p] + sign * 5 * std[p]
            parts = []
            for b in range(0, n_images, batch):
                images = img_to_images(generator.synthesis(generator.flat_to_s(s[b:b + batch])))
                parts.append(clip_model.encode_image_eval(images))
            embs.append(torch.cat(parts))
        diff = embs[1] - embs[0]
        diff = diff / diff.norm(dim=1, keepdim=True).clamp_min(1e-12)
        avg = diff.mean(0)
        out[k] = avg / avg.norm().clamp_min(1e-12)
        if progress:
            progress(k + 1, len(rows), "reference relevance")
    return out
