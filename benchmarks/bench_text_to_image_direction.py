"""Global directions with the text direction mapped into CLIP's image space (a diagnostic, not a product
path).

A ridge regression M from CLIP text embeddings to CLIP image embeddings is fitted on fresh renders (n faces,
two captions each: one naming every attribute, one random); each edit's Δt is replaced by M·Δt (or, with
--gamma, by M·Δt/|M·Δt| + γ·Δt), then ranked by the model's own relevance metric; alpha 4.1 and auto-beta as
the app. Prints one line per setting: the benchmark's mean success / preservation and the per-edit figures.

    python benchmarks/bench_text_to_image_direction.py --ridge 0.01 0.1 1 --threads 2
    python benchmarks/bench_text_to_image_direction.py --ridge 0.1 --gamma 0.5 1 2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from styleclip.engines.global_directions import GlobalDirections
from styleclip.evaluation import BENCHMARK_EDITS, evaluate_edits, global_directions_edit
from styleclip.studio import Studio
from styleclip.toyfaces.attributes import ATTRIBUTES
from styleclip.toyfaces.captions import caption
from styleclip.toyfaces.classifier import load_classifier
from styleclip.toyfaces.dataset import make_dataset


def paired_embeddings(clip_model, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(text [2n, E], image [2n, E]) unit embeddings: each render with a full and a random caption."""
    images, _, params = make_dataset(n, seed, size=64, workers=1)
    rng = np.random.default_rng(0)
    names = [a.name for a in ATTRIBUTES]
    texts = [caption(p, rng, mention=names) for p in params] + [caption(p, rng) for p in params]
    with torch.no_grad():
        image_emb = clip_model.encode_image_eval(list(images), batch_size=100).float()
        chunks = [clip_model.encode_text(texts[i:i + 200]) for i in range(0, len(texts), 200)]
        text_emb = torch.cat(chunks).float()
    return text_emb, torch.cat([image_emb, image_emb])


def fit_ridge(text_emb: torch.Tensor, image_emb: torch.Tensor, ridge: float) -> tuple[torch.Tensor, float]:
    """[E, E] M with (image − mean) ≈ (text − mean)·M, the penalty ridge·mean eigenvalue; and the fit's R²."""
    t, i = text_emb - text_emb.mean(0), image_emb - image_emb.mean(0)
    gram = t.T @ t / len(t)
    penalty = ridge * gram.trace() / gram.shape[0] * torch.eye(gram.shape[0])
    m = torch.linalg.solve(gram + penalty, t.T @ i / len(t))
    return m, float(1 - ((t @ m - i) ** 2).sum() / (i ** 2).sum())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=3000, help="renders the regression is fitted on")
    p.add_argument("--render-seed", type=int, default=777)
    p.add_argument("--ridge", type=float, nargs="+", default=[0.1])
    p.add_argument("--gamma", type=float, nargs="*", default=[], help="add γ·Δt back (default: M·Δt alone)")
    p.add_argument("--seeds", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    loaded = Studio().model("toyfaces")
    classifier = load_classifier()
    text_emb, image_emb = paired_embeddings(loaded.clip, args.n, args.render_seed)
    shipped = loaded.engine()
    for ridge in args.ridge:
        m, r2 = fit_ridge(text_emb, image_emb, ridge)
        for gamma in args.gamma or [None]:
            engine = GlobalDirections(loaded.generator, loaded.clip, shipped.stats,
                                      relevance_shrinkage=shipped.relevance_shrinkage)
            metric = engine._relevance_of  # a benchmark-only hook: the engine has no public Δt transform

            def mapped(dt: torch.Tensor, m=m, gamma=gamma, metric=metric) -> torch.Tensor:
                v = m.T @ dt.float()
                v = v / v.norm() if gamma is None else v / v.norm() + gamma * dt.float()
                return metric(v / v.norm())

            engine._relevance_of = mapped
            edit_fn = global_directions_edit(loaded)
            edit_fn.engine = engine
            report = evaluate_edits(loaded, classifier, edit_fn, BENCHMARK_EDITS, range(args.seeds)).to_dict()
            rows = {r["name"]: [round(100 * (r["success"] or 0)), round(100 * (r["preservation"] or 0))]
                    for r in report["rows"]}
            print(json.dumps({"ridge": ridge, "r2": round(r2, 3), "gamma": gamma,
                              "metric": engine.relevance_metric, "success": round(100 * report["success"], 1),
                              "preservation": round(100 * report["preservation"], 1), "rows": rows}),
                  flush=True)


if __name__ == "__main__":
    main()
