"""Can the embedded CLIP's image tower learn an attribute it does not see, from swapped captions alone?

    python benchmarks/bench_clip_swapped_captions.py --attribute facial_hair --lr 1e-4 --steps 600
    python benchmarks/bench_clip_swapped_captions.py --attribute facial_hair --lr 1e-3 --steps 50 [--fresh]

Trains a copy of the CLIP's image tower (text tower locked, nothing saved) on `train_clip.hard_negative_loss`
only: each fresh, augmented face chooses among up to 4 captions of itself that differ in `--attribute`'s value
(`train_clip.batch_at(..., negatives=4)`). Every `--eval-every` steps it prints the training loss, the in-group
accuracy on held-out contrast groups of that attribute (`bench_clip_groups.group_scores`, 30 groups) and the mean
cosine between 16 different faces' image embeddings (near 1: the tower has collapsed to one point). `--fresh`
starts the image tower from random weights. This probes learning rates and sample counts for a real run of
`train_clip --negatives`; it is not a trainer.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_clip_groups import group_scores

from styleclip.models.clip_model import ClipModel, build_small_clip
from styleclip.toyfaces import train_clip
from styleclip.toyfaces.attributes import ATTRIBUTES
from styleclip.toyfaces.classifier import to_img
from styleclip.toyfaces.renderer import NUM_PARAMS, params_from_normal, render_batch


def load_image_trainable(path: str, fresh: bool) -> torch.nn.Module:
    """The CLIP of an export with only `visual.*` trainable (random `visual.*` when fresh)."""
    export = torch.load(path, map_location="cpu", weights_only=True)
    config = {k: v for k, v in export["config"].items() if k not in ("context_length", "vocab_size")}
    model = build_small_clip(**config, seed=0)
    state = {k: v.float() if v.is_floating_point() else v for k, v in export["state_dict"].items()}
    if fresh:
        state = {k: v for k, v in state.items() if not k.startswith("visual.")}
    model.load_state_dict(state, strict=not fresh)
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith("visual."))
    return model.train()


def feature_spread(model: ClipModel, n: int = 16) -> float:
    """Mean cosine between the image embeddings of n different random faces."""
    rng = np.random.default_rng(5)
    params = [params_from_normal(rng.standard_normal(NUM_PARAMS)) for _ in range(n)]
    with torch.no_grad():
        emb = model.encode_image(to_img(render_batch(params, model.input_resolution))).float()
    return float((emb @ emb.T)[~torch.eye(n, dtype=torch.bool)].mean())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", default="assets/toyfaces/clip.pt")
    p.add_argument("--attribute", default="facial_hair")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--fresh", action="store_true", help="random image tower instead of the export's")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.attribute not in {a.name for a in ATTRIBUTES if a.kind == "discrete"}:
        p.error(f"--attribute must be a discrete attribute, got {args.attribute!r}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_image_trainable(args.clip, args.fresh)
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=args.lr, weight_decay=0.0)
    scale = model.logit_scale.exp().detach()

    def report(step: int, loss: float | None, t0: float) -> None:
        frozen = ClipModel.from_model(copy.deepcopy(model))
        accuracy, chance, _ = group_scores(frozen, args.attribute, 30, seed=999)
        print(f"step {step}: loss {'-' if loss is None else f'{loss:.3f}'}, held-out in-group accuracy "
              f"{accuracy:.1%} (chance {chance:.1%}), feature spread {feature_spread(frozen):.3f}, "
              f"{time.time() - t0:.0f} s", flush=True)

    t0 = time.time()
    report(0, None, t0)
    for step in range(args.steps):
        img, _, negatives = train_clip.batch_at(7, step, args.batch, 0.4, negatives=4,
                                                negative_attrs=(args.attribute,))
        b, k, length = negatives.shape
        with torch.no_grad():
            text = torch.nn.functional.normalize(
                train_clip.encode_text_cut(model, negatives.reshape(b * k, length)), dim=-1).view(b, k, -1)
        loss = train_clip.hard_negative_loss(train_clip.image_features_of(model, img), text, negatives, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % args.eval_every == 0:
            report(step + 1, loss.item(), t0)


if __name__ == "__main__":
    main()
