"""Computing global-direction statistics for any generator + CLIP pair, in resumable chunks.

The official relevance matrix renders every conv channel at mean ± 5σ on 100 images at full resolution and takes
CLIP's embedding difference: 2·C renders per image (12,096 for FFHQ). We compute the same quantity from the
linearisation instead: the embedding difference at ±5σ is ≈ 10σ_c · ∂e/∂s_c, so the per-image unit vector is the
normalised Jacobian column. One forward pass (stopped at CLIP's input resolution) and D backward passes give the
whole [D, C] Jacobian of an image, on the official procedure's own images (the first 100 codes of the seed-5
statistics sample). `reference_relevance` implements the official procedure for comparison
(benchmarks/bench_precompute.py measures the cost ratio and the top-channel agreement).

Fewer backward passes (`basis_energy`, the CLI's `--basis-energy`): the Jacobian's columns span few directions of
CLIP space (on the embedded model 51 of 256 dimensions hold 99.5% of their energy), so only the first
`RELEVANCE_BASIS_IMAGES` images take all D backward passes; their Gram matrix gives an orthonormal basis of the
directions that hold that share of the energy, and every later image takes one backward pass per basis vector (the
columns projected onto the basis). Alone, its top channels agree with the official procedure as well as the full
Jacobian's do, but the whitened relevance, which weighs the weak directions the basis drops, loses with it.

Official rows for the channels a tangent serves worst (`refine_channels`, the CLI's `--refine-channels`): a few
switch-like channels change the image so much over ±5σ that the official secant differs from the tangent, and
those channels rank high for some edits (glasses on the embedded model). A probe takes every channel's official
difference on the first `RELEVANCE_PROBE_IMAGES` images, and the channels whose differences agree least with their
Jacobian columns get the official procedure's rows on all images. The official differences render each edit from
its channel's layer on (`Generator.synthesis_prefix`), not from the start.

`precompute` uses both by default: on the embedded model 10.8x fewer FLOPs than the official procedure, 0.90 of
its top-10 channels, and global edits that score like the official matrix's (BENCHMARKS.md).
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
           "reference_relevance", "channel_secants", "sample_w", "Cancelled", "ProgressFn"]

ProgressFn = Callable[[int, int, str], None]  # (done, total, stage)
PARTIAL_DIR = ".partial"
# The official relevance matrix averages over the first 100 codes of its statistics sample (seed 5, psi 0.7).
RELEVANCE_IMAGES = 100
RELEVANCE_SEED = 5
# With a basis: the images that take the full Jacobian.
RELEVANCE_BASIS_IMAGES = 10
RELEVANCE_BASIS_ENERGY = 0.995  # precompute's default
RELEVANCE_REFINE_CHANNELS = 96  # precompute's default
# With refinement: the images on which every channel's official difference is compared with its Jacobian column.
RELEVANCE_PROBE_IMAGES = 2


class Cancelled(RuntimeError):
    """A long job stopped at a cancel request; its checkpoint stays for a later resume."""


def sample_w(generator: Generator, n: int, seed: int, truncation: float) -> torch.Tensor:
    """n truncated w [n, D] from numpy RandomState(seed) normals (the official stats use seed 5, psi 0.7), on the
    generator's device."""
    z = torch.from_numpy(np.random.RandomState(seed).randn(n, generator.style_dim).astype(np.float32))
    z = z.to(generator.device)
    with torch.inference_mode():
        return generator.truncate(generator.mapping(z), truncation)


@torch.inference_mode()
def compute_s_stats(generator: Generator, n: int = 100_000, seed: int = 5, truncation: float = 0.7,
                    chunk: int = 2000, progress: ProgressFn | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and population std of s over n sampled latents → ([s_dim], [s_dim]) on the CPU."""
    z_all = np.random.RandomState(seed).randn(n, generator.style_dim).astype(np.float32)
    total = torch.zeros(generator.s_dim, dtype=torch.float64)
    total_sq = torch.zeros(generator.s_dim, dtype=torch.float64)
    for start in range(0, n, chunk):
        z = torch.from_numpy(z_all[start:start + chunk]).to(generator.device)
        w = generator.truncate(generator.mapping(z), truncation)
        s = generator.s_to_flat(generator.w_plus_to_s(generator.w_to_w_plus(w))).double()
        total += s.sum(0).cpu()
        total_sq += s.square().sum(0).cpu()
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
        [C, D] rows u_c = (∂e/∂s_c) / |∂e/∂s_c| (zero rows where a channel has no effect), on the generator's
        device.
    """
    res = clip_render_resolution(generator, clip_model)
    with torch.no_grad():
        s = generator.w_plus_to_s(generator.w_to_w_plus(w[None]))
    conv_ids = [layer.index for layer in generator.conv_layers]
    leaves = {i: s[i].clone().requires_grad_(True) for i in conv_ids}
    s_in = [leaves.get(i, t) for i, t in enumerate(s)]
    emb = clip_model.encode_image(generator.synthesis(s_in, until_resolution=res))[0]  # [D]
    cotangents = torch.eye(emb.shape[0], device=emb.device) if basis is None else basis.to(emb)
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
                      basis_energy: float | None = None, refine_channels: int = 0,
                      probe_images: int = RELEVANCE_PROBE_IMAGES,
                      s_stats: tuple[torch.Tensor, torch.Tensor] | None = None,
                      info: dict | None = None) -> torch.Tensor:
    """The relevance matrix [C, D] (unit rows) averaged over n_images, resumable through `state_dir`.

    With `basis_energy` (a share in (0, 1)), the first `basis_images` images take the full Jacobian and the rest
    are projected onto the directions holding that share of it (`energy_basis`); None (default), a share >= 1 or
    basis_images >= n_images take the full Jacobian everywhere.

    With `refine_channels` M > 0 (needs `s_stats` = (mean [S], std [S])), the rows of the M channels whose
    linearisation is worst are replaced by the official procedure's rows: the first `probe_images` images also
    take every channel's official ±5σ difference (`channel_secants`), the M channels whose differences agree least
    with their Jacobian columns (mean cosine over the probe images) are chosen, and their differences on the other
    images complete their official rows. The choice needs no text, so the matrix serves every edit.

    `info`, when given, receives "basis_rank" (0: the full Jacobian everywhere), "refined_rows" (the chosen
    channels, least agreeing first) and, with refinement, "probe_cosine" ([C] each channel's mean cosine between
    its Jacobian column and its official difference on the probe images; with n_images == probe_images the
    probe alone runs, and refine_channels == C ranks every channel).
    """
    if basis_energy is not None and not 0 < basis_energy <= 1:
        raise ValueError(f"basis_energy must be a share in (0, 1], got {basis_energy}")
    use_basis = basis_energy is not None and basis_energy < 1 and basis_images < n_images
    c, dim = conv_channel_index(generator).numel(), clip_model.embed_dim
    if refine_channels:
        if s_stats is None:
            raise ValueError("refine_channels needs the S statistics (s_stats=(mean, std))")
        if not 0 < refine_channels <= c or not 0 < probe_images <= n_images:
            raise ValueError(f"refine_channels must lie in 1..{c} and probe_images in 1..{n_images}")
        if use_basis and probe_images > basis_images:
            raise ValueError("probe_images must not exceed basis_images: the probe compares full Jacobians")
    ws = sample_w(generator, n_images, seed, truncation)
    state = {"relevance_acc": torch.zeros(c, dim, dtype=torch.float64)}
    if use_basis:
        state["relevance_gram"] = torch.zeros(dim, dim, dtype=torch.float64)
    if refine_channels:
        state |= {"probe_agreement": torch.zeros(c, dtype=torch.float64),
                  "probe_secants": torch.zeros(c, dim, dtype=torch.float64),
                  "refine_acc": torch.zeros(refine_channels, dim, dtype=torch.float64)}
    config = {"n_images": n_images, "seed": seed, "truncation": truncation,
              "basis_images": basis_images if use_basis else None,
              "basis_energy": basis_energy if use_basis else None,
              "refine_channels": refine_channels or None, "probe_images": probe_images if refine_channels else None}
    done = {"jacobian": 0, "refinement": 0}
    if state_dir is not None and (state_dir / "relevance.json").is_file():
        saved = json.loads((state_dir / "relevance.json").read_text())
        if saved.get("config") == config:
            for name, value in state.items():
                value.copy_(torch.from_numpy(np.load(state_dir / f"{name}.npy")))
            done = saved["done"]

    def checkpoint(stage: str, count: int) -> None:
        done[stage] = count
        if state_dir is None:
            return
        state_dir.mkdir(parents=True, exist_ok=True)
        for name, value in state.items():
            np.save(state_dir / f"{name}.tmp.npy", value.numpy())
            (state_dir / f"{name}.tmp.npy").replace(state_dir / f"{name}.npy")
        (state_dir / "relevance.json").write_text(json.dumps({"config": config, "done": done}))

    def code(i: int) -> torch.Tensor:  # [1, S]
        with torch.no_grad():
            return generator.s_to_flat(generator.w_plus_to_s(generator.w_to_w_plus(ws[i][None])))

    def probe_progress(i: int) -> ProgressFn:
        def report(done_rows: int, total_rows: int, _: str) -> None:
            if should_stop is not None and should_stop():
                raise Cancelled(f"stopped while probing image {i + 1} of {probe_images}; run again to resume")
            if progress:
                progress(done_rows, total_rows, f"probe, image {i + 1} of {probe_images}")
        return report

    basis, all_rows = None, torch.arange(c)
    for i in range(done["jacobian"], n_images):
        if should_stop is not None and should_stop():
            raise Cancelled(f"stopped after {i} of {n_images} images; run again to resume")
        if basis is None and use_basis and i >= basis_images:
            basis = energy_basis(state["relevance_gram"], basis_energy)
        jac = image_jacobian_directions(generator, clip_model, ws[i], unit=False, basis=basis).double().cpu()
        if use_basis and i < basis_images:
            state["relevance_gram"] += jac.t() @ jac
        unit_rows = jac / jac.norm(dim=1, keepdim=True).clamp_min(1e-12)
        state["relevance_acc"] += unit_rows
        if refine_channels and i < probe_images:
            secants = channel_secants(generator, clip_model, code(i), *s_stats, all_rows,
                                      progress=probe_progress(i))[0].double()
            state["probe_agreement"] += (unit_rows * secants).sum(1)
            state["probe_secants"] += secants
        checkpoint("jacobian", i + 1)
        if progress:
            progress(i + 1, n_images, "relevance")
    if basis is None and use_basis:  # resumed after the last image
        basis = energy_basis(state["relevance_gram"], basis_energy)
    mean = state["relevance_acc"] / n_images
    fs3 = mean / mean.norm(dim=1, keepdim=True).clamp_min(1e-12)
    refined = torch.zeros(0, dtype=torch.long)
    if refine_channels:
        refined = state["probe_agreement"].argsort(stable=True)[:refine_channels]
        for i in range(probe_images + done["refinement"], n_images):
            if should_stop is not None and should_stop():
                raise Cancelled(f"stopped while refining, after image {i} of {n_images}; run again to resume")
            state["refine_acc"] += channel_secants(generator, clip_model, code(i), *s_stats, refined)[0].double()
            checkpoint("refinement", i + 1 - probe_images)
            if progress:
                progress(i + 1 - probe_images, n_images - probe_images, "refining rows")
        rows = state["probe_secants"][refined] + state["refine_acc"]
        fs3[refined] = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
    if info is not None:
        info["basis_rank"] = 0 if basis is None else int(basis.shape[0])
        info["refined_rows"] = refined.tolist()
        if refine_channels:
            info["probe_cosine"] = (state["probe_agreement"] / probe_images).float()
    return fs3.float()


def precompute(generator: Generator, clip_model: ClipModel, out_dir: Path, *, n_stats: int = 100_000,
               n_images: int = RELEVANCE_IMAGES, truncation: float = 0.7,
               basis_energy: float | None = RELEVANCE_BASIS_ENERGY, basis_images: int = RELEVANCE_BASIS_IMAGES,
               refine_channels: int = RELEVANCE_REFINE_CHANNELS, probe_images: int = RELEVANCE_PROBE_IMAGES,
               generator_sha256: str | None = None,
               clip_sha256: str | None = None, progress: ProgressFn | None = None,
               should_stop: Callable[[], bool] | None = None) -> GlobalStatistics:
    """Computes S statistics and the relevance matrix into out_dir (stats.npz, fs3.npy, manifest.json).

    Work in progress lives in out_dir/.partial/ and is picked up by the next call with the same settings;
    the final files are written only when everything is done. `basis_*`, `refine_channels`, `probe_images`: see
    `compute_relevance`; the defaults are the method that meets both goals of BENCHMARKS.md (at least 10x fewer
    FLOPs than the official procedure, top-10 channels shared with it at least 0.9): a basis holding 99.5% of
    the Jacobian's energy after 10 full images, and official rows for the 96 channels the probe of 2 images finds
    least linear (at most all channels and all images, on small runs). basis_energy None or 1 and
    refine_channels 0 give the plain full Jacobian.
    """
    out_dir = Path(out_dir)
    refine_channels = min(refine_channels, conv_channel_index(generator).numel())
    probe_images = min(probe_images, n_images)
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
                            basis_energy=basis_energy, basis_images=basis_images,
                            refine_channels=refine_channels, probe_images=probe_images, s_stats=(mean, std),
                            info=relevance_info)
    manifest = {
        "generator_sha256": generator_sha256, "clip_sha256": clip_sha256,
        "method": "jacobian" + (" + official rows" if refine_channels else ""),
        "n_stats": n_stats, "stats_seed": 5, "n_images": n_images,
        "basis_images": basis_images if relevance_info["basis_rank"] else 0,
        "basis_energy": basis_energy if relevance_info["basis_rank"] else None,
        "basis_rank": relevance_info["basis_rank"],
        "probe_images": probe_images if refine_channels else 0, "refined_rows": relevance_info["refined_rows"],
        "relevance_seed": RELEVANCE_SEED,
        "truncation": truncation, "fs3_rows": int(fs3.shape[0]), "clip_dim": int(fs3.shape[1]),
        "seconds": round(time.time() - t0, 1), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    stats = GlobalStatistics(mean, std, fs3, conv_channel_index(generator), manifest)
    stats.save(out_dir)
    shutil.rmtree(state_dir, ignore_errors=True)
    return stats


@torch.inference_mode()
def channel_secants(generator: Generator, clip_model: ClipModel, s_flat: torch.Tensor, mean: torch.Tensor,
                    std: torch.Tensor, rows: torch.Tensor, chunk: int = 25, quantise: bool = True,
                    progress: ProgressFn | None = None) -> torch.Tensor:
    """The official procedure's per-image unit differences for chosen conv channels: each channel set to mean ± 5σ
    in each code, rendered at full resolution, uint8-quantised and encoded through CLIP's PIL preprocessing
    (`quantise` False: the float render encoded directly, for diagnostics).

    Each code's layers before a channel's layer are rendered once per layer (`Generator.synthesis_prefix`), not
    once per edit: the same images as full renders, for fewer FLOPs.

    Args:
        s_flat: [N, S] codes; mean, std: [S] S statistics; rows: [R] conv-channel indices (rows of fs3).
        progress: called after each chunk with (rows done, R, "official differences"), per code; it may raise to
            stop (a full FFHQ probe image takes hours on a CPU).

    Returns:
        [N, R, D] unit embedding differences (+5σ minus −5σ), on the CPU.
    """
    device = generator.device
    s_flat, mean, std = s_flat.to(device), mean.to(device), std.to(device)
    positions = conv_channel_index(generator)[rows]
    layer_of = torch.zeros(generator.s_dim, dtype=torch.long)
    for layer in generator.style_layers:
        layer_of[layer.offset:layer.offset + layer.dim] = layer.index
    out = torch.zeros(len(s_flat), len(rows), clip_model.embed_dim)
    for n in range(len(s_flat)):
        code, finished = s_flat[n:n + 1], 0
        for layer_index in layer_of[positions].unique().tolist():
            members = (layer_of[positions] == layer_index).nonzero()[:, 0]
            start = (layer_index, *generator.synthesis_prefix(generator.flat_to_s(code), layer_index))
            for first in range(0, len(members), chunk):
                part = members[first:first + chunk]
                s = code.repeat(2 * len(part), 1)
                index = torch.arange(len(part), device=device)
                p = positions[part].to(device)
                s[2 * index, p] = mean[p] - 5 * std[p]
                s[2 * index + 1, p] = mean[p] + 5 * std[p]
                img = generator.synthesis(generator.flat_to_s(s), start=start)
                emb = clip_model.encode_image_eval(img_to_images(img)) if quantise else clip_model.encode_image(img)
                diff = emb[1::2] - emb[0::2]
                out[n, part] = (diff / diff.norm(dim=1, keepdim=True).clamp_min(1e-12)).cpu()
                finished += len(part)
                if progress:
                    progress(finished, len(rows), "official differences")
    return out


@torch.inference_mode()
def reference_relevance(generator: Generator, clip_model: ClipModel, mean: torch.Tensor, std: torch.Tensor,
                        n_images: int = RELEVANCE_IMAGES, seed: int = RELEVANCE_SEED, truncation: float = 0.7,
                        channels: torch.Tensor | None = None, progress: ProgressFn | None = None) -> torch.Tensor:
    """The official procedure (for comparison): each conv channel set to mean ± 5σ on n_images codes, rendered at
    full resolution, uint8-quantised, encoded through CLIP's PIL preprocessing; normalised differences averaged
    (`channel_secants`).

    Args:
        channels: optional subset of conv-channel indices (rows) to compute; default all.

    Returns:
        [len(channels), D] unit rows.
    """
    s0 = generator.s_to_flat(generator.w_plus_to_s(generator.w_to_w_plus(
        sample_w(generator, n_images, seed, truncation))))
    rows = torch.arange(conv_channel_index(generator).numel()) if channels is None else channels
    total = torch.zeros(len(rows), clip_model.embed_dim)
    for n in range(n_images):
        total += channel_secants(generator, clip_model, s0[n:n + 1], mean, std, rows)[0]
        if progress:
            progress(n + 1, n_images, "reference relevance")
    return total / total.norm(dim=1, keepdim=True).clamp_min(1e-12)
