"""Trains the latent mappers shipped for the embedded model: one per benchmark edit, into assets/mappers/.

    python -m styleclip.toyfaces.ship_mappers                    # the shipped benchmark edits, 2 at a time
    python -m styleclip.toyfaces.ship_mappers --only smiling "blond hair" --steps 1500
    python -m styleclip.toyfaces.ship_mappers --seeds 0 1 2      # three runs per edit, the best one shipped
    python -m styleclip.toyfaces.ship_mappers --only glasses --direction-weight 0   # without the directional loss
    python -m styleclip.toyfaces.ship_mappers --kind channels    # channel mappers (300 steps each), fp16

Each mapper is trained by the ordinary `train-mapper` command on the edit's target text (so a user's own
training from the app or CLI gets the same recipe), with its resumable training checkpoint and log in
`runs/mappers/<model>/` (a rerun after an interruption continues it), then written without the training state
to `assets/mappers/<model>/<name>.pt`, the file name the app lists and `evaluation.mapper_paths_in` finds.
Seeded; one process per run, one CPU thread each.

`--kind channels` trains channel mappers (engines/channel_mapper.py) with `train-channel-mapper` on each edit's
text pair instead, checkpoints in `runs/mappers/<model>/channels/`, shipped with float16 weights (0.2 MB each) to
`assets/mappers/<model>/channels/<name>.pt`, where the app lists them as "<name> (channels)"; several `--seeds`
are compared the same way, on the channel mapper's own objective.

A W+ mapper's quality depends on its training seed by tens of points (BENCHMARKS.md, "Mapper layer groups"), so
with several `--seeds` each edit's runs are compared on the training objective over the same held-out sources
(`mapper.validation_objective`: CLIP, L2 and identity terms, no attribute classifier) and the lowest is shipped.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import subprocess
import sys
import time
from pathlib import Path

from ..engines.channel_mapper import load_channel_mapper, save_channel_mapper
from ..engines.channel_mapper import validation_objective as channel_validation_objective
from ..engines.mapper import load_mapper, save_mapper, validation_objective
from ..evaluation import BENCHMARK_EDITS
from ..models.model_zoo import mappers_dir
from ..studio import CHANNEL_MAPPER_ID_WEIGHT, Studio, identity_term

LOG_DIR = Path(__file__).resolve().parents[2] / "runs" / "mappers"  # training logs stay out of assets/
L2_WEIGHT = 0.8  # train-mapper's default, which `command` keeps


def command(model: str, text: str, out: Path, steps: int, seed: int, direction_weight: float = 0.0,
            neutral: str = "face") -> list[str]:
    cmd = [sys.executable, "-m", "styleclip", "train-mapper", "--model", model, "--text", text, "--out", str(out),
           "--steps", str(steps), "--seed", str(seed), "--checkpoint-every", "200"]
    if direction_weight > 0:
        cmd += ["--direction-weight", f"{direction_weight:g}", "--neutral", neutral]
    return cmd


def channel_command(model: str, neutral: str, target: str, out: Path, steps: int, seed: int) -> list[str]:
    return [sys.executable, "-m", "styleclip", "train-channel-mapper", "--model", model, "--neutral", neutral,
            "--target", target, "--out", str(out), "--steps", str(steps), "--seed", str(seed)]


def channel_run_path(model: str, name: str, seed: int) -> Path:
    """The training checkpoint of a channel mapper run (seed 0 without a suffix)."""
    return LOG_DIR / model / "channels" / (name.replace(" ", "_") + ("" if seed == 0 else f"_seed{seed}") + ".pt")


def run_path(model: str, name: str, seed: int, direction_weight: float = 0.0) -> Path:
    """The training checkpoint of one run (seed 0 keeps the name runs had before --seeds, so they resume; runs with
    the directional term get their own names, since a checkpoint only resumes with its own settings)."""
    stem = name.replace(" ", "_") + ("" if seed == 0 else f"_seed{seed}")
    stem += f"_dir{direction_weight:g}" if direction_weight > 0 else ""
    return LOG_DIR / model / f"{stem}.pt"


def pick_best(studio: Studio, model: str, text: str, runs: dict[int, Path], direction_weight: float = 0.0,
              neutral: str = "face", kind: str = "w_plus") -> tuple[int, dict[int, dict]]:
    """The seed whose mapper has the lowest held-out training objective, and every run's objective terms."""
    loaded = studio.model(model)
    identity, id_weight, _ = (identity_term(loaded, None, CHANNEL_MAPPER_ID_WEIGHT) if kind == "channels"
                              else studio.mapper_identity(model))
    scores = {}
    for seed, path in runs.items():
        if kind == "channels":
            scores[seed] = channel_validation_objective(
                load_channel_mapper(path, loaded.generator), loaded.generator, loaded.clip, neutral, text,
                id_weight=id_weight, identity=identity, truncation=loaded.bundle.truncation)
            continue
        mapper = load_mapper(path, loaded.generator)
        scores[seed] = validation_objective(mapper, loaded.generator, loaded.clip, text, clip_weight=1.0,
                                            l2_weight=L2_WEIGHT, id_weight=id_weight, identity=identity,
                                            truncation=loaded.bundle.truncation,
                                            direction_weight=direction_weight, neutral=neutral)
    return min(scores, key=lambda seed: scores[seed]["loss"]), scores


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toyfaces")
    p.add_argument("--only", nargs="*", default=None,
                   help="edit names (default: every benchmark edit)")
    p.add_argument("--kind", choices=("w_plus", "channels"), default="w_plus",
                   help="W+ mappers (StyleCLIP's) or channel mappers (300 steps unless --steps)")
    p.add_argument("--steps", type=int, default=None, help="default: 1000 for W+ mappers, 300 for channel mappers")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="training seeds per edit; with several, the run with the lowest held-out objective ships")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--direction-weight", type=float, default=None,
                   help="weight of the directional CLIP loss, from each edit's neutral text (0: the official "
                        "objective; default: the model's, as train-mapper)")
    args = p.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
        p.error(f"--seeds must be distinct whole numbers >= 0, got {args.seeds}")
    args.steps = args.steps or (300 if args.kind == "channels" else 1000)
    specs = [s for s in BENCHMARK_EDITS if args.only is None or s.name in args.only]
    unknown = set(args.only or ()) - {s.name for s in specs}
    if unknown:
        raise SystemExit(f"unknown edits {sorted(unknown)}; known: {[s.name for s in BENCHMARK_EDITS]}")
    folder = mappers_dir(args.model) / ("channels" if args.kind == "channels" else "")  # the app lists both
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    studio = Studio()
    args.direction_weight = studio.mapper_direction_weight(args.model, args.direction_weight)

    channels = args.kind == "channels"

    def checkpoint_of(spec, seed: int) -> Path:
        return (channel_run_path(args.model, spec.name, seed) if channels
                else run_path(args.model, spec.name, seed, args.direction_weight))

    def train(job) -> tuple[str, int, int, float]:
        spec, seed = job
        checkpoint = checkpoint_of(spec, seed)
        cmd = (channel_command(args.model, spec.neutral, spec.target, checkpoint, args.steps, seed) if channels
               else command(args.model, spec.target, checkpoint, args.steps, seed, args.direction_weight,
                            spec.neutral))
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        with open(checkpoint.with_suffix(".log"), "a") as fh:
            rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        return spec.name, seed, rc, time.time() - t0

    jobs = [(spec, seed) for spec in specs for seed in args.seeds]
    failed = set()
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        for name, seed, rc, seconds in pool.map(train, jobs):
            print(f"{name} (seed {seed}): {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {seconds / 60:.1f} min",
                  flush=True)
            if rc != 0:
                failed.add(name)
    for spec in specs:
        if spec.name in failed:
            continue
        runs = {seed: checkpoint_of(spec, seed) for seed in args.seeds}
        best, scores = (pick_best(studio, args.model, spec.target, runs, args.direction_weight, spec.neutral,
                                  args.kind) if len(runs) > 1 else (args.seeds[0], {}))
        for seed, terms in scores.items():
            print(f"{spec.name} seed {seed}: held-out " + ", ".join(f"{k} {v:.4f}" for k, v in terms.items())
                  + ("  <- shipped" if seed == best else ""), flush=True)
        generator, shipped = studio.model(args.model).generator, folder / f"{spec.name.replace(' ', '_')}.pt"
        if channels:
            save_channel_mapper(load_channel_mapper(runs[best], generator), shipped, half=True)  # 0.2 MB
        else:
            save_mapper(load_mapper(runs[best], generator), shipped)  # weights, config, meta: 0.8 MB


if __name__ == "__main__":
    main()
