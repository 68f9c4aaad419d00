"""Can the embedded CLIP tell apart faces that differ in one attribute only? Accuracy inside contrast groups.

    python benchmarks/bench_clip_groups.py [--clip PATH] [--groups 40] [--attributes mouth,facial_hair,...]

For each attribute, renders `groups` contrast groups (`train_clip.contrast_group`: up to 4 faces identical but for
that attribute, each captioned with it first, no prompt template) and reports how often an image's own caption is
the most similar of its group's captions (chance: 1 / group size), beside the mean cosine between the group's
caption embeddings. A text tower that has learnt to ignore an attribute's words shows a cosine near 1; a zero-shot
or linear-probe failure can then be told apart as "the image tower does not see it" (accuracy at chance with
distinct captions) or "neither tower separates it" (accuracy at chance, captions collapsed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from styleclip.models.clip_model import ClipModel
from styleclip.toyfaces import train_clip
from styleclip.toyfaces.attributes import ATTRIBUTES
from styleclip.toyfaces.classifier import to_img
from styleclip.toyfaces.renderer import render_batch


def group_scores(model: ClipModel, attr: str, groups: int, seed: int = 123) -> tuple[float, float, float]:
    """(in-group accuracy, chance, mean off-diagonal caption cosine) over `groups` contrast groups of `attr`."""
    rng = np.random.default_rng(seed)
    hits = total = 0
    cosines = []
    for _ in range(groups):
        params, mentions = train_clip.contrast_group(rng, 4, (attr,))
        texts = [train_clip.make_caption(p, rng, 0.0, m) for p, m in zip(params, mentions)]
        with torch.no_grad():
            image = model.encode_image(to_img(render_batch(params, model.input_resolution)))  # [n, D] unit
            text = model.encode_text(texts)  # [n, D] unit
        n = len(params)
        hits += int(((image.float() @ text.float().T).argmax(1) == torch.arange(n)).sum())
        total += n
        cosines.append(float((text @ text.T)[~torch.eye(n, dtype=torch.bool)].mean()))
    return hits / total, groups / total, float(np.mean(cosines))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", default="assets/toyfaces/clip.pt")
    p.add_argument("--groups", type=int, default=40)
    p.add_argument("--attributes", default="", help="comma-separated discrete attributes (default: all)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [a.name for a in ATTRIBUTES if a.kind == "discrete"]
    wanted = [a for a in args.attributes.split(",") if a] or names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        p.error(f"unknown discrete attributes {unknown}; known: {names}")
    model = ClipModel.load(args.clip)
    print(f"CLIP {args.clip}: {args.groups} contrast groups per attribute\n")
    print("| attribute | in-group accuracy | chance | caption cosine inside a group |\n|---|---:|---:|---:|")
    for name in wanted:
        accuracy, chance, cosine = group_scores(model, name, args.groups)
        print(f"| {name} | {accuracy:.1%} | {chance:.1%} | {cosine:.3f} |")


if __name__ == "__main__":
    main()
