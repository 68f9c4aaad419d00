"""Does the embedded CLIP's image tower see each attribute? A linear probe on its image embeddings.

    python benchmarks/bench_clip_probe.py [--n 800] [--fit 600] [--clip PATH]

Renders n fresh faces (the held-out seed of eval_clip), embeds them with the CLIP image encoder (L2-normalised),
fits one multinomial logistic regression per discrete attribute on the first `fit` faces and reports its accuracy
on the rest, beside zero-shot accuracy (training-style prompts) on the same held-out faces. A probe near chance
means the image features do not carry the attribute, so no prompt can recover it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from styleclip.models.clip_model import ClipModel
from styleclip.toyfaces import captions
from styleclip.toyfaces.attributes import ATTRIBUTES
from styleclip.toyfaces.classifier import to_img
from styleclip.toyfaces.dataset import labels_array, normals_for
from styleclip.toyfaces.eval_classifier import HELDOUT_SEED
from styleclip.toyfaces.renderer import params_from_normal, render_batch


def probe_accuracy(x_fit: torch.Tensor, y_fit: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                   classes: int) -> float:
    """Multinomial logistic regression (L-BFGS, small L2) fitted on (x_fit, y_fit), accuracy on the test split."""
    weight = torch.zeros(x_fit.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=300)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x_fit @ weight * 20 + bias, y_fit) + 1e-4 * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((x_test @ weight * 20 + bias).argmax(1) == y_test).float().mean())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=800)
    p.add_argument("--fit", type=int, default=600)
    p.add_argument("--clip", default="assets/toyfaces/clip.pt")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = ClipModel.load(args.clip)
    params = [params_from_normal(row) for row in normals_for(args.n, HELDOUT_SEED)]
    with torch.no_grad():
        features = F.normalize(model.encode_image(to_img(render_batch(params, 64))), dim=-1).float()
    labels = labels_array(params)
    print(f"CLIP {args.clip}: linear probe on image embeddings ({args.fit} faces to fit, {args.n - args.fit} to "
          "test) vs zero-shot on the test faces\n")
    print("| attribute | probe | zero-shot | chance (majority) |\n|---|---:|---:|---:|")
    for attr in ATTRIBUTES:
        if attr.kind != "discrete":
            continue
        y = torch.from_numpy(labels[attr.name])
        probe = probe_accuracy(features[:args.fit], y[:args.fit], features[args.fit:], y[args.fit:], len(attr.values))
        prompts = captions.zero_shot_prompts(attr.name)
        with torch.no_grad():
            classes = torch.stack([F.normalize(model.encode_text(prompts[v]).mean(0), dim=-1) for v in attr.values])
        zero_shot = float(((features[args.fit:] @ classes.float().T).argmax(1) == y[args.fit:]).float().mean())
        majority = float(np.bincount(y[args.fit:].numpy(), minlength=len(attr.values)).max() / (args.n - args.fit))
        print(f"| {attr.name} | {probe:.1%} | {zero_shot:.1%} | {majority:.1%} |")


if __name__ == "__main__":
    main()
