"""Command-line interface: thin wrappers over the library. Each subcommand prints one JSON line on success."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

EXIT_USAGE = 2


class CliError(Exception):
    """A user-facing error: printed as one line, no traceback."""


def seed_to_z(seed: int, z_dim: int) -> torch.Tensor:
    """The seed convention of the upstream scripts: numpy RandomState(seed).randn(1, z_dim) as float32."""
    if not 0 <= seed < 2 ** 32:
        raise CliError(f"seed must be in 0..{2 ** 32 - 1}, got {seed}")
    return torch.from_numpy(np.random.RandomState(seed).randn(1, z_dim).astype(np.float32))


def _load_generator(spec: str):
    from .models import model_zoo
    return model_zoo.load_generator_spec(spec)


def cmd_render(args: argparse.Namespace) -> dict:
    from .imaging import img_to_image, save_image

    g = _load_generator(args.generator)
    z = seed_to_z(args.seed, g.style_dim)
    with torch.inference_mode():
        def forward():
            return g(z, truncation=args.truncation)

        img = forward()
        timings = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            forward()
            timings.append(time.perf_counter() - t0)
    save_image(img_to_image(img), args.out)
    out = {"out": str(args.out), "size": g.size, "seed": args.seed, "truncation": args.truncation}
    if timings:
        out.update(repeat=args.repeat, median_s=statistics.median(timings), min_s=min(timings))
    return out


def cmd_encode_text(args: argparse.Namespace) -> dict:
    from .models.clip_model import ClipModel

    model = ClipModel.load(args.clip)
    t0 = time.perf_counter()
    emb = model.encode_text(list(args.texts))
    elapsed = time.perf_counter() - t0
    arr = emb.float().cpu().numpy().astype(np.float32)
    np.save(args.out, arr)
    return {"out": str(args.out), "shape": list(arr.shape), "seconds": elapsed}


class _ProgressPrinter:
    """Progress lines with an ETA on stderr (stdout keeps the one JSON line)."""

    def __init__(self):
        self.t0, self.stage, self.last = time.time(), None, 0.0

    def __call__(self, done: int, total: int, stage: str) -> None:
        now = time.time()
        if stage != self.stage:
            self.stage, self.t0 = stage, now
        if now - self.last < 1.0 and done < total:
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-9)
        eta = (total - done) / rate if rate > 0 else float("inf")
        print(f"{stage}: {done}/{total} ({100 * done / total:.0f}%), ETA {eta:.0f} s", file=sys.stderr, flush=True)


def cmd_precompute(args: argparse.Namespace) -> dict:
    from .engines.precompute import precompute
    from .models import model_zoo
    from .studio import Studio

    loaded = Studio().model(args.model)
    out = Path(args.out) if args.out else model_zoo.precomputed_dir(loaded.name)
    t0 = time.perf_counter()
    stats = precompute(loaded.generator, loaded.clip, out, n_stats=args.n_stats, n_images=args.n_images,
                       truncation=loaded.bundle.truncation, generator_sha256=loaded.generator_sha256,
                       clip_sha256=loaded.clip_sha256, progress=_ProgressPrinter())
    return {"out": str(out), "fs3_rows": int(stats.fs3.shape[0]), "seconds": round(time.perf_counter() - t0, 1)}


def cmd_edit(args: argparse.Namespace) -> dict:
    from .imaging import save_image
    from .studio import Studio

    studio = Studio()
    t0 = time.perf_counter()
    loaded = studio.model(args.model)
    t_load = time.perf_counter() - t0
    beta = args.beta if args.beta is not None else studio.auto_beta(args.model, args.neutral, args.target)
    image, info = studio.global_edit(args.model, args.seed, args.neutral, args.target, args.alpha, beta)
    save_image(image, args.out)
    info.pop("top_channels")
    info["timings_ms"]["load_models"] = round(t_load * 1000, 1)
    return {"out": str(args.out), **info, "model": loaded.name}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m styleclip", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("render", help="render one image from a seed")
    p.add_argument("--generator", required=True, help="checkpoint path or known model name (e.g. toyfaces)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--truncation", type=float, default=1.0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--repeat", type=int, default=0, help="time R forward passes after one warm-up")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("encode-text", help="write L2-normalised CLIP text embeddings as an (N, D) .npy")
    p.add_argument("--clip", required=True, help="CLIP name (e.g. ViT-B/32) or local file")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("texts", nargs="+")
    p.set_defaults(func=cmd_encode_text)

    p = sub.add_parser("precompute", help="S statistics + channel relevance for global directions (resumable)")
    p.add_argument("--model", required=True, help="model name (e.g. toyfaces, ffhq)")
    p.add_argument("--n-stats", type=int, default=100_000, help="latents sampled for S mean/std")
    p.add_argument("--n-images", type=int, default=32, help="images averaged in the relevance matrix")
    p.add_argument("--out", help="output folder (default precomputed/<model>/)")
    p.set_defaults(func=cmd_precompute)

    p = sub.add_parser("edit", help="global-direction edit of a seed's image")
    p.add_argument("--model", default="", help="model name; default: the embedded model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--neutral", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--alpha", type=float, default=4.1)
    p.add_argument("--beta", type=float, default=None, help="default: auto-beta")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_edit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except (CliError, ValueError, FileNotFoundError, RuntimeError, OSError) as exc:
        # Library errors carry plain messages; CLI users get them without a traceback.
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(result))
    return 0
