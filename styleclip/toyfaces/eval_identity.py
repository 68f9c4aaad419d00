"""How well the toyfaces identity network does its job: same person vs different person, on renders and on
the generator's edits.

- counterfactual renders (held-out seed): each attribute of n fresh faces changed alone (`set_attribute`);
  the mean cosine between the two embeddings per attribute. Identity attributes should score low, the rest
  high;
- graded drift: n fresh faces with a new pose and light and k = 0, 1, 2, 3, 5 other (non-identity) attributes
  changed; the mean cosine per k should fall as k grows;
- verification on fresh triplets: ROC-AUC of "the same face" (at most one other attribute changed, new pose)
  against "one identity attribute changed" (hard) and against "another random face" (easy; pairs that count as
  the same face are left out);
- the generator: cosine between a seed's image and its edit by each shipped mapper, against the cosine between
  images of two different seeds.

    python -m styleclip.toyfaces.eval_identity [--n 500] [--seeds 50]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from .attributes import ATTRIBUTES
from .classifier import to_img
from .identity_net import ToyfacesIdentity, load_identity
from .renderer import NUM_PARAMS, params_from_normal, render, set_attribute
from .train_identity import EDITABLE_ATTRIBUTES, changed_normal, identity_triplets, same_person

__all__ = ["attribute_invariance", "drift_by_changes", "verification_auc", "generator_edits", "main"]


def _embed(model: ToyfacesIdentity, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    """uint8 [N, H, W, 3] → unit embeddings [N, D]."""
    with torch.inference_mode():
        return torch.cat([model.embed(to_img(images[i:i + batch])) for i in range(0, len(images), batch)])


def attribute_invariance(model: ToyfacesIdentity, n: int, seed: int = 4242, size: int = 64) -> dict[str, float]:
    """Attribute → mean cos(embed(face), embed(face with only that attribute changed)) over n fresh faces."""
    rng = np.random.default_rng(seed)
    faces = [params_from_normal(u) for u in rng.standard_normal((n, NUM_PARAMS))]
    base = _embed(model, np.stack([render(p, size) for p in faces]))
    out = {}
    for attr in ATTRIBUTES:
        edited = []
        for p in faces:
            if attr.kind == "continuous":
                value = getattr(p, attr.name)
                edited.append(set_attribute(p, attr.name, value - 0.35 if value > 0.5 else value + 0.35))
            else:
                others = [v for v in attr.values if v != getattr(p, attr.name)]
                edited.append(set_attribute(p, attr.name, others[int(rng.integers(len(others)))]))
        emb = _embed(model, np.stack([render(p, size) for p in edited]))
        out[attr.name] = round(float((base * emb).sum(1).mean()), 4)
    return out


def drift_by_changes(model: ToyfacesIdentity, n: int, seed: int = 4444, size: int = 64,
                     counts: tuple[int, ...] = (0, 1, 2, 3, 5)) -> dict[str, float]:
    """k → mean cos(face, the face with a new pose and light and k random other attributes changed)."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((n, NUM_PARAMS))
    columns = {a.name: i for i, a in enumerate(ATTRIBUTES)}
    base = _embed(model, np.stack([render(params_from_normal(row), size) for row in u]))
    out = {}
    for k in counts:
        v = u.copy()
        v[:, len(ATTRIBUTES):] = rng.standard_normal((n, NUM_PARAMS - len(ATTRIBUTES)))
        for row in v:
            for name in rng.choice(EDITABLE_ATTRIBUTES, size=k, replace=False):
                row[columns[name]] = changed_normal(rng, str(name), float(row[columns[name]]))
        emb = _embed(model, np.stack([render(params_from_normal(row), size) for row in v]))
        out[f"{k} changed"] = round(float((base * emb).sum(1).mean()), 4)
    return out


def _auc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """P(a positive pair scores above a negative pair), ties counted half."""
    diff = positive[:, None] - negative[None, :]
    return float((diff > 0).float().mean() + 0.5 * (diff == 0).float().mean())


def verification_auc(model: ToyfacesIdentity, n: int, seed: int = 4343) -> dict[str, float]:
    """ROC-AUCs of the same face (at most one other attribute changed, new pose) vs the face with one identity
    attribute changed, and vs other random faces."""
    images, labels, visible = identity_triplets(n, seed, workers=1, use_cache=False)
    emb = _embed(model, images.reshape(-1, *images.shape[2:])).reshape(3, n, -1)
    same = (emb[0] * emb[1]).sum(1)
    hard = (emb[0] * emb[2]).sum(1)
    both = same_person({k: torch.as_tensor(v[:2].reshape(-1)) for k, v in labels.items()},
                       {k: torch.as_tensor(v[:2].reshape(-1)) for k, v in visible.items()})
    keep = ~both[:n, n:] & ~torch.eye(n, dtype=torch.bool)  # a_i vs b_j: other faces only
    other = (emb[0] @ emb[1].t())[keep]
    return {"pairs": n, "same_face_cos": round(float(same.mean()), 3),
            "one_identity_attribute_changed_cos": round(float(hard.mean()), 3),
            "other_face_cos": round(float(other.mean()), 3),
            "auc_vs_identity_attribute_changed": round(_auc(same, hard), 4),
            "auc_vs_other_face": round(_auc(same, other), 4)}


def generator_edits(model: ToyfacesIdentity, n_seeds: int) -> dict[str, float]:
    """Mean cos between a generated source and its edit by each shipped mapper, and between two seeds."""
    from ..engines.mapper import apply_mapper, load_mapper  # noqa: PLC0415
    from ..evaluation import BENCHMARK_EDITS, mapper_paths_in  # noqa: PLC0415
    from ..models.model_zoo import mappers_dir  # noqa: PLC0415
    from ..studio import Studio  # noqa: PLC0415

    loaded = Studio().model("toyfaces")
    g = loaded.generator
    with torch.inference_mode():
        w_plus = torch.cat([loaded.source_w_plus(seed) for seed in range(n_seeds)])
        source = model.embed(g.synthesis_w_plus(w_plus))
        out = {"two_different_seeds": round(float((source * source.roll(1, 0)).sum(1).mean()), 3)}
        for name, path in mapper_paths_in(mappers_dir("toyfaces"), BENCHMARK_EDITS).items():
            edited = model.embed(g.synthesis_w_plus(apply_mapper(load_mapper(path, g), w_plus)))
            out[f"mapper {name}"] = round(float((source * edited).sum(1).mean()), 3)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500, help="fresh faces (and triplets) to score")
    ap.add_argument("--seeds", type=int, default=50, help="generator seeds for the mapper edits (0: skip)")
    ap.add_argument("--model", default=None, help="identity network file (default: the shipped one)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_identity(args.model)
    t0 = time.time()
    result = {"attribute_change_cos": attribute_invariance(model, args.n),
              "new_pose_and_k_other_attributes_cos": drift_by_changes(model, args.n),
              "verification": verification_auc(model, args.n)}
    if args.seeds:
        result["generator_cos"] = generator_edits(model, args.seeds)
    result["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
