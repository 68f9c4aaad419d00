"""Does the optimization objective's minimum hold the edit? For each source seed, the latent-optimization loss
(CLIP + l2_lambda·L2 + id_lambda·identity, the model's defaults) of three latents: the source, the shipped mapper's
edit of it, and what `optimize` returns; beside each, whether the attribute classifier reads the edit as done.

When the optimizer ends at a lower CLIP loss than a true edit (the mapper's) yet the classifier sees no edit, the
objective itself prefers a non-edit, and no optimizer setting can fix that; when the optimizer's CLIP loss stays
above the true edit's, the search is at fault.

    python benchmarks/bench_optimization_objective.py --edits "hat,beard,sunglasses" --seeds 10 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from styleclip.engines.mapper import apply_mapper, load_mapper
from styleclip.engines.optimization import optimize
from styleclip.evaluation import BENCHMARK_EDITS, mapper_paths_in
from styleclip.models import model_zoo
from styleclip.studio import Studio, optimization_steps, optimization_weights
from styleclip.toyfaces.classifier import load_classifier

LATENTS = ("source", "mapper", "optimized")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--edits", default="hat,beard,sunglasses", help="comma-separated BENCHMARK_EDITS names")
    p.add_argument("--seeds", type=int, default=10, help="source seeds 0 … N-1 (those that already show the "
                                                         "target value are skipped)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    specs = {s.name: s for s in BENCHMARK_EDITS}
    wanted = [e.strip() for e in args.edits.split(",") if e.strip()]
    unknown = sorted(set(wanted) - set(specs))
    if unknown:
        p.error(f"unknown edits {unknown}; known: {sorted(specs)}")
    loaded = Studio().model("toyfaces")
    generator, clip_model = loaded.generator, loaded.clip
    l2_lambda, id_lambda, identity = optimization_weights(loaded, None, None)
    steps = optimization_steps(loaded, None)
    classifier = load_classifier()
    mapper_files = mapper_paths_in(model_zoo.mappers_dir(loaded.name), [specs[n] for n in wanted])
    print(f"objective = clip + {l2_lambda:g}·L2 + {id_lambda:g}·identity; {steps} steps; {args.seeds} seeds\n")
    print("| edit | latent | edits done (classifier) | CLIP loss | L2 | identity | objective |")
    print("|---|---|---|---|---|---|---|")
    for name in wanted:
        spec = specs[name]
        if name not in mapper_files:
            print(f"| {name} | (no shipped mapper) | | | | | |")
            continue
        mapper = load_mapper(mapper_files[name], generator)
        text_emb = clip_model.encode_text([spec.target])  # [1, E]
        target = torch.as_tensor(spec.target_indices)
        parts: dict[str, list[tuple[float, float, float, float, bool]]] = {k: [] for k in LATENTS}
        for seed in range(args.seeds):
            w_plus_0 = loaded.source_w_plus(seed).clone()  # [1, L, D]
            with torch.no_grad():
                img_0 = generator.synthesis_w_plus(w_plus_0)
                if bool(torch.isin(classifier.predict(img_0)[spec.attribute].argmax(1), target)):
                    continue
                id_ref = identity.embed(img_0) if identity is not None else None
                w_plus_mapper = apply_mapper(mapper, w_plus_0, 1.0)
            w_plus_opt = optimize(generator, clip_model, spec.target, w_plus_0, steps=steps, l2_lambda=l2_lambda,
                                  id_lambda=id_lambda, identity=identity).w_plus
            for key, w_plus in zip(LATENTS, (w_plus_0, w_plus_mapper, w_plus_opt), strict=True):
                with torch.no_grad():
                    img = generator.synthesis_w_plus(w_plus)  # [1, 3, R, R]
                    clip_loss = float(1 - (clip_model.encode_image(img) * text_emb).sum())
                    l2 = float(((w_plus - w_plus_0) ** 2).sum())
                    id_loss = float(identity.loss_to(img, id_ref).mean()) if id_ref is not None else 0.0
                    done = bool(torch.isin(classifier.predict(img)[spec.attribute].argmax(1), target))
                parts[key].append((clip_loss, l2, id_loss, clip_loss + l2_lambda * l2 + id_lambda * id_loss, done))
        for key in LATENTS:
            rows = parts[key]
            if not rows:
                continue
            med = [statistics.median(r[i] for r in rows) for i in range(4)]
            print(f"| {name} | {key} | {sum(r[4] for r in rows)} of {len(rows)} | {med[0]:.3f} | {med[1]:.2f} | "
                  f"{med[2]:.3f} | {med[3]:.3f} |")
        sys.stdout.flush()
    print("\nMedians over the seeds edited; identity is the loss 1 − cos to the source's embedding.")


if __name__ == "__main__":
    main()
