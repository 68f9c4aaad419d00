"""Does the toyfaces generator's mapping network carry each attribute into w? A linear probe per attribute.

The distillation target of z is the face `params_of_z(z)`, so every attribute is a function of z. If w = mapping(z)
has lost an attribute, the synthesis network cannot draw it whatever its training; if w carries it linearly, the
synthesis is what fails to draw it. For each discrete attribute, a ridge-regression probe (one-hot targets, argmax)
is fitted on w of `--train` samples and scored on `--test` more, beside the majority-class rate (what a probe
that learnt nothing scores).

With `--render N`, a second table: the attribute classifier's agreement with z's face on N images synthesised
from mapping(z) and from the export's code encoder, w_code = encoder(attribute code of z) (the path stage 1 of
training draws from; an encoder left behind by later end-to-end stages gives low figures on it).

With `--flips N`, a third table: for N faces, each discrete attribute moved to its next value; how far the code
encoder's w moves (mean |Δw_code| over the spread of w_code, the norm of its per-dimension std) and the mean
absolute pixel change that causes in the generator's image and in the renderer's (0–255 levels). An attribute the
encoder barely separates gives the synthesis little to draw it from.

    python benchmarks/bench_generator_latents.py --generator assets/toyfaces/generator.pt [--render 600] [--flips 64]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from styleclip.models.generator_io import load_generator
from styleclip.toyfaces.attributes import ATTRIBUTES
from styleclip.toyfaces.classifier import load_classifier
from styleclip.toyfaces.renderer import labels_of, render_batch
from styleclip.toyfaces.train_generator import CodeEncoder, code_encoder_weights
from styleclip.toyfaces.z_layout import attribute_code, params_of_z

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


@torch.no_grad()
def render_agreement(generator, encoder: CodeEncoder, z: np.ndarray, batch: int = 50) -> dict[str, dict[str, float]]:
    """Classifier agreement with z's face per discrete attribute, for images from mapping(z) and from
    encoder(code of z): {"mapping": {name: fraction}, "code": {...}}. Images are quantised to uint8 levels."""
    classifier = load_classifier()
    params = [params_of_z(row) for row in z]
    codes = torch.from_numpy(np.stack([attribute_code(p) for p in params])).float()
    truth = {a.name: np.array([labels_of(p)[a.name] for p in params]) for a in ATTRIBUTES if a.kind == "discrete"}
    predicted: dict[str, dict[str, list[np.ndarray]]] = {"mapping": {}, "code": {}}
    for i in range(0, len(z), batch):
        w_by_path = {"mapping": generator.mapping(torch.from_numpy(z[i:i + batch])),
                     "code": encoder(codes[i:i + batch])}
        for path, w in w_by_path.items():
            img = generator.synthesis_w_plus(generator.w_to_w_plus(w)).clamp(-1, 1)
            img = torch.round((img + 1) * 127.5) / 127.5 - 1
            for name, probs in classifier.predict(img).items():
                if name in truth:
                    predicted[path].setdefault(name, []).append(probs.argmax(1).numpy())
    return {path: {name: float((np.concatenate(parts) == truth[name]).mean()) for name, parts in by_name.items()}
            for path, by_name in predicted.items()}


@torch.no_grad()
def flip_table(generator, encoder: CodeEncoder, z: np.ndarray) -> dict[str, tuple[float, float, float]]:
    """Per discrete attribute: (mean |Δw_code| / spread of w_code, generator pixel change, renderer pixel change)
    when the attribute of each face of z moves to its next value (cyclically); pixel changes in 0–255 levels."""
    params = [params_of_z(row) for row in z]

    def code_w(faces) -> torch.Tensor:
        return encoder(torch.from_numpy(np.stack([attribute_code(p) for p in faces])).float())

    def draw(w: torch.Tensor) -> torch.Tensor:
        return generator.synthesis_w_plus(generator.w_to_w_plus(w)).clamp(-1, 1) * 127.5

    w0 = code_w(params)
    spread = w0.std(0).norm()
    img0, render0 = draw(w0), render_batch(params, generator.size).astype(np.float64)
    table = {}
    for attribute in ATTRIBUTES:
        if attribute.kind != "discrete":
            continue
        values = attribute.values
        moved = [dataclasses.replace(p, **{attribute.name: values[(values.index(getattr(p, attribute.name)) + 1)
                                                                    % len(values)]}) for p in params]
        w1 = code_w(moved)
        table[attribute.name] = (float((w1 - w0).norm(dim=1).mean() / spread),
                                 float((draw(w1) - img0).abs().mean()),
                                 float(np.abs(render_batch(moved, generator.size) - render0).mean()))
    return table


def load_code_encoder(path: str, style_dim: int) -> CodeEncoder:
    """The code encoder stored beside a train_generator export, in eval mode."""
    encoder = CodeEncoder(style_dim)
    encoder.load_state_dict(code_encoder_weights(torch.load(path, map_location="cpu", weights_only=True), path))
    return encoder.eval()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generator", default="assets/toyfaces/generator.pt")
    p.add_argument("--train", type=int, default=5000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--render", type=int, default=0, help="also render N images per path (see above)")
    p.add_argument("--flips", type=int, default=0, help="also the attribute-flip table on N faces (see above)")
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
    encoder = load_code_encoder(args.generator, g.style_dim) if args.render or args.flips else None
    if args.render:
        rng = np.random.default_rng(args.seed + 1)
        z_render = rng.standard_normal((args.render, g.style_dim)).astype(np.float32)
        agreement = render_agreement(g, encoder, z_render)
        print(f"\nClassifier agreement with z's face, {args.render} images per path\n")
        print("| attribute | from mapping(z) | from the code encoder's w |")
        print("|---|---:|---:|")
        for name in agreement["mapping"]:
            print(f"| {name} | {agreement['mapping'][name]:.3f} | {agreement['code'][name]:.3f} |")

    if args.flips:
        z_flip = np.random.default_rng(args.seed + 2).standard_normal((args.flips, g.style_dim)).astype(np.float32)
        print(f"\nOne attribute moved to its next value, {args.flips} faces\n")
        print("| attribute | \\|Δw_code\\| / spread | generator pixel change | renderer pixel change |")
        print("|---|---:|---:|---:|")
        for name, (dw, gen, ren) in flip_table(g, encoder, z_flip).items():
            print(f"| {name} | {dw:.3f} | {gen:.2f} | {ren:.2f} |")


if __name__ == "__main__":
    main()
