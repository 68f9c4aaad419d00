"""How far a pixel perturbation of size eps moves an embedded CLIP's image embedding, on renders and on generator
images.

Latent optimization descends a CLIP loss through the generator; where a perturbation too small to see moves the
embedding a long way, the optimizer finds such a change (a tint, a re-lighting) before the edit the text asks
for. For each eps (per pixel, in the [-1, 1] units of `img`), the table gives:

- the cosine between a picture's unit embedding and its embedding under the worst perturbation that `--steps`
  signed-gradient steps find (`train_clip.adversarial_delta`), mean and 10th percentile, beside the same under
  uniform noise of that size;
- the gain in cosine with a target text that a perturbation of that size buys when it is aimed at the text
  (mean over the pictures and the `--texts`), i.e. how much a CLIP loss can fall without the picture changing.

    python benchmarks/bench_clip_robustness.py [--clip assets/toyfaces/clip.pt] [--n 64] [--eps 0.01 0.03 0.06]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from styleclip.models.clip_model import ClipModel
from styleclip.models.model_zoo import load_generator_spec
from styleclip.studio import seed_to_z
from styleclip.toyfaces.train_clip import (
    adversarial_delta,
    at_resolution,
    batch_at,
    image_features_of,
    signed_gradient_delta,
)

TEXTS = ("face with a knit hat", "face with a beard", "face with a purple background", "smiling face")


def targeted_gain(model, img: torch.Tensor, clean: torch.Tensor, text: torch.Tensor, eps: float,
                  steps: int) -> torch.Tensor:
    """Per picture [B]: cos(embedding of img + delta, text) − cos(clean, text), clean [B, D] the unit embeddings of
    img and delta (|delta| <= eps) found by `steps` signed-gradient steps that raise the first term; text [D] is a
    unit text embedding."""
    delta = signed_gradient_delta(model, img, eps, steps, lambda f: (f @ text).sum(), torch.zeros_like(img))
    with torch.no_grad():
        return (image_features_of(model, img + delta) - clean) @ text


def rows_for(model, img: torch.Tensor, texts: torch.Tensor, eps_list: list[float], steps: int) -> list[str]:
    """Table rows for one picture set img [B, 3, 64, 64] in [-1, 1]."""
    with torch.no_grad():
        clean = image_features_of(model, img)
    rows = []
    for eps in eps_list:
        gen = torch.Generator().manual_seed(0)
        delta = adversarial_delta(model, img, eps, steps, gen)
        noise = (torch.rand(img.shape, generator=gen) * 2 - 1) * eps
        with torch.no_grad():
            attacked = (image_features_of(model, img + delta) * clean).sum(-1)
            noisy = (image_features_of(model, img + noise) * clean).sum(-1)
        gains = torch.cat([targeted_gain(model, img, clean, t, eps, steps) for t in texts])
        rows.append(f"| {eps:g} | {attacked.mean():.3f} / {attacked.quantile(0.1):.3f} | {noisy.mean():.3f} | "
                    f"{gains.mean():+.3f} |")
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", default="assets/toyfaces/clip.pt", help="CLIP export to measure")
    p.add_argument("--generator", default="toyfaces", help="generator whose images are measured too")
    p.add_argument("--n", type=int, default=64, help="pictures per set")
    p.add_argument("--eps", type=float, nargs="+", default=[0.01, 0.03, 0.06])
    p.add_argument("--steps", type=int, default=3, help="signed-gradient steps per perturbation")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    wrapper = ClipModel.load(args.clip)
    model = wrapper.model
    texts = F.normalize(wrapper.encode_text(list(TEXTS)), dim=-1)
    # Renders from a stream no training run draws (train_clip's batches use seeds from 0 up).
    renders = batch_at(987_654, 0, args.n, 0.4)[0]
    generator = load_generator_spec(args.generator)
    z = torch.cat([seed_to_z(seed, generator.config.style_dim) for seed in range(args.n)])
    with torch.no_grad():
        generated = at_resolution(generator(z, truncation=0.7).clamp(-1, 1), renders.shape[-1])
    print(f"**{args.clip}**: {args.n} pictures per set, {args.steps} steps per perturbation; cosine with the "
          "clean embedding under the worst perturbation (mean / 10th percentile) and under noise; mean gain in "
          f"cosine with a target text ({', '.join(TEXTS)}) under a perturbation aimed at it\n")
    for name, img in (("renders", renders), ("generator images (truncation 0.7)", generated)):
        print(f"{name}:\n\n| eps | worst perturbation | noise | aimed at a text |\n|---|---|---|---|")
        print("\n".join(rows_for(model, img, texts, args.eps, args.steps)) + "\n")


if __name__ == "__main__":
    main()
