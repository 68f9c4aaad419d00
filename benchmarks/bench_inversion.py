"""Inversion of fresh renderer faces ("photos" the generator never produced) into the embedded model, and edits of
the inverted faces (issue: real photos).

    python benchmarks/bench_inversion.py [--n 50] [--steps 150] [--s-steps 150] [--pixel-loss lap1]
                                         [--edit-seeds 20] [--json]

For faces 0 … n-1 of the app's "fresh face" button (Studio.fresh_render: the renderer at
RandomState(PHOTO_SEED_OFFSET + i)), it inverts each render as the app does (`Studio.invert_photo`: W+ stage,
then S refinement) and reports:
- PSNR of the reconstruction (dB) and seconds per face;
- attribute agreement: the attribute classifier's label on the reconstruction equals the render's true label,
  over visible attributes (the bar: >= 90%); the classifier's own accuracy on the renders is printed beside it;
- with --edit-seeds K: the global-directions edit benchmark on the first K inverted faces and on generated
  seeds 0 … K-1, same edits and settings (success on inverted faces within 10 points of generated ones).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from styleclip.evaluation import evaluate_edits, global_directions_edit
from styleclip.engines.inversion import PIXEL_LOSSES
from styleclip.studio import INVERT_PIXEL_LOSS, INVERT_S_STEPS_DEFAULT, INVERT_STEPS_DEFAULT, Studio, fresh_face_params
from styleclip.toyfaces.attributes import ATTRIBUTES
from styleclip.toyfaces.classifier import load_classifier, to_img
from styleclip.toyfaces.dataset import labels_array, observable_array


def attribute_agreement(classifier, images: np.ndarray, params: list) -> dict[str, float]:
    """Per discrete attribute: share of visible faces whose predicted label is the true one."""
    with torch.inference_mode():
        probs = classifier.predict(to_img(images))
    truth, visible = labels_array(params), observable_array(params)
    return {a.name: float((probs[a.name].argmax(1).numpy() == truth[a.name])[visible[a.name]].mean())
            for a in ATTRIBUTES if a.kind == "discrete"}


_CACHED = ("w_plus", "s", "recons", "psnr", "seconds")


def _read_cache(path: str, generator_sha256: str, steps: int, s_steps: int, pixel_loss: str, n: int):
    """The cached inversions if `path` holds them for this generator, these step counts and at least n faces."""
    if not path or not Path(path).is_file():
        return None
    data = np.load(path)
    if (str(data["generator_sha256"]) != generator_sha256 or int(data["steps"]) != steps or "s_steps" not in data
            or int(data["s_steps"]) != s_steps or str(data.get("pixel_loss", "")) != pixel_loss
            or len(data["psnr"]) < n):
        return None
    return {k: data[k][:n] for k in _CACHED}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toyfaces")
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--steps", type=int, default=INVERT_STEPS_DEFAULT, help="W+ steps (the app's default)")
    p.add_argument("--s-steps", type=int, default=INVERT_S_STEPS_DEFAULT, help="S refinement steps (the app's)")
    p.add_argument("--pixel-loss", choices=PIXEL_LOSSES, default=INVERT_PIXEL_LOSS, help="pixel term (the app's)")
    p.add_argument("--edit-seeds", type=int, default=0, help="faces for the edit comparison (0: skip it)")
    p.add_argument("--alpha", type=float, default=4.1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default="", help="npz of inverted latents: reused when it matches, else written")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    studio = Studio()
    loaded = studio.model(args.model)
    classifier = load_classifier()

    renders = [studio.fresh_render(args.model, i) for i in range(args.n)]
    cached = _read_cache(args.cache, loaded.generator_sha256, args.steps, args.s_steps, args.pixel_loss, args.n)
    if cached is None:
        recons, w_plus, s_flat, psnr, seconds = [], [], [], [], []
        for i, image in enumerate(renders):
            w, s, recon, info = studio.invert_photo(loaded.name, image, args.steps, args.s_steps,
                                                    pixel_loss=args.pixel_loss)
            recons.append(recon)
            w_plus.append(w)
            s_flat.append(s)
            psnr.append(info["psnr"])
            seconds.append(info["seconds"])
            print(f"face {i}: PSNR {psnr[-1]:.2f} dB in {seconds[-1]:.1f} s", file=sys.stderr, flush=True)
        if args.cache:
            np.savez(args.cache, w_plus=torch.cat(w_plus).numpy(), s=torch.cat(s_flat).numpy(),
                     recons=np.stack(recons), psnr=np.array(psnr), seconds=np.array(seconds),
                     generator_sha256=loaded.generator_sha256, steps=args.steps, s_steps=args.s_steps,
                     pixel_loss=args.pixel_loss)
    else:
        w_plus = [torch.from_numpy(w)[None] for w in cached["w_plus"]]
        s_flat = [torch.from_numpy(s)[None] for s in cached["s"]]
        recons, psnr, seconds = list(cached["recons"]), list(cached["psnr"]), list(cached["seconds"])
    params = [fresh_face_params(i) for i in range(args.n)]
    recon_agree = attribute_agreement(classifier, np.stack(recons), params)
    render_agree = attribute_agreement(classifier, np.stack(renders), params)
    report = {
        "model": loaded.name, "n": args.n, "steps": args.steps, "s_steps": args.s_steps,
        "pixel_loss": args.pixel_loss,
        "psnr_mean": round(float(np.mean(psnr)), 2), "psnr_min": round(float(np.min(psnr)), 2),
        "seconds_per_face": round(float(np.mean(seconds)), 2),
        "agreement_mean": round(float(np.mean(list(recon_agree.values()))), 4),
        "agreement_min": round(float(min(recon_agree.values())), 4),
        "agreement": {k: round(v, 4) for k, v in recon_agree.items()},
        "classifier_on_renders": {k: round(v, 4) for k, v in render_agree.items()},
    }
    if args.edit_seeds:
        k = min(args.edit_seeds, args.n)
        seeds = tuple(range(k))
        inverted_s = {i: s_flat[i] for i in seeds}

        def inverted_source(seed: int) -> torch.Tensor:
            with torch.inference_mode():
                return loaded.generator.synthesis(loaded.generator.flat_to_s(s_flat[seed]))

        on_inverted = evaluate_edits(None, classifier, global_directions_edit(loaded, args.alpha,
                                     source_s=inverted_s.__getitem__), seeds=seeds, source_fn=inverted_source)
        on_generated = evaluate_edits(loaded, classifier, global_directions_edit(loaded, args.alpha), seeds=seeds)
        report["edits"] = {
            "seeds": k,
            "success_inverted": round(on_inverted.success, 4),
            "success_generated": round(on_generated.success, 4),
            "preservation_inverted": round(on_inverted.preservation, 4),
            "preservation_generated": round(on_generated.preservation, 4),
        }
    if args.json:
        print(json.dumps(report))
        return
    print(f"Inversion of {args.n} fresh renders into {loaded.name} ({args.steps} W+ + {args.s_steps} S steps each):")
    print(f"PSNR mean {report['psnr_mean']} dB (min {report['psnr_min']}), {report['seconds_per_face']} s per face")
    print(f"attribute agreement: mean {report['agreement_mean']:.1%}, min {report['agreement_min']:.1%}")
    print("| attribute | reconstruction | classifier on the renders |\n|---|---:|---:|")
    for name, value in recon_agree.items():
        print(f"| {name} | {value:.1%} | {render_agree[name]:.1%} |")
    if "edits" in report:
        e = report["edits"]
        print(f"edits (global directions, {e['seeds']} faces): success inverted {e['success_inverted']:.1%} vs "
              f"generated {e['success_generated']:.1%}; preservation {e['preservation_inverted']:.1%} vs "
              f"{e['preservation_generated']:.1%}")


if __name__ == "__main__":
    main()
