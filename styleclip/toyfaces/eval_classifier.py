"""Scores the toyfaces attribute classifier on fresh held-out renders; prints a per-attribute table.

Usage:
    python -m styleclip.toyfaces.eval_classifier [--n 2000] [--seed 424242] [--degraded] [--path FILE]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from styleclip.toyfaces.classifier import AttributeClassifier, load_classifier, to_img
from styleclip.toyfaces.dataset import make_dataset, observable_array

__all__ = ["evaluate", "format_table", "main", "HELDOUT_SEED"]

HELDOUT_SEED = 424242  # training data uses seeds 1000 + k; this one is never used for training


@torch.inference_mode()
def evaluate(
    model: AttributeClassifier,
    n: int = 2000,
    seed: int = HELDOUT_SEED,
    degraded: bool = False,
    batch: int = 250,
) -> dict[str, dict[str, float]]:
    """Accuracy (discrete, over images where the attribute is visible) or MAE (continuous) per attribute.

    Args:
        model: the classifier.
        n: number of fresh 64 px renders.
        seed: seed of the renders.
        degraded: apply the training degradations (blur, noise, JPEG, jitter) before scoring.
        batch: images per forward pass.

    Returns:
        name -> {"kind", "acc" or "mae", "n"}.
    """
    images, labels, params = make_dataset(n, seed, size=64, workers=1, use_cache=False)
    visible = observable_array(params)
    preds: dict[str, list[np.ndarray]] = {}
    gen = torch.Generator().manual_seed(seed)
    for i in range(0, n, batch):
        chunk = images[i : i + batch]
        if degraded:
            from styleclip.toyfaces.train_classifier import augment

            img = augment(chunk, gen)
        else:
            img = to_img(chunk)
        for name, p in model.predict(img).items():
            preds.setdefault(name, []).append((p.argmax(dim=1) if p.dim() == 2 else p).numpy())
    out: dict[str, dict[str, float]] = {}
    for name, kind, _ in model.attributes:
        pred, mask = np.concatenate(preds[name]), visible[name]
        if kind == "discrete":
            out[name] = {
                "kind": "discrete",
                "acc": float((pred[mask] == labels[name][mask]).mean()),
                "n": int(mask.sum()),
            }
        else:
            out[name] = {
                "kind": "continuous",
                "mae": float(np.abs(pred[mask] - labels[name][mask]).mean()),
                "n": int(mask.sum()),
            }
    return out


def format_table(result: dict[str, dict[str, float]]) -> str:
    """A plain-text table of evaluate()'s result."""
    lines = [f"{'attribute':<14} {'metric':<8} {'value':>8} {'n':>6}"]
    for name, r in result.items():
        if r["kind"] == "discrete":
            lines.append(f"{name:<14} {'acc':<8} {100 * r['acc']:>7.2f}% {r['n']:>6}")
        else:
            lines.append(f"{name:<14} {'mae':<8} {r['mae']:>8.4f} {r['n']:>6}")
    accs = [r["acc"] for r in result.values() if r["kind"] == "discrete"]
    lines.append(f"{'min acc':<14} {'':<8} {100 * min(accs):>7.2f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=HELDOUT_SEED)
    ap.add_argument("--degraded", action="store_true", help="score on degraded (blurred/noisy/JPEG) renders")
    ap.add_argument("--path", default=None, help="classifier file (default: the shipped one)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_classifier(args.path)
    print(format_table(evaluate(model, args.n, args.seed, args.degraded)))


if __name__ == "__main__":
    main()
