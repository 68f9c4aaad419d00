"""Trains the latent mappers shipped for the embedded model: one per benchmark edit, into assets/mappers/.

    python -m styleclip.toyfaces.ship_mappers                    # the shipped benchmark edits, 2 at a time
    python -m styleclip.toyfaces.ship_mappers --only smiling "blond hair" --steps 1500

Each mapper is trained by the ordinary `train-mapper` command on the edit's target text (so a user's own
training from the app or CLI gets the same recipe), with its resumable training checkpoint and log in
`runs/mappers/<model>/` (a rerun after an interruption continues it), then written without the training state
to `assets/mappers/<model>/<name>.pt`, the file name the app lists and `evaluation.mapper_paths_in` finds.
Seeded; one process per mapper, one CPU thread each.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import subprocess
import sys
import time
from pathlib import Path

from ..engines.mapper import load_mapper, save_mapper
from ..evaluation import BENCHMARK_EDITS
from ..models.model_zoo import mappers_dir
from ..studio import Studio

LOG_DIR = Path(__file__).resolve().parents[2] / "runs" / "mappers"  # training logs stay out of assets/
# Benchmark edits without a shipped mapper: the embedded CLIP does not see facial hair, age or lipstick, and
# mappers trained for them change the attribute in 0-2% of the benchmark seeds (BENCHMARKS.md, 2026-11-26).
NOT_SHIPPED = ("beard", "old", "lipstick")


def command(model: str, text: str, out: Path, steps: int, seed: int) -> list[str]:
    return [sys.executable, "-m", "styleclip", "train-mapper", "--model", model, "--text", text, "--out", str(out),
            "--steps", str(steps), "--seed", str(seed), "--checkpoint-every", "200"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toyfaces")
    p.add_argument("--only", nargs="*", default=None,
                   help="edit names (default: every benchmark edit except " + ", ".join(NOT_SHIPPED) + ")")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args(argv)
    specs = [s for s in BENCHMARK_EDITS
             if (s.name not in NOT_SHIPPED if args.only is None else s.name in args.only)]
    unknown = set(args.only or ()) - {s.name for s in specs}
    if unknown:
        raise SystemExit(f"unknown edits {sorted(unknown)}; known: {[s.name for s in BENCHMARK_EDITS]}")
    folder = mappers_dir(args.model)
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")

    generator = Studio().model(args.model).generator

    def run(spec) -> tuple[str, int, float]:
        out = folder / f"{spec.name.replace(' ', '_')}.pt"
        checkpoint = LOG_DIR / args.model / out.name
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        with open(checkpoint.with_suffix(".log"), "a") as fh:
            rc = subprocess.call(command(args.model, spec.target, checkpoint, args.steps, args.seed), stdout=fh,
                                 stderr=subprocess.STDOUT, env=env)
        if rc == 0:
            mapper = load_mapper(checkpoint, generator)
            save_mapper(mapper, out)  # weights, config and meta only: 0.8 MB instead of 2.4 MB
        return spec.name, rc, time.time() - t0

    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        for name, rc, seconds in pool.map(run, specs):
            print(f"{name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {seconds / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
