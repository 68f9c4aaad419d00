"""Speed of the mapper and optimization engines (what a person waits for in their tabs).

- mapper inference: one W+ code through a (randomly initialised) LevelsMapper and the synthesis, ms per image, on
  the embedded model (batch 1 and batch 8); the same for a shipped channel mapper (its change in S, then the
  synthesis from S);
- latent optimization: seconds per step on the embedded model and on an FFHQ-1024-shaped generator with a
  ViT-B/32-shaped CLIP (random weights: same cost as the real ones).
Prints one JSON line.

    python benchmarks/bench_engines.py [--threads 2] [--opt-steps 5] [--skip-ffhq]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from styleclip.engines.channel_mapper import load_channel_mapper, mapped_s  # noqa: E402
from styleclip.engines.mapper import LevelsMapper  # noqa: E402
from styleclip.engines.optimization import optimize  # noqa: E402
from styleclip.models import model_zoo  # noqa: E402
from styleclip.models.clip_model import ClipModel, build_small_clip  # noqa: E402
from styleclip.models.generator import Generator  # noqa: E402
from styleclip.studio import Studio, optimization_weights  # noqa: E402


def mapper_ms_per_image(loaded, batch: int, reps: int = 10, channel_mapper_path: Path | None = None) -> float:
    """Median ms per image of mapper + synthesis: a fresh W+ mapper, or the channel mapper file given."""
    g = loaded.generator
    mapper = (LevelsMapper.for_generator(g, seed=0).eval() if channel_mapper_path is None
              else load_channel_mapper(channel_mapper_path, g))

    w_plus = torch.cat([loaded.source_w_plus(s) for s in range(batch)])
    times = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        with torch.inference_mode():
            g.synthesis(g.flat_to_s(mapped_s(mapper, g, w_plus)))
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]) * 1000 / batch


def seconds_per_step(generator, clip_model, steps: int, **weights) -> float:
    """Seconds per optimization step; `weights`: l2_lambda, id_lambda, identity as `optimize` takes them."""
    w_plus = generator.w_to_w_plus(generator.latent_avg[None].clone())
    optimize(generator, clip_model, "a smiling face", w_plus, steps=1, **weights)  # warm-up
    t0 = time.perf_counter()
    optimize(generator, clip_model, "a smiling face", w_plus, steps=steps, **weights)
    return (time.perf_counter() - t0) / steps


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--opt-steps", type=int, default=5)
    p.add_argument("--skip-ffhq", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = Studio().model("")
    result = {"model": loaded.name, "threads": args.threads,
              "mapper_ms_per_image_batch1": round(mapper_ms_per_image(loaded, 1), 1),
              "mapper_ms_per_image_batch8": round(mapper_ms_per_image(loaded, 8), 1),
              **{f"channel_mapper_ms_per_image_batch{b}": round(mapper_ms_per_image(loaded, b, channel_mapper_path=(
                  model_zoo.mappers_dir(loaded.name) / "channels" / "smiling.pt")), 1) for b in (1, 8)},
              "optimization_s_per_step_embedded": round(seconds_per_step(loaded.generator, loaded.clip,
                                                                         args.opt_steps), 3)}
    l2, id_lambda, identity = optimization_weights(loaded)  # the model's defaults, as the app runs them
    if identity is not None:
        result["optimization_s_per_step_embedded_defaults"] = round(seconds_per_step(
            loaded.generator, loaded.clip, args.opt_steps, l2_lambda=l2, id_lambda=id_lambda, identity=identity), 3)
    if not args.skip_ffhq:
        torch.manual_seed(0)
        generator = Generator(1024).eval().requires_grad_(False)
        clip_model = ClipModel.from_model(build_small_clip(
            embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
            transformer_width=512, transformer_heads=8, transformer_layers=12, seed=0))
        result["optimization_s_per_step_ffhq1024_shape"] = round(
            seconds_per_step(generator, clip_model, max(2, args.opt_steps // 2)), 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
