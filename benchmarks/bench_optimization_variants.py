"""Latent-optimization variants that the engine does not offer, scored by the edit benchmark: does any of them
stop the optimizer from meeting the CLIP loss with a colour shift instead of the edit
(BENCHMARKS.md, "Optimization: the objective's minimum is not the edit")?

The loop is the engine's objective (CLIP + l2·L2 + id·identity, the model's defaults, the official
learning-rate schedule) on an offset added to the source's W+, with one of these changes:

    --param wplus     the offset is a full [L, D] W+ offset (the engine's freedom)
    --param shared    one [D] offset added to every W+ row
    --param pca       a [L, D] offset in the whitened PCA basis of W (20,000 mapped z; eigenvalues floored
                      at --floor of the largest), L2 taken on the whitened offset
    --views K         CLIP reads the image and K − 1 random crops (scale --scale..1), shifted by up to
                      --shift px, noised (std 0.03)
    --opt global      Adam with one second moment for the whole latent (steepest descent), not per element

    python benchmarks/bench_optimization_variants.py --param shared --l2 0.005 --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from styleclip.engines.optimization import lr_schedule
from styleclip.evaluation import BENCHMARK_EDITS, evaluate_edits, format_report
from styleclip.studio import Studio, optimization_steps, optimization_weights
from styleclip.toyfaces.classifier import load_classifier

DEFAULT_EDITS = "hat,beard,smiling,purple background,black hair"


def whitened_basis(generator, floor: float, n: int = 20000) -> torch.Tensor:
    """[D, D] A with w − mean(w) ≈ A·u for whitened u: W's covariance eigenvectors times sqrt(eigenvalue)."""
    with torch.no_grad():
        z = torch.randn(n, generator.style_dim, generator=torch.Generator().manual_seed(123))
        w = generator.mapping(z)
        w = w - w.mean(0)
        evals, evecs = torch.linalg.eigh(w.T @ w / n)
        return evecs * evals.clamp_min(evals.max() * floor).sqrt()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--param", choices=("wplus", "shared", "pca"), default="wplus")
    p.add_argument("--views", type=int, default=1)
    p.add_argument("--scale", type=float, default=0.8, help="with --views: smallest crop side, as a fraction")
    p.add_argument("--shift", type=int, default=4, help="with --views: largest shift in pixels")
    p.add_argument("--opt", choices=("adam", "global"), default="adam")
    p.add_argument("--floor", type=float, default=1e-3,
                   help="with --param pca: eigenvalue floor, a fraction of the largest")
    p.add_argument("--steps", type=int, default=None, help="default: the model's")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--l2", type=float, default=None, help="default: the model's")
    p.add_argument("--id-lambda", type=float, default=None, help="default: the model's")
    p.add_argument("--edits", default=DEFAULT_EDITS)
    p.add_argument("--seeds", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    loaded = Studio().model("toyfaces")
    generator, clip_model = loaded.generator, loaded.clip
    l2_lambda, id_lambda, identity = optimization_weights(loaded, args.l2, args.id_lambda)
    steps = optimization_steps(loaded, args.steps)
    basis = whitened_basis(generator, args.floor) if args.param == "pca" else None
    view_rng = torch.Generator().manual_seed(0)  # one stream for the whole run: deterministic

    def views(img: torch.Tensor) -> torch.Tensor:
        """img [1, 3, R, R] and views − 1 crops of it → [views, 3, R, R]."""
        side_full = img.shape[-1]
        out = [img]
        for _ in range(args.views - 1):
            scale = float(torch.empty(1).uniform_(args.scale, 1.0, generator=view_rng))
            side = max(8, round(side_full * scale))
            top, left = (int(torch.randint(0, side_full - side + 1, (1,), generator=view_rng))
                         for _ in range(2))
            crop = F.interpolate(img[..., top:top + side, left:left + side], size=(side_full, side_full),
                                 mode="bilinear", align_corners=False)
            dy, dx = (int(v) for v in torch.randint(-args.shift, args.shift + 1, (2,), generator=view_rng))
            crop = torch.roll(crop, (dy, dx), (2, 3))
            out.append(crop + 0.03 * torch.randn(crop.shape, generator=view_rng))
        return torch.cat(out)

    def edit(spec, seed: int) -> torch.Tensor:
        w_plus_0 = loaded.source_w_plus(seed).detach().clone()  # [1, L, D]
        text_emb = clip_model.encode_text([spec.target])
        with torch.no_grad():
            id_ref = identity.embed(generator.synthesis_w_plus(w_plus_0)) if id_lambda > 0 else None
        shape = (1, 1, w_plus_0.shape[2]) if args.param == "shared" else tuple(w_plus_0.shape)
        offset = torch.zeros(shape, requires_grad=True)

        def w_plus() -> torch.Tensor:
            return w_plus_0 + (offset @ basis.T if basis is not None else offset.expand_as(w_plus_0))

        adam = torch.optim.Adam([offset], lr=args.lr)
        m, v = torch.zeros_like(offset), torch.zeros(())
        for i in range(steps):
            lr = lr_schedule(i / steps, args.lr)
            latent = w_plus()
            img = generator.synthesis_w_plus(latent)
            clip_loss = (1 - (clip_model.encode_image(views(img)) * text_emb).sum(-1)).mean()
            reg = (offset ** 2).sum() if basis is not None else ((latent - w_plus_0) ** 2).sum()
            loss = clip_loss + l2_lambda * reg
            if id_ref is not None:
                loss = loss + id_lambda * identity.loss_to(img, id_ref).mean()
            (grad,) = torch.autograd.grad(loss, [offset])
            if args.opt == "adam":
                for group in adam.param_groups:
                    group["lr"] = lr
                offset.grad = grad
                adam.step()
            else:
                m = 0.9 * m + 0.1 * grad
                v = 0.999 * v + 0.001 * (grad ** 2).mean()
                with torch.no_grad():
                    offset -= lr * (m / (1 - 0.9 ** (i + 1))) / ((v / (1 - 0.999 ** (i + 1))).sqrt() + 1e-8)
        with torch.no_grad():
            return generator.synthesis_w_plus(w_plus())

    wanted = [e.strip() for e in args.edits.split(",") if e.strip()]
    specs = [s for s in BENCHMARK_EDITS if s.name in wanted]
    if len(specs) != len(wanted):
        p.error(f"unknown edits in {wanted}; known: {[s.name for s in BENCHMARK_EDITS]}")
    label = (f"optimization variant: param {args.param}, views {args.views}, opt {args.opt}, {steps} steps, "
             f"lr {args.lr:g}, l2 {l2_lambda:g}, id {id_lambda:g}")
    label += f", floor {args.floor:g}" if basis is not None else ""
    t0 = time.perf_counter()
    report = evaluate_edits(loaded, load_classifier(), edit, specs, range(args.seeds), label=label)
    print(format_report(report))
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
