"""The edit benchmark (styleclip.evaluation) on the embedded default model: attribute success and preservation of
each BENCHMARK_EDITS edit, read by the toyfaces attribute classifier, with the mean time per edit. Prints a markdown
table, or one JSON object with `--json`.

    python benchmarks/bench_edits.py --engine global [--seeds 50] [--alpha 4.1] [--beta 0.15]
    python benchmarks/bench_edits.py --engine mapper [--mappers assets/mappers/toyfaces] [--strength 1.0]
    python benchmarks/bench_edits.py --engine mapper --groups medium,fine   # only those rows of each edit
    python benchmarks/bench_edits.py --engine optimization [--steps K] [--l2 0.008] [--json]

Seeds are 0 … N-1 in the app's convention (`--first-seed 50` for held-out sources; `--edit-set heldout` for
12 edits no setting was tuned on; `--edit-set all` for both, 23 edits). Without --beta, beta is chosen per text pair by auto-beta, as the app.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from styleclip.engines.mapper import GROUPS
from styleclip.evaluation import (
    BENCHMARK_EDITS,
    HELDOUT_EDITS,
    evaluate_edits,
    format_report,
    global_directions_edit,
    mapper_edit,
    mapper_paths_in,
    optimization_edit,
)
from styleclip.models import model_zoo
from styleclip.studio import Studio
from styleclip.toyfaces.classifier import load_classifier

ENGINES = ("global", "mapper", "optimization")
EDIT_SETS = {"benchmark": BENCHMARK_EDITS, "heldout": HELDOUT_EDITS, "all": BENCHMARK_EDITS + HELDOUT_EDITS}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", choices=ENGINES, required=True)
    p.add_argument("--model", default="toyfaces", help="model bundle (the classifier reads toyfaces only)")
    p.add_argument("--seeds", type=int, default=50, help="number of source seeds, first … first+N-1")
    p.add_argument("--first-seed", type=int, default=0, help="the first source seed (50 with --seeds 50: held out)")
    p.add_argument("--edit-set", choices=tuple(EDIT_SETS), default="benchmark",
                   help="the benchmark edits, the held-out ones no setting was tuned on (global, optimization), "
                        "or all of them")
    p.add_argument("--edits", default="", help="comma-separated edit names (default: all of the set)")
    p.add_argument("--alpha", type=float, default=4.1, help="global: strength")
    p.add_argument("--beta", type=float, default=None, help="global: threshold (default: auto-beta per pair)")
    p.add_argument("--floor", type=int, default=None,
                   help="global: the channel count auto-beta keeps (default: the model's, as the app)")
    p.add_argument("--shrinkage", default="model",
                   help="global: relevance metric, 'official' (plain cosine), a whitening shrinkage such as 10, or "
                        "'model' (the model's own choice, as the app)")
    p.add_argument(
        "--mappers", default=None, help="mapper: folder of <edit_name>.pt (default: shipped mappers)"
    )
    p.add_argument("--strength", type=float, default=1.0, help="mapper: residual strength")
    p.add_argument("--groups", default=None,
                   help="mapper: apply only these W+ groups' part of each edit, e.g. 'medium,fine' (default: all)")
    p.add_argument("--steps", type=int, default=None, help="optimization: Adam steps (default: the model's)")
    p.add_argument("--l2", type=float, default=None, help="optimization: L2 weight (default: the model's)")
    p.add_argument("--lr", type=float, default=None, help="optimization: peak learning rate (default: 0.1)")
    p.add_argument("--space", choices=("w_plus", "s"), default="w_plus", help="optimization: latent space")
    p.add_argument("--dir-lambda", type=float, default=None,
                   help="optimization: directional CLIP loss weight, from each edit's neutral (default: the model's)")
    p.add_argument("--clip-views", type=int, default=1,
                   help="optimization: images CLIP reads per step (1 plain + shifted, noised copies)")
    p.add_argument("--id-lambda", type=float, default=None,
                   help="optimization: identity weight (default: the model's, with its identity network)")
    p.add_argument(
        "--classifier", default=None, help="classifier file (default: assets/toyfaces/classifier.pt)"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)
    if args.seeds < 1 or args.first_seed < 0:
        p.error("--seeds must be at least 1 and --first-seed at least 0")
    torch.set_num_threads(args.threads)

    specs = list(EDIT_SETS[args.edit_set])
    if args.edits:
        wanted = [e.strip() for e in args.edits.split(",") if e.strip()]
        unknown = sorted(set(wanted) - {s.name for s in specs})
        if unknown:
            p.error(f"unknown edits {unknown}; known: {[s.name for s in specs]}")
        specs = [s for s in specs if s.name in wanted]

    t0 = time.perf_counter()
    loaded = Studio().model(args.model)
    classifier = load_classifier(args.classifier)
    if args.engine == "global":
        shrinkage = {"model": "model", "official": None}.get(args.shrinkage)
        if args.shrinkage not in ("model", "official"):
            try:
                shrinkage = float(args.shrinkage)
            except ValueError:
                p.error(f"--shrinkage must be 'model', 'official' or a number, got {args.shrinkage!r}")
        edit_fn = global_directions_edit(loaded, alpha=args.alpha, beta=args.beta, relevance_shrinkage=shrinkage,
                                         auto_beta_floor=args.floor)
        beta = "auto" if args.beta is None else f"{args.beta:g}"
        beta += "" if args.beta is not None or args.floor is None else f" (floor {args.floor})"
        metric = edit_fn.engine.relevance_shrinkage
        metric = "official relevance" if metric is None else f"whitened relevance (shrinkage {metric:g})"
        label = f"global directions, alpha {args.alpha:g}, beta {beta}, {metric}"
    elif args.engine == "mapper":
        folder = Path(args.mappers) if args.mappers else model_zoo.mappers_dir(loaded.name)
        paths = mapper_paths_in(folder, specs)
        if not paths:
            p.error(
                f"no mapper for any edit in {folder} (expected e.g. {specs[0].name.replace(' ', '_')}.pt)"
            )
        groups = None if args.groups is None else [g.strip() for g in args.groups.split(",") if g.strip()]
        unknown = sorted(set(groups or ()) - set(GROUPS))
        if unknown:
            p.error(f"unknown groups {unknown}; known: {list(GROUPS)}")
        edit_fn = mapper_edit(loaded, paths, strength=args.strength, groups=groups)
        label = f"latent mapper ({folder}), strength {args.strength:g}"
        label += "" if groups is None else f", groups {'+'.join(groups) or 'none'}"
    else:
        edit_fn = optimization_edit(loaded, steps=args.steps, l2_lambda=args.l2, id_lambda=args.id_lambda,
                                    space=args.space, clip_views=args.clip_views, dir_lambda=args.dir_lambda,
                                    lr=args.lr)
        label = f"latent optimization, {edit_fn.describe(specs[0])}"
    load_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    report = evaluate_edits(
        loaded, classifier, edit_fn, specs, range(args.first_seed, args.first_seed + args.seeds),
        label=f"{loaded.name}: {label}"
    )
    total_s = time.perf_counter() - t0
    if args.json:
        print(
            json.dumps(
                report.to_dict()
                | {
                    "engine": args.engine,
                    "load_s": round(load_s, 2),
                    "total_s": round(total_s, 2),
                    "threads": args.threads,
                }
            )
        )
    else:
        print(format_report(report))
        print(f"\nload {load_s:.1f} s, benchmark {total_s:.1f} s, {args.threads} thread(s)")


if __name__ == "__main__":
    main()
