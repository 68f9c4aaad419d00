"""A mapper-training variant the engine does not offer: the objective plus a pixel term,
pixel_weight · MSE(img_edit, img_source) at CLIP's input resolution, to see whether keeping the image itself
keeps the attributes the CLIP and identity terms do not watch (BENCHMARKS.md, "A pixel term in mapper training").

Trains through the engine's own `train-mapper` command with its objective wrapped; score the result with
`bench_edits.py --engine mapper --mappers DIR`:

    python benchmarks/bench_mapper_pixel_term.py --pixel-weight 5 -- train-mapper --model toyfaces \
        --text "face with a beard" --steps 1000 --seed 0 --direction-weight 10 --neutral face --out runs/p5/beard.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import styleclip.engines.mapper as mapper_engine
from styleclip.cli import main as cli_main


def with_pixel_term(objective, pixel_weight: float):
    """`mapper._objective` plus pixel_weight · MSE between the edited and the source image [B, 3, R, R]."""

    def wrapped(mapper, generator, clip_model, target, w_plus, resolution, weights, identity, text_change=None):
        loss, terms = objective(mapper, generator, clip_model, target, w_plus, resolution, weights, identity,
                                text_change)
        img = generator.synthesis_w_plus(mapper_engine.apply_mapper(mapper, w_plus), until_resolution=resolution)
        with torch.no_grad():
            img_src = generator.synthesis_w_plus(w_plus, until_resolution=resolution)
        pixel = F.mse_loss(img, img_src)
        terms["pixel"] = float(pixel)
        terms["loss"] += pixel_weight * float(pixel)
        return loss + pixel_weight * pixel, terms

    return wrapped


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pixel-weight", type=float, required=True)
    p.add_argument("cli", nargs=argparse.REMAINDER, help="-- then the train-mapper command line")
    args = p.parse_args(argv)
    cli_args = args.cli[1:] if args.cli[:1] == ["--"] else args.cli
    if cli_args[:1] != ["train-mapper"]:
        p.error("give the train-mapper command after --")
    mapper_engine._objective = with_pixel_term(mapper_engine._objective, args.pixel_weight)
    return cli_main(cli_args)


if __name__ == "__main__":
    sys.exit(main())
