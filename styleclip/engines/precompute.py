"""Computing global-direction statistics for any generator + CLIP pair, in resumable chunks.

The official relevance matrix renders every conv channel at mean ± 5σ on 100 images at full resolution and takes
CLIP's embedding difference: 2·C renders per image (12,096 for FFHQ). We compute the same quantity from the
linearisation instead: the embedding difference at ±5σ is ≈ 10σ_c · ∂e/∂s_c, so the per-image unit vector is the
normalised Jacobian column. One forward pass (stopped at CLIP's input resolution) and D backward passes give the
whole [D, C] Jacobian of an image, on the official procedure's own images (the first 100 codes of the seed-5
statistics sample). `reference_relevance` implements the official procedure for comparison
(benchmarks/bench_precompute.py measures the cost ratio and the top-channel agreement).
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

__all__ = ["compute_s_stats", "image_jacobian_directions", "compute_relevance", "precompute",
           "reference_relevance", "sample_w", "Cancelled", "ProgressFn"]

ProgressFn = Callable[[int, int, str], None]  # (done, total, stage)
PARTIAL_DIR = ".partial"
# The official relevance matrix averages over the first 100 codes of its statistics sample (seed 5, psi 0.7).
RELEVANCE_IMAGES = 100
RELEVANCE_SEED = 5


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
                              cotangent_chunk: int = 64) -> torch.Tensor:
    """Unit Jacobian columns of CLIP's normalised image embedding w.r.t. every conv channel, for one image.

    Args:
        w: [D_w] one latent (used for every layer).

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
    dim = emb.shape[0]
    eye = torch.eye(dim)
    columns = []
    for start in range(0, dim, cotangent_chunk):
        basis = eye[start:start + cotangent_chunk]
        grads = torch.autograd.grad(emb, [leaves[i] for i in conv_ids], grad_outputs=basis,
                                    is_grads_batched=True, retain_graph=start + cotangent_chunk < dim)
        columns.append(torch.cat([g[:, 0, :] for g in grads], dim=1))  # [k, C]
    jac = torch.cat(columns, dim=0).t()  # [C, D]
    return jac / jac.norm(dim=1, keepdim=True).clamp_min(1e-12)


def compute_relevance(generator: Generator, clip_model: ClipModel, n_images: int = RELEVANCE_IMAGES,
                      seed: int = RELEVANCE_SEED,
                      truncation: float = 0.7, state_dir: Path | None = None, progress: ProgressFn | None = None,
                      should_stop: Callable[[], bool] | None = None) -> torch.Tensor:
    """The relevance matrix [C, D] (unit rows) averaged over n_images, resumable through `state_dir`."""
    ws = sample_w(generator, n_images, seed, truncation)
    c = conv_channel_index(generator).numel()
    acc, done = torch.zeros(c, clip_model.embed_dim, dtype=torch.float64), 0
    config = {"n_images": n_images, "seed": seed, "truncation": truncation}
    if state_dir is not None and (state_dir / "relevance.json").is_file():
        saved = json.loads((state_dir / "relevance.json").read_text())
        if saved.get("config") == config:
            acc = torch.from_numpy(np.load(state_dir / "relevance_acc.npy"))
            done = int(saved["done"])
    for i in range(done, n_images):
        if should_stop is not None and should_stop():
            raise Cancelled(f"stopped after {i} of {n_images} images; run again to resume")
        acc += image_jacobian_directions(generator, clip_model, ws[i]).double()
        if state_dir is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
            np.save(state_dir / "relevance_acc.tmp.npy", acc.numpy())
            (state_dir / "relevance_acc.tmp.npy").replace(state_dir / "relevance_acc.npy")
            (state_dir / "relevance.json").write_text(json.dumps({"config": config, "done": i + 1}))
        if progress:
            progress(i + 1, n_images, "relevance")
    mean = acc / n_images
    return (mean / mean.norm(dim=1, keepdim=True).clamp_min(1e-12)).float()


def precompute(generator: Generator, clip_model: ClipModel, out_dir: Path, *, n_stats: int = 100_000,
               n_images: int = RELEVANCE_IMAGES, truncation: float = 0.7, generator_sha256: str | None = None,
               clip_sha256: str | None = None, progress: ProgressFn | None = None,
               should_stop: Callable[[], bool] | None = None) -> GlobalStatistics:
    """Computes S statistics and the relevance matrix into out_dir (stats.npz, fs3.npy, manifest.json).

    Work in progress lives in out_dir/.partial/ and is picked up by the next call with the same settings;
    the final files are written only when everything is done.
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
    fs3 = compute_relevance(generator, clip_model, n_images=n_images, truncation=truncation,
                            state_dir=state_dir, progress=progress, should_stop=should_stop)
    manifest = {
        "generator_sha256": generator_sha256, "clip_sha256": clip_sha256,
        "method": "jacobian", "n_stats": n_stats, "stats_seed": 5, "n_images": n_images,
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
