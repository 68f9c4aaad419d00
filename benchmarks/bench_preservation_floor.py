"""How much preservation a random edit of a given size costs: the floor under the edit benchmark's preservation.

Each benchmark edit is replaced by a random perturbation of the source's W+ code, eps·σ·N(0, 1) per element (σ the
per-element std of the sources' W+ codes; seeded by the source seed), and scored by the same benchmark
(`evaluation.evaluate_edits`: the same seeds, skips and visibility rules), so its preservation column is what an
edit that moves the code that far, in no particular direction, keeps. Also prints the RMS size, in the same σ
units, of every shipped mapper's edit, for comparison.

    python benchmarks/bench_preservation_floor.py [--eps 0.05 0.1 0.2 0.4] [--seeds 50] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from styleclip.engines.mapper import apply_mapper, load_mapper
from styleclip.evaluation import BENCHMARK_EDITS, evaluate_edits, mapper_paths_in
from styleclip.models import model_zoo
from styleclip.studio import Studio
from styleclip.toyfaces.classifier import load_classifier


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eps", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.4])
    p.add_argument("--seeds", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = Studio().model("toyfaces")
    classifier = load_classifier(None)
    generator = loaded.generator
    with torch.no_grad():
        codes = torch.cat([loaded.source_w_plus(seed) for seed in range(1000, 1500)])  # [500, L, D]
    sigma = codes.std(0, keepdim=True)  # [1, L, D]

    print("| eps (σ) | mean preservation | lowest row | most changed attributes (mean over rows) | s |")
    print("|---|---|---|---|---|")
    for eps in args.eps:
        def perturb(spec, seed, eps=eps):
            noise = torch.randn(sigma.shape, generator=torch.Generator().manual_seed(seed))
            with torch.no_grad():
                return generator.synthesis_w_plus(loaded.source_w_plus(seed) + eps * sigma * noise)

        t0 = time.perf_counter()
        report = evaluate_edits(loaded, classifier, perturb, list(BENCHMARK_EDITS), range(args.seeds))
        changed: dict[str, list[float]] = {}
        for row in report.rows:
            for name, rate in row.most_changed:
                changed.setdefault(name, []).append(rate)
        top = sorted(changed.items(), key=lambda kv: -sum(kv[1]) / len(report.rows))[:4]
        lowest = min(report.rows, key=lambda r: r.preservation if r.preservation is not None else 1.0)
        print(f"| {eps:g} | {100 * report.preservation:.1f}% | {lowest.spec.name} {100 * lowest.preservation:.0f}% | "
              + ", ".join(f"{n} {100 * sum(v) / len(report.rows):.0f}%" for n, v in top)
              + f" | {time.perf_counter() - t0:.0f} |")

    print("\nShipped mappers, RMS edit of the W+ code in σ units over the 500 codes:")
    for name, path in mapper_paths_in(model_zoo.mappers_dir(loaded.name)).items():
        mapper = load_mapper(path, generator)
        with torch.no_grad():
            size = ((apply_mapper(mapper, codes) - codes) / sigma).pow(2).mean().sqrt()
        print(f"- {name}: {float(size):.2f}")


if __name__ == "__main__":
    main()
