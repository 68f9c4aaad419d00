"""Does the toyfaces generator's mapping network carry each attribute into w? A linear probe per attribute.

The distillation target of z is the face `params_of_z(z)`, so every attribute is a function of z. If w = mapping(z)
has lost an attribute, the synthesis network cannot draw it whatever its training; if w carries it linearly, the
synthesis is what fails to draw it. For each discrete attribute, a ridge-regression probe (one-hot targets, argmax)
is fitted on w of `--train` samples and scored on `--test` more, beside the majority-class rate (what a probe
that learnt nothing scores).

    python benchmarks/bench_generator_latents.py --generator assets/toyfaces/generator.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from styleclip.models.generator_io import load_generator
from styleclip.toyfaces.attributes import ATTRIBUTES
from styleclip.toyfaces.renderer import labels_of
from styleclip.toyfaces.z_layout import params_of_z

RIDGE = 1e-2


def probe_accuracy(features: np.ndarray, labels: np.ndarray, n_train: int) -> float:
    """Test accuracy of a ridge one-hot probe fitted on the first n_train rows of features [N, F], labels [N]."""
    x = np.concatenate([features, np.ones((len(features), 1))], 1)
    classes = np.unique(labels)
    y = (labels[:, None] == classes[None]).astype(np.float64)
    a = x[:n_train]
    weights = np.linalg.solve(a.T @ a + RIDGE * np.eye(a.shape[1]), a.T @ y[:n_train])
    predicted = classes[np.argmax(x[n_train:] @ weights, 1)]
    return float((predicted == labels[n_train:]).mean())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generator", default="assets/toyfaces/generator.pt")
    p.add_argument("--train", type=int, default=5000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = load_generator(args.generator).eval()
    n = args.train + args.test
    z = np.random.default_rng(args.seed).standard_normal((n, g.style_dim)).astype(np.float32)
    with torch.no_grad():
        w = g.mapping(torch.from_numpy(z)).numpy().astype(np.float64)
    labels = [labels_of(params_of_z(row)) for row in z]
    print(f"{args.generator}: linear probe of w = mapping(z), {args.train} fitted / {args.test} scored\n")
    print("| attribute | probe accuracy | majority class |")
    print("|---|---:|---:|")
    for attribute in ATTRIBUTES:
        if attribute.kind != "discrete":
            continue
        y = np.array([row[attribute.name] for row in labels])
        majority = np.bincount(y[args.train:]).max() / args.test
        print(f"| {attribute.name} | {probe_accuracy(w, y, args.train):.3f} | {majority:.3f} |")


if __name__ == "__main__":
    main()
