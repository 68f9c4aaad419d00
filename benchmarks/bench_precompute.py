"""The relevance precompute against the official procedure: cost (generator-equivalent FLOPs) and agreement.

Cost: FLOPs counted with torch's FlopCounterMode for one image of each method, scaled to a whole run, and
expressed in units of one full-resolution generator forward pass (batch 1):
  - ours: `image_jacobian_directions` per image (early-exit synthesis at CLIP's input size, CLIP forward, one
    batched backward per output dimension; with a basis, so only on the first `basis_images` images and one per
    basis direction on the others, the rank taken from the shipped manifest or the recomputed run); with
    refined rows, also the probe (every channel's ±5σ pair on the probe images) and the refinement (the refined
    rows' pairs on the other images), each pair rendered from its channel's layer on (`channel_secants`);
  - official: every conv channel set to mean ± 5σ on 100 images, rendered at full resolution and CLIP-encoded:
    2 x 100 x channels x (generator + CLIP).
Agreement: for a set of text directions, the top-k channels by |relevance| of our matrix vs the official
procedure's matrix (computed here on `--ref-images` images, all channels), averaged over directions.

    python benchmarks/bench_precompute.py [--model toyfaces] [--ref-images 20] [--k 10]
    python benchmarks/bench_precompute.py --ours-dir DIR --ref-cache REF.npz   # a matrix `precompute` wrote
    python benchmarks/bench_precompute.py --model ffhq --flops-only     # FFHQ-1024 cost, random weights
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from styleclip.engines.global_directions import text_direction  # noqa: E402
from styleclip.engines.precompute import (  # noqa: E402
    RELEVANCE_BASIS_ENERGY,
    RELEVANCE_BASIS_IMAGES,
    RELEVANCE_IMAGES,
    RELEVANCE_PROBE_IMAGES,
    RELEVANCE_REFINE_CHANNELS,
    RELEVANCE_SEED,
    clip_render_resolution,
    compute_relevance,
    reference_relevance,
    sample_w,
)
from styleclip.engines.statistics import conv_channel_index, load_statistics  # noqa: E402
from styleclip.evaluation import HELDOUT_EDITS  # noqa: E402
from styleclip.imaging import img_to_images  # noqa: E402

DIRECTIONS = [("face", "smiling face"), ("face", "face with blond hair"), ("face", "face with glasses"),
              ("face", "face with a beard"), ("face", "face with closed eyes"), ("face", "face wearing a hat"),
              ("face", "face with a purple background"), ("face", "old face"), ("face", "bald face"),
              ("face", "face with red lipstick")]
OFFICIAL_IMAGES = 100


def _flops(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def _jacobian_flops(generator, clip_model, s) -> tuple[int, int]:
    """FLOPs of `image_jacobian_directions` for one image: (its forward, one backward). The backward is taken once
    per cotangent (its batched backward is one backward pass per cotangent; FlopCounterMode cannot follow
    autograd.grad's batching, so one plain backward is counted)."""
    res = clip_render_resolution(generator, clip_model)
    conv_ids = [layer.index for layer in generator.conv_layers]
    leaves = {i: s[i].clone().requires_grad_(True) for i in conv_ids}
    counter = FlopCounterMode(display=False)
    with counter:
        emb = clip_model.encode_image(generator.synthesis([leaves.get(i, t) for i, t in enumerate(s)],
                                                          until_resolution=res))[0]
    forward = counter.get_total_flops()
    counter = FlopCounterMode(display=False)
    with counter:
        emb[0].backward(inputs=list(leaves.values()))  # as autograd.grad: no weight gradients
    return int(forward), int(counter.get_total_flops())


def _secant_flops(generator, clip_model, s) -> tuple[dict[int, int], dict[int, int], int]:
    """FLOPs of `channel_secants`' parts for one code: the prefix up to each conv layer, the render from each conv
    layer on, and one CLIP encoding through the PIL path → ({layer: prefix}, {layer: suffix}, clip)."""
    prefix, suffix = {}, {}
    for layer in generator.conv_layers:
        prefix[layer.index] = _flops(lambda i=layer.index: generator.synthesis_prefix(s, i))
        start = (layer.index, *generator.synthesis_prefix(s, layer.index))
        suffix[layer.index] = _flops(lambda st=start: generator.synthesis(s, start=st))
    with torch.no_grad():
        images = img_to_images(generator.synthesis(s))
    return prefix, suffix, _flops(lambda: clip_model.encode_image_eval(list(images)))


def cost(generator, clip_model, n_images: int, basis_images: int = 0, basis_rank: int = 0,
         probe_images: int = 0, refined_rows: list[int] | None = None) -> dict:
    """Both methods' FLOPs in generator forwards. basis_rank 0: the full Jacobian on every image. With
    `refined_rows` (conv-channel rows; ints, or None entries for rows whose layer is not known, costed as full
    renders): the probe (every channel's ±5σ pair on `probe_images` images) and the refinement (the refined
    rows' pairs on the other images), each pair rendered from its channel's layer after one prefix per layer."""
    w = sample_w(generator, 1, seed=0, truncation=0.7)
    with torch.no_grad():
        s = generator.w_plus_to_s(generator.w_to_w_plus(w))
    g_full = _flops(lambda: generator.synthesis(s))
    prefix, suffix, clip_eval = _secant_flops(generator, clip_model, s)
    forward, backward = _jacobian_flops(generator, clip_model, s)
    full_one = forward + clip_model.embed_dim * backward
    n_full = n_images if basis_rank == 0 else min(basis_images, n_images)
    jacobian = n_full * full_one + (n_images - n_full) * (forward + basis_rank * backward)
    layer_of = {}
    for layer in generator.conv_layers:
        layer_of.update({row: layer.index for row in range(len(layer_of), len(layer_of) + layer.dim)})

    def secants(rows: list[int | None]) -> int:  # one image's pairs of these rows
        layers = [layer_of.get(r) if r is not None else None for r in rows]
        return (sum(prefix[i] for i in set(layers) - {None})
                + sum(2 * ((suffix[i] if i is not None else g_full) + clip_eval) for i in layers))

    probe = refinement = 0
    if refined_rows:
        probe = probe_images * secants(list(layer_of))
        refinement = (n_images - probe_images) * secants(refined_rows)
    ours = jacobian + probe + refinement
    channels = conv_channel_index(generator).numel()
    official = 2 * OFFICIAL_IMAGES * channels * (g_full + clip_eval)
    return {"channels": channels, "clip_dim": clip_model.embed_dim, "generator_forward_gflop": g_full / 1e9,
            "ours_images": n_images, "ours_full_jacobian_images": n_full, "ours_basis_rank": basis_rank,
            "ours_full_image_g_equiv": full_one / g_full, "ours_jacobian_g_equiv": jacobian / g_full,
            "ours_probe_images": probe_images if refined_rows else 0,
            "ours_refined_rows": len(refined_rows or []), "ours_probe_g_equiv": probe / g_full,
            "ours_refinement_g_equiv": refinement / g_full,
            "ours_total_g_equiv": ours / g_full, "official_total_g_equiv": official / g_full,
            "flop_ratio_official_over_ours": official / ours}


def candidate_channels(fs3_ours: torch.Tensor, clip_model, k: int, n_random: int,
                       seed: int = 0) -> tuple[torch.Tensor, set[int]]:
    """Rows for a reference restricted to likely top channels: the union of our top-k for every direction plus
    n_random other rows (a check that the reference's top channels do not lie outside the union).

    Returns:
        (all rows, sorted [R]; the random ones among them).
    """
    rows: set[int] = set()
    for neutral, target in DIRECTIONS:
        dt, _ = text_direction(clip_model, neutral, target)
        rows |= set((fs3_ours @ dt).abs().topk(k).indices.tolist())
    others = sorted(set(range(fs3_ours.shape[0])) - rows)
    pick = np.random.RandomState(seed).choice(len(others), size=min(n_random, len(others)), replace=False)
    random_rows = {others[i] for i in pick}
    return torch.tensor(sorted(rows | random_rows)), random_rows


def agreement(fs3_ours: torch.Tensor, fs3_ref: torch.Tensor, clip_model, k: int,
              ref_rows: torch.Tensor | None = None, random_rows: set[int] | None = None,
              directions: list[tuple[str, str]] = DIRECTIONS) -> dict:
    """Top-k overlap of |relevance| per direction (text pairs, default DIRECTIONS). With `ref_rows`, fs3_ref holds
    only those rows of the matrix: the reference's top-k is taken among them (ours among all rows), and
    `random_rows` (rows outside our candidate sets) are counted when they enter the reference's top-k."""
    rows = torch.arange(fs3_ours.shape[0]) if ref_rows is None else ref_rows
    per_direction = {}
    for neutral, target in directions:
        dt, _ = text_direction(clip_model, neutral, target)
        r_ours_all, r_ref = (fs3_ours @ dt).abs(), (fs3_ref @ dt).abs()
        r_ours = r_ours_all[rows]
        top_ours = set(r_ours_all.topk(k).indices.tolist())
        top_ref = set(rows[r_ref.topk(k).indices].tolist())
        rank_ours, rank_ref = r_ours.argsort().argsort().float(), r_ref.argsort().argsort().float()
        spearman = float(torch.corrcoef(torch.stack([rank_ours, rank_ref]))[0, 1])
        row = {"top_k_overlap": len(top_ours & top_ref) / k,
               "top1_same": int(r_ours_all.argmax() == rows[r_ref.argmax()]), "spearman": round(spearman, 3)}
        if random_rows is not None:
            row["random_rows_in_ref_top_k"] = len(top_ref & random_rows)
        per_direction[f"{neutral} -> {target}"] = row
    overlaps = [d["top_k_overlap"] for d in per_direction.values()]
    return {"k": k, "mean_top_k_overlap": float(np.mean(overlaps)), "min_top_k_overlap": float(np.min(overlaps)),
            "per_direction": per_direction}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toyfaces")
    p.add_argument("--ref-images", type=int, default=RELEVANCE_IMAGES,
                   help="images of the official procedure run here (its first N codes)")
    p.add_argument("--ref-seed", type=int, default=RELEVANCE_SEED, help="seed of the reference procedure's latents")
    p.add_argument("--ref-candidates", type=int, default=0, metavar="K",
                   help="run the reference only on the union of our top-K channels per direction (0: all rows)")
    p.add_argument("--ref-random", type=int, default=100, help="with --ref-candidates: random other rows added")
    p.add_argument("--ref-cache", type=Path, help="an .npz holding the reference rows: read if present, else written")
    p.add_argument("--ours-images", type=int, default=0,
                   help="recompute our matrix on the reference's first N codes (0: the shipped matrix)")
    p.add_argument("--ours-dir", type=Path,
                   help="measure the matrix that `python -m styleclip precompute --out DIR` wrote there")
    p.add_argument("--basis-images", type=int, default=RELEVANCE_BASIS_IMAGES,
                   help="with --ours-images: images that take the full Jacobian (>= N: all of them)")
    p.add_argument("--basis-energy", type=float, default=RELEVANCE_BASIS_ENERGY,
                   help="with --ours-images: energy share of the basis for the other images (default: precompute's; "
                        "1: the full Jacobian everywhere)")
    p.add_argument("--refine-channels", type=int, default=RELEVANCE_REFINE_CHANNELS,
                   help="with --ours-images: rows refined with official differences (default: precompute's; with "
                        "--model ffhq --flops-only: costed as full renders)")
    p.add_argument("--probe-images", type=int, default=RELEVANCE_PROBE_IMAGES,
                   help="with --refine-channels: images on which every channel is probed")
    p.add_argument("--basis-rank", type=int, default=0,
                   help="with --model ffhq --flops-only: the basis rank to cost (0: the full Jacobian everywhere)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--directions", choices=("precompute", "heldout-edits"), default="precompute",
                   help="text pairs of the agreement: the 10 this benchmark was built with (the refinement's "
                        "settings were chosen on them), or the edit benchmark's 12 held-out edits")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--flops-only", action="store_true", help="skip the agreement (needs no statistics)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from styleclip.studio import Studio

    if args.flops_only and args.model == "ffhq":
        from styleclip.models.clip_model import ClipModel, build_small_clip
        from styleclip.models.generator import Generator
        generator = Generator(1024).eval().requires_grad_(False)
        clip_model = ClipModel.from_model(build_small_clip(embed_dim=512, image_resolution=224, vision_layers=12,
                                                           vision_width=768, vision_patch_size=32,
                                                           transformer_width=512, transformer_heads=8,
                                                           transformer_layers=12, seed=0))
        found = cost(generator, clip_model, RELEVANCE_IMAGES, RELEVANCE_BASIS_IMAGES, args.basis_rank,
                     args.probe_images, [None] * args.refine_channels)
        print(json.dumps({"model": "ffhq-shaped (random weights)", **found}))
        return
    loaded = Studio().model(args.model)
    stats = loaded.engine().stats
    log = lambda done, total, stage: done % max(1, total // 20) == 0 and print(  # noqa: E731
        f"{stage}: {done}/{total} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    ours = load_statistics(args.ours_dir, loaded.generator) if args.ours_dir is not None else stats
    fs3_ours, n_ours = ours.fs3, int(ours.manifest.get("n_images", RELEVANCE_IMAGES))
    basis_images, basis_rank = int(ours.manifest.get("basis_images", 0)), int(ours.manifest.get("basis_rank", 0))
    probe_images, refined_rows = int(ours.manifest.get("probe_images", 0)), ours.manifest.get("refined_rows", [])
    t0 = time.time()
    if args.ours_images:
        info: dict = {}
        fs3_ours, n_ours = compute_relevance(loaded.generator, loaded.clip, n_images=args.ours_images,
                                             seed=args.ref_seed, truncation=loaded.bundle.truncation,
                                             basis_images=args.basis_images, basis_energy=args.basis_energy,
                                             refine_channels=args.refine_channels, probe_images=args.probe_images,
                                             s_stats=(stats.mean, stats.std), info=info,
                                             progress=log), args.ours_images
        basis_images, basis_rank = args.basis_images, info["basis_rank"]
        probe_images, refined_rows = args.probe_images, info["refined_rows"]
    result = {"model": loaded.name, "ours_seconds": round(time.time() - t0, 1) if args.ours_images else None,
              **cost(loaded.generator, loaded.clip, n_ours, basis_images, basis_rank, probe_images, refined_rows)}
    if not args.flops_only:
        rows, random_rows = None, None
        if args.ref_candidates:
            rows, random_rows = candidate_channels(fs3_ours, loaded.clip, args.ref_candidates, args.ref_random)
        t0 = time.time()
        if args.ref_cache is not None and args.ref_cache.is_file():
            with np.load(args.ref_cache) as npz:
                fs3_ref = torch.from_numpy(npz["fs3"])
                rows = torch.from_numpy(npz["rows"]) if "rows" in npz else rows
        else:
            fs3_ref = reference_relevance(loaded.generator, loaded.clip, stats.mean, stats.std,
                                          n_images=args.ref_images, seed=args.ref_seed, channels=rows,
                                          truncation=loaded.bundle.truncation, progress=log)
            if args.ref_cache is not None:
                extra = {} if rows is None else {"rows": rows.numpy()}
                np.savez(args.ref_cache, fs3=fs3_ref.numpy(), **extra)
            result["reference_seconds"] = round(time.time() - t0, 1)
        result.update({"reference_images": args.ref_images, "reference_seed": args.ref_seed,
                       "reference_rows": int(fs3_ref.shape[0])})
        directions = DIRECTIONS if args.directions == "precompute" else [
            (spec.neutral, spec.target) for spec in HELDOUT_EDITS]
        result["agreement"] = agreement(fs3_ours, fs3_ref, loaded.clip, args.k, rows, random_rows, directions)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
