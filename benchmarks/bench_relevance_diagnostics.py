"""Where our relevance matrix and the official procedure's differ (the figures behind BENCHMARKS.md's diagnosis).

- `per-image`: for the first --images codes of the official sample and --channels random conv channels, the cosine
  of our unit Jacobian column with the official ±5σ embedding difference (uint8 renders, CLIP's PIL preprocessing),
  and of the same difference computed in float (no quantisation) with the official one.
- `quadrature`: what a tangent can and cannot do. Per image and channel, the cosine with the official float ±5σ
  difference (channel set to its mean ± 5σ) of: the tangent at the image's own value (what our precompute
  uses), the tangent at the channel's mean (the official centre), the secant ±5σ around the image's own value,
  and Gauss-Legendre averages of 2 and 3 tangents along the official segment. Only the last two need
  evaluations of each channel at its own points, i.e. the official procedure's per-channel cost.
- `compare A B`: the top-k agreement of two cached matrices (.npy, or .npz with `fs3`), e.g. two official runs on
  different images written by `bench_precompute.py --ref-seed S --ref-cache ...`.
- `probe REF [BASE ...]`: secant refinement chosen by a probe, simulated from a full official matrix REF (all rows,
  e.g. `bench_precompute.py --ref-cache`): the official ±5σ secant of every channel on the first --images codes,
  its cosine with our unit tangent there, and the top-k agreement with REF of each BASE matrix (default the
  shipped one) whose --refine M least-agreeing rows are replaced by REF's rows (what computing them by the
  official procedure would give). Writes each refined matrix with --save-dir.

    python benchmarks/bench_relevance_diagnostics.py per-image [--images 3] [--channels 80]
    python benchmarks/bench_relevance_diagnostics.py quadrature [--images 3] [--channels 60]
    python benchmarks/bench_relevance_diagnostics.py compare runs/ref10_seed0.npz runs/ref10_seed1.npz
    python benchmarks/bench_relevance_diagnostics.py probe runs/ref100.npz --images 2 --refine 32 64 96 128
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_precompute import agreement  # noqa: E402
from styleclip.engines.precompute import (  # noqa: E402
    RELEVANCE_SEED,
    channel_secants,
    compute_relevance,
    image_jacobian_directions,
    sample_w,
)
from styleclip.engines.statistics import conv_channel_index  # noqa: E402
from styleclip.studio import Studio  # noqa: E402


def _load(path: Path) -> torch.Tensor:
    if path.suffix == ".npz":
        with np.load(path) as npz:
            return torch.from_numpy(npz["fs3"])
    return torch.from_numpy(np.load(path))


def _image_secants(loaded, s_flat: torch.Tensor, rows: torch.Tensor, quantise: bool = True) -> torch.Tensor:
    """The official unit differences of one code s_flat [1, S] for conv-channel rows → [len(rows), D]."""
    stats = loaded.engine().stats
    return channel_secants(loaded.generator, loaded.clip, s_flat, stats.mean, stats.std, rows, quantise=quantise)[0]


def per_image(loaded, n_images: int, n_channels: int) -> dict:
    g = loaded.generator
    conv = conv_channel_index(g)
    rows = torch.randperm(conv.numel(), generator=torch.Generator().manual_seed(0))[:n_channels]
    ws = sample_w(g, n_images, RELEVANCE_SEED, loaded.bundle.truncation)
    tangent, unquantised = [], []
    for w in ws:
        jac = image_jacobian_directions(g, loaded.clip, w)[rows]
        with torch.inference_mode():
            s_flat = g.s_to_flat(g.w_plus_to_s(g.w_to_w_plus(w[None])))
        official = _image_secants(loaded, s_flat, rows)
        tangent += (official * jac).sum(1).tolist()
        unquantised += (official * _image_secants(loaded, s_flat, rows, quantise=False)).sum(1).tolist()
    summary = lambda v: {"mean": round(float(np.mean(v)), 4), "median": round(float(np.median(v)), 4),  # noqa: E731
                         "p10": round(float(np.percentile(v, 10)), 4)}
    return {"images": n_images, "channels": n_channels, "cos_jacobian_vs_official": summary(tangent),
            "cos_float_difference_vs_official": summary(unquantised)}


@torch.inference_mode()
def quadrature(loaded, n_images: int, n_channels: int, eps: float = 0.05) -> dict:
    g, clip_model, stats = loaded.generator, loaded.clip, loaded.engine().stats
    conv = conv_channel_index(g)
    rows = torch.randperm(conv.numel(), generator=torch.Generator().manual_seed(0))[:n_channels]
    gauss2 = [(-1 / 3 ** 0.5, 1.0), (1 / 3 ** 0.5, 1.0)]
    gauss3 = [(-0.6 ** 0.5, 5.0), (0.0, 8.0), (0.6 ** 0.5, 5.0)]
    found: dict[str, list[float]] = {k: [] for k in ("tangent_at_image_value", "tangent_at_channel_mean",
                                                     "secant_around_image_value", "gauss_2_tangents",
                                                     "gauss_3_tangents")}
    unit = lambda v: v / v.norm().clamp_min(1e-12)  # noqa: E731
    for w in sample_w(g, n_images, RELEVANCE_SEED, loaded.bundle.truncation):
        s_flat = g.s_to_flat(g.w_plus_to_s(g.w_to_w_plus(w[None])))
        for row in rows.tolist():
            p = int(conv[row])
            mean, std, own = float(stats.mean[p]), float(stats.std[p]), float(s_flat[0, p])
            # values of channel p: official pair, secant around the image, then a ±eps pair per tangent point
            centres = [own, mean] + [mean + 5 * std * t for t, _ in gauss2 + gauss3]
            values = [mean - 5 * std, mean + 5 * std, own - 5 * std, own + 5 * std]
            values += [c + sign * eps * std for c in centres for sign in (-1.0, 1.0)]
            s = s_flat.repeat(len(values), 1)
            s[:, p] = torch.tensor(values)
            emb = clip_model.encode_image(g.synthesis(g.flat_to_s(s)))
            emb = emb / emb.norm(dim=1, keepdim=True)
            official = unit(emb[1] - emb[0])
            tangents = [emb[5 + 2 * k] - emb[4 + 2 * k] for k in range(len(centres))]  # unnormalised: integrated
            found["secant_around_image_value"].append(float(official @ unit(emb[3] - emb[2])))
            found["tangent_at_image_value"].append(float(official @ unit(tangents[0])))
            found["tangent_at_channel_mean"].append(float(official @ unit(tangents[1])))
            for name, rule, first in (("gauss_2_tangents", gauss2, 2), ("gauss_3_tangents", gauss3, 4)):
                avg = sum(wt * tangents[first + k] for k, (_, wt) in enumerate(rule))
                found[name].append(float(official @ unit(avg)))
    summary = {k: {"mean": round(float(np.mean(v)), 4), "median": round(float(np.median(v)), 4),
                   "p10": round(float(np.percentile(v, 10)), 4)} for k, v in found.items()}
    return {"images": n_images, "channels": n_channels, "cos_with_official_float_difference": summary}


def probe(loaded, reference: torch.Tensor, bases: dict[str, torch.Tensor], n_images: int, refine: list[int],
          k: int, save_dir: Path | None) -> dict:
    g, stats = loaded.generator, loaded.engine().stats
    # The precompute's own probe, on the probe images only: it ranks every channel and refines none.
    info: dict = {}
    compute_relevance(g, loaded.clip, n_images=n_images, truncation=loaded.bundle.truncation,
                      refine_channels=conv_channel_index(g).numel(), probe_images=n_images,
                      s_stats=(stats.mean, stats.std), info=info)
    order, agreeing = torch.tensor(info["refined_rows"]), info["probe_cosine"]  # least agreeing first
    result: dict = {"images": n_images, "tangent_secant_cosine_quantiles": {
        q: round(float(agreeing.quantile(q)), 4) for q in (0.01, 0.05, 0.5)}}
    for name, base in bases.items():
        rows = {}
        for m in [0, *refine]:
            refined = base.clone()
            refined[order[:m]] = reference[order[:m]]
            found = agreement(refined, reference, loaded.clip, k)
            rows[m] = {"mean": round(found["mean_top_k_overlap"], 3), "min": found["min_top_k_overlap"]}
            if save_dir is not None and m:
                save_dir.mkdir(parents=True, exist_ok=True)
                np.save(save_dir / f"{Path(name).stem}_refined{m}.npy", refined.numpy())
        result[name] = rows
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["per-image", "quadrature", "compare", "probe"])
    p.add_argument("files", nargs="*", type=Path,
                   help="compare: two cached matrices; probe: the official matrix, then base matrices")
    p.add_argument("--refine", type=int, nargs="+", default=[32, 64, 96, 128], help="probe: rows refined")
    p.add_argument("--save-dir", type=Path, help="probe: write the refined matrices here")
    p.add_argument("--model", default="toyfaces")
    p.add_argument("--images", type=int, default=3)
    p.add_argument("--channels", type=int, default=80)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = Studio().model(args.model)
    if args.what in ("per-image", "quadrature"):
        measure = per_image if args.what == "per-image" else quadrature
        print(json.dumps({"model": loaded.name, **measure(loaded, args.images, args.channels)}))
        return
    if args.what == "probe":
        if not args.files:
            p.error("probe needs the official matrix")
        bases = {str(f): _load(f) for f in args.files[1:]} or {"shipped": loaded.engine().stats.fs3}
        print(json.dumps({"model": loaded.name, **probe(loaded, _load(args.files[0]), bases, args.images,
                                                        args.refine, args.k, args.save_dir)}))
        return
    if len(args.files) != 2:
        p.error("compare needs two files")
    a, b = (_load(f) for f in args.files)
    result = agreement(a, b, loaded.clip, args.k)
    result["mean_row_cosine"] = round(float((a * b).sum(1).mean()), 4)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
