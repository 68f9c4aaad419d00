"""Zero-shot (prompt-based) classification of toyfaces attributes with the embedded small CLIP.

Usage:
    python -m styleclip.toyfaces.eval_clip [--n 1000] [--seed 424242] [--clip PATH] [--json]

For each discrete attribute, each value's class embedding is the L2-normalised mean of the text embeddings of
its prompts from captions.zero_shot_prompts(); an image is assigned the value whose class embedding has the
highest cosine with its image embedding (ClipModel.encode_image_eval, CLIP's official preprocessing). Accuracy
counts only renders where the attribute is visible. Three prompt sets (captions.PROMPT_SETS) are scored on the
same renders: "train" (the phrases CLIP was trained on, in caption-like frames), "reworded" (the same phrases
in sentence frames no training caption uses: known words, prompts not verbatim from training) and
"paraphrase" (words never seen in training). Bar: accuracy >= 90% per attribute.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from styleclip.models.clip_model import ClipModel
from styleclip.toyfaces.attributes import ATTRIBUTES
from styleclip.toyfaces.eval_generator import json_safe
from styleclip.toyfaces.captions import PROMPT_SETS, zero_shot_prompts
from styleclip.toyfaces.dataset import make_dataset, observable_array
from styleclip.toyfaces.eval_classifier import HELDOUT_SEED

__all__ = [
    "evaluate_clip",
    "evaluate_clip_prompt_sets",
    "class_embeddings",
    "format_table",
    "main",
    "ACCURACY_BAR",
    "DEFAULT_CLIP",
]

DEFAULT_CLIP = Path(__file__).resolve().parents[2] / "assets" / "toyfaces" / "clip.pt"
ACCURACY_BAR = 0.9  # min zero-shot accuracy per discrete attribute


@torch.no_grad()
def class_embeddings(clip_model: ClipModel, attribute_name: str, prompt_set: str = "train") -> torch.Tensor:
    """[K, D] L2-normalised class embeddings of a discrete attribute, rows in the order of Attribute.values.

    Row k is the normalised mean of the (already normalised) text embeddings of value k's prompts.
    """
    prompts = zero_shot_prompts(attribute_name, prompt_set)
    values = next(a.values for a in ATTRIBUTES if a.name == attribute_name)
    missing = [v for v in values if not prompts.get(v)]
    if missing:
        raise ValueError(f"{attribute_name}: no zero-shot prompts for {missing} ({prompt_set} prompts)")
    rows = [clip_model.encode_text(prompts[v]).float().mean(0) for v in values]
    return F.normalize(torch.stack(rows), dim=-1)


@torch.no_grad()
def _score(
    clip_model: ClipModel,
    image_emb: torch.Tensor,
    labels: dict[str, np.ndarray],
    visible: dict[str, np.ndarray],
    prompt_set: str,
) -> dict:
    """Zero-shot accuracies from image embeddings [N, D] (normalised) and their labels / visibility [N]."""
    attributes: dict[str, dict] = {}
    for a in ATTRIBUTES:
        if a.kind != "discrete":
            continue
        mask = visible[a.name]
        text = class_embeddings(clip_model, a.name, prompt_set).to(image_emb.device)
        pred = (image_emb @ text.T).argmax(dim=1).cpu().numpy()  # cosine: both sides are unit vectors
        acc = float((pred[mask] == labels[a.name][mask]).mean()) if mask.any() else math.nan
        attributes[a.name] = {"acc": acc, "n": int(mask.sum())}
    accs = [r["acc"] for r in attributes.values()]
    return {
        "prompts": prompt_set,
        "attributes": attributes,
        "mean_acc": float(np.mean(accs)),
        "min_acc": float(np.min(accs)),
        "bar": ACCURACY_BAR,
        "passed": all(acc >= ACCURACY_BAR for acc in accs),
    }


def _encoded_renders(
    clip_model: ClipModel, n: int, seed: int, batch: int
) -> tuple[torch.Tensor, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """n fresh 64 px renders -> (image embeddings [n, D], labels name -> [n], visibility name -> [n] bool)."""
    images, labels, params = make_dataset(n, seed, size=64, workers=1, use_cache=False)
    # A list, not the [N, H, W, 3] array: encode_image_eval reads one ndarray as a single image.
    image_emb = clip_model.encode_image_eval(list(images), batch_size=batch).float()
    return image_emb, labels, observable_array(params)


def evaluate_clip(
    clip_model: ClipModel, n: int = 1000, seed: int = HELDOUT_SEED, prompt_set: str = "train", batch: int = 50
) -> dict:
    """Zero-shot accuracy per discrete attribute on n fresh renders (make_dataset(n, seed)).

    Args:
        clip_model: a ClipModel.
        n: number of renders.
        seed: seed of the renders (default: never used by any trainer).
        prompt_set: which prompts name the values, one of captions.PROMPT_SETS ("train", "reworded",
            "paraphrase").
        batch: images per CLIP forward.

    Returns:
        {"n", "seed", "prompts" (the set), "attributes": name -> {"acc" in [0, 1] (NaN if never visible),
         "n" visible}, "mean_acc", "min_acc", "bar", "passed"}.
    """
    if prompt_set not in PROMPT_SETS:
        raise ValueError(f"prompt_set must be one of {PROMPT_SETS}, got {prompt_set!r}")
    image_emb, labels, visible = _encoded_renders(clip_model, n, seed, batch)
    return {"n": n, "seed": seed, **_score(clip_model, image_emb, labels, visible, prompt_set)}


def evaluate_clip_prompt_sets(
    clip_model: ClipModel, n: int = 1000, seed: int = HELDOUT_SEED, batch: int = 50
) -> dict[str, dict]:
    """evaluate_clip for every prompt set on the same renders (rendered and encoded once).

    Returns:
        {"train": evaluate_clip(..., prompt_set="train"), "reworded": ..., "paraphrase": ...}.
    """
    image_emb, labels, visible = _encoded_renders(clip_model, n, seed, batch)
    return {
        prompt_set: {"n": n, "seed": seed, **_score(clip_model, image_emb, labels, visible, prompt_set)}
        for prompt_set in PROMPT_SETS
    }


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.1f}%"


def format_table(*results: dict) -> str:
    """A markdown table of one or more evaluate_clip() results (e.g. the three prompt sets side by side),
    with a PASS/FAIL column for the accuracy bar after each."""
    if not results:
        raise ValueError("format_table needs at least one evaluate_clip() result")
    bar = results[0]["bar"]
    names = {"train": "train-style prompts", "reworded": "reworded prompts",
             "paraphrase": "paraphrase prompts"}
    head = "| attribute | n |" + "".join(f" {names[r['prompts']]} | >= {100 * bar:.0f}% |" for r in results)
    lines = [
        f"Zero-shot CLIP accuracy on n = {results[0]['n']} renders (seed {results[0]['seed']}), "
        "over renders where the attribute is visible.",
        "",
        head,
        "|---|---:|" + "---:|:---:|" * len(results),
    ]
    for name, first in results[0]["attributes"].items():
        cells = "".join(
            f" {_pct(r['attributes'][name]['acc'])} | "
            f"{'PASS' if r['attributes'][name]['acc'] >= r['bar'] else 'FAIL'} |"
            for r in results
        )
        lines.append(f"| {name} | {first['n']} |{cells}")
    lines.append("| **mean** | |" + "".join(f" {_pct(r['mean_acc'])} | |" for r in results))
    lines.append(
        "| **all attributes** | |"
        + "".join(f" min {_pct(r['min_acc'])} | {'PASS' if r['passed'] else 'FAIL'} |" for r in results)
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="number of renders")
    ap.add_argument("--seed", type=int, default=HELDOUT_SEED, help="seed of the renders")
    ap.add_argument("--clip", default=str(DEFAULT_CLIP), help="CLIP weights file")
    ap.add_argument("--json", action="store_true",
                    help='one JSON line: {"train": ..., "reworded": ..., "paraphrase": ...}')
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = evaluate_clip_prompt_sets(ClipModel.load(args.clip), args.n, args.seed)
    print(json.dumps(json_safe(result)) if args.json else format_table(*(result[k] for k in PROMPT_SETS)))


if __name__ == "__main__":
    main()
