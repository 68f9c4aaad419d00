"""How far each benchmark edit's text direction points where the renderer's own edit moves CLIP's image embedding.

Global directions turn Δt (template-averaged "face" → "face with a beard") into a style direction through
per-channel image directions, so an edit can only land if Δt points along the image change the edit makes. For
each edit, `--n` fresh renders that lack the target are re-rendered with it (the renderer's counterfactual, every
other parameter kept; eye edits on faces without glasses, so the eyes can be seen), and the mean change of the
unit image embedding is compared with Δt. Prints, per edit, the cosine of Δt with that mean change and the mean
per-face cosine, and one JSON line of the means.

With `--ceiling`, the global-direction benchmark (alpha 4.1, auto-beta, the bundle's relevance metric, `--seeds`
sources) then runs twice on the toyfaces bundle of this checkout (its CLIP must be `--clip`): with each edit's Δt,
as the app, and with Δt replaced by that edit's mean image change, a diagnostic of what a text direction that
matched the renderer's edit exactly would give (not a product path: the app has no image to compare).

    python benchmarks/bench_clip_text_image_agreement.py --clip assets/toyfaces/clip.pt --threads 1 [--ceiling]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from styleclip.engines.global_directions import text_direction
from styleclip.evaluation import BENCHMARK_EDITS, HELDOUT_EDITS, EditSpec
from styleclip.imaging import images_to_img
from styleclip.models.clip_model import ClipModel
from styleclip.toyfaces.renderer import NUM_PARAMS, labels_of, params_from_normal, render_batch, set_attribute

EDIT_SETS = {"benchmark": BENCHMARK_EDITS, "heldout": HELDOUT_EDITS, "all": BENCHMARK_EDITS + HELDOUT_EDITS}


def counterfactual_pairs(spec: EditSpec, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(img, edited img), each [m, 3, 64, 64] in [-1, 1]: m <= n renders without the target value and the same
    faces with it (a tuple of accepted values: one drawn per face)."""
    rng = np.random.default_rng(seed)
    targets = spec.target_indices
    before, after = [], []
    for _ in range(n):
        params = params_from_normal(rng.standard_normal(NUM_PARAMS))
        if spec.attribute in ("eyes", "eye_color"):
            params = set_attribute(params, "glasses", "none")
        if labels_of(params)[spec.attribute] in targets:
            continue
        before.append(params)
        after.append(set_attribute(params, spec.attribute, int(targets[rng.integers(len(targets))])))
    return images_to_img(render_batch(before, 64)), images_to_img(render_batch(after, 64))


def agreement(clip_model: ClipModel, spec: EditSpec, n: int, seed: int) -> tuple[dict[str, float], torch.Tensor]:
    """Cosines of Δt [D] with the mean image change and (mean over faces) with each face's change; and the mean
    image change [D]."""
    img, edited = counterfactual_pairs(spec, n, seed)
    with torch.no_grad():
        change = clip_model.encode_image(edited) - clip_model.encode_image(img)  # [m, D]
        delta_t, _ = text_direction(clip_model, spec.neutral, spec.target)
    per_face = torch.nn.functional.cosine_similarity(change, delta_t[None], dim=-1)
    return {"faces": len(change), "mean_change": float(torch.nn.functional.cosine_similarity(
        change.mean(0), delta_t, dim=0)), "per_face": float(per_face.mean())}, change.mean(0)


def global_benchmark(image_changes: dict[str, torch.Tensor] | None, specs, seeds: int) -> dict:
    """Mean success / preservation (%) and per-edit [success, preservation] of global directions on the toyfaces
    bundle; with `image_changes` (edit name → [D]), each edit's Δt is replaced by its image change."""
    from styleclip.evaluation import evaluate_edits, global_directions_edit
    from styleclip.studio import Studio
    from styleclip.toyfaces.classifier import load_classifier

    loaded = Studio().model("toyfaces")
    edit_fn = global_directions_edit(loaded)
    engine = edit_fn.engine
    if image_changes is not None:
        metric = engine._relevance_of  # a benchmark-only hook: the engine has no public Δt transform
        by_text = [(text_direction(loaded.clip, spec.neutral, spec.target)[0], image_changes[spec.name])
                   for spec in specs]

        def swapped(dt: torch.Tensor) -> torch.Tensor:
            change = next(c for t, c in by_text if float(torch.dot(t.float(), dt.float())) > 0.9999)
            return metric(change / change.norm())

        engine._relevance_of = swapped
    report = evaluate_edits(loaded, load_classifier(), edit_fn, specs, range(seeds)).to_dict()
    return {"success": round(100 * report["success"], 1), "preservation": round(100 * report["preservation"], 1),
            "rows": {r["name"]: [round(100 * (r["success"] or 0)), round(100 * (r["preservation"] or 0))]
                     for r in report["rows"]}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", default="assets/toyfaces/clip.pt")
    p.add_argument("--edit-set", choices=sorted(EDIT_SETS), default="benchmark")
    p.add_argument("--n", type=int, default=96, help="renders drawn per edit (those with the target are skipped)")
    p.add_argument("--seed", type=int, default=31_337)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ceiling", action="store_true",
                   help="also run global directions with Δt and with the image changes (see above)")
    p.add_argument("--seeds", type=int, default=50, help="sources of the --ceiling benchmark")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    clip_model = ClipModel.load(args.clip)
    results = {spec.name: agreement(clip_model, spec, args.n, args.seed) for spec in EDIT_SETS[args.edit_set]}
    rows = {name: row for name, (row, _) in results.items()}
    print("| edit | faces | cos(Δt, mean image change) | mean cos(Δt, each face's change) |\n|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['faces']} | {row['mean_change']:.2f} | {row['per_face']:.2f} |")
    means = {k: round(float(np.mean([r[k] for r in rows.values()])), 3) for k in ("mean_change", "per_face")}
    print(f"| **mean** | | {means['mean_change']:.2f} | {means['per_face']:.2f} |")
    print(json.dumps({"clip": args.clip, "edit_set": args.edit_set, **means}))
    if args.ceiling:
        specs = EDIT_SETS[args.edit_set]
        for label, changes in (("text", None), ("image change", {k: c for k, (_, c) in results.items()})):
            print(json.dumps({"direction": label, **global_benchmark(changes, specs, args.seeds)}), flush=True)


if __name__ == "__main__":
    main()
