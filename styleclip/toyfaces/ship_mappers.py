"""Trains the latent mappers shipped for the embedded model: one per benchmark edit, into assets/mappers/.

    python -m styleclip.toyfaces.ship_mappers                    # every benchmark edit, 2 at a time
    python -m styleclip.toyfaces.ship_mappers --only smiling "blond hair" --steps 1500

Each mapper is trained by the ordinary `train-mapper` command on the edit's target text (so a user's own
training from the app or CLI gets the same recipe) and written to `assets/mappers/<model>/<name>.pt`, the file
name the app lists and `evaluation.mapper_paths_in` finds. An existing file is resumed, which makes a rerun after
an interruption cheap. Seeded; one process per mapper, one CPU thread each; logs in runs/mappers/.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import subprocess
import sys
import time
from pathlib import Path

from ..evaluation import BENCHMARK_EDITS
from ..models.model_zoo import mappers_dir

LOG_DIR = Path(__file__).resolve().parents[2] / "runs" / "mappers"  # training logs stay out of assets/


def command(model: str, text: str, out: Path, steps: int, seed: int) -> list[str]:
    return [sys.executable, "-m", "styleclip", "train-mapper", "--model", model, "--text", text, "--out", str(out),
            "--steps", str(steps), "--seed", str(seed), "--checkpoint-every", "200"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toyfaces")
    p.add_argument("--only", nargs="*", default=None, help="edit names (default: all benchmark edits)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args(argv)
    specs = [s for s in BENCHMARK_EDITS if args.only is None or s.name in args.only]
    unknown = set(args.only or ()) - {s.name for s in specs}
    if unknown:
        raise SystemExit(f"unknown edits {sorted(unknown)}; known: {[s.name for s in BENCHMARK_EDITS]}")
    folder = mappers_dir(args.model)
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def run(spec) -> tuple[str, int, float]:
        out = folder / f"{spec.name.replace(' ', '_')}.pt"
        log = LOG_DIR / args.model / f"{out.stem}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        with open(log, "w") as fh:
            rc = subprocess.call(command(args.model, spec.target, out, args.steps, args.seed), stdout=fh,
                                 stderr=subprocess.STDOUT, env=env)
        return spec.name, rc, time.time() - t0

    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        for name, rc, seconds in pool.map(run, specs):
            print(f"{name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {seconds / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
