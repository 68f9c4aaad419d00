"""Scores the embedded toyfaces generator against the renderer it distils, through the attribute classifier.

Usage:
    python -m styleclip.toyfaces.eval_generator [--n 1000] [--seed 0] [--generator PATH] [--classifier PATH]
                                                [--json]

Samples: n generator images from z = numpy RandomState(seed).randn(n, style_dim) as float32 (the upstream seed
convention, one draw for the whole set; seed GENERATOR_SEED = 0 by default), truncation 1; n fresh renders
make_dataset(n, HELDOUT_SEED) and, for the renders-vs-renders baselines, n more from HELDOUT_SEED + 1 (neither
seed is used by any trainer). Generator output is clamped and quantised to uint8 like a saved image, so both
sides reach the classifier through the same to_img().

Per discrete attribute:
    tv            total-variation distance between the classifier's predicted-label distributions on generator
                  samples and on renders (all samples). The classifier reads both sides, so its own errors
                  cancel. Bar: <= 0.1.
    tv_baseline   the same between the two render sets: the sampling noise floor of `tv` at this n.
    tv_true       generator predictions vs the renders' true labels (does not cancel classifier error).
    confident     fraction of generator samples whose max class probability is >= 0.9. Bar: >= 0.9.
    confident_renders   the same on renders: the most the instrument can give.
    agreement     predicted label == label of the face that z encodes (the distillation target
                  render(params_of_z(z)), see z_layout); only when style_dim >= Z_DIMS_USED.
`tv_true`, `confident*` and `agreement` count only samples where the attribute is visible (eye colour behind
sunglasses or closed eyes is not): for renders by their params, for generator samples by the params their z
encodes (all samples when style_dim < Z_DIMS_USED). `all_confident` is the fraction of samples confident on
every discrete attribute visible in them at once (bar: >= 0.9).

Per continuous attribute: mean of predicted values on both sides, their difference, and the 1-D Wasserstein
distance between the predicted values (with the renders-vs-renders baseline).

Frechet distance between Gaussians fitted to the classifier's penultimate features
(AttributeClassifier.embed): generator vs renders, beside renders vs renders (both at n; the estimator is
biased upwards at small n, so only the pair is meaningful).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from styleclip.toyfaces.classifier import AttributeClassifier, load_classifier, to_img
from styleclip.toyfaces.dataset import labels_array, make_dataset, observable_array
from styleclip.toyfaces.eval_classifier import HELDOUT_SEED
from styleclip.toyfaces.z_layout import Z_DIMS_USED, params_of_z

__all__ = [
    "evaluate_generator",
    "format_table",
    "main",
    "sample_generator",
    "total_variation",
    "wasserstein_1d",
    "frechet_distance",
    "meets_tv_bar",
    "meets_confidence_bar",
    "GENERATOR_SEED",
    "DEFAULT_GENERATOR",
    "TV_BAR",
    "CONFIDENCE_BAR",
    "CONFIDENT_PROB",
]

DEFAULT_GENERATOR = Path(__file__).resolve().parents[2] / "assets" / "toyfaces" / "generator.pt"
GENERATOR_SEED = 0  # z = RandomState(GENERATOR_SEED).randn(n, style_dim); trainers draw from default_rng
TV_BAR = 0.1  # max TV distance per discrete attribute
CONFIDENCE_BAR = 0.9  # min fraction of confident samples
CONFIDENT_PROB = 0.9  # a sample is confident on an attribute when its max class probability reaches this
_EPS = 1e-9  # histogram sums are not exact: a TV of exactly 5/50 must meet a bar of 0.1


# ---------------------------------------------------------------------------------------------- statistics


def meets_tv_bar(tv: float, bar: float = TV_BAR) -> bool:
    """tv <= bar, up to float round-off (False for NaN)."""
    return tv <= bar + _EPS


def meets_confidence_bar(fraction: float, bar: float = CONFIDENCE_BAR) -> bool:
    """fraction >= bar, up to float round-off (False for NaN)."""
    return fraction >= bar - _EPS


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """TV distance 0.5 * sum |p - q| between two distributions p, q [K] (each sums to 1); in [0, 1]."""
    return float(0.5 * np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64)).sum())


def _histogram(labels: np.ndarray, k: int) -> np.ndarray:
    """labels int [N] in [0, k) -> empirical distribution [k] (NaN when N = 0: nothing to compare)."""
    if len(labels) == 0:
        return np.full(k, np.nan)
    return np.bincount(labels, minlength=k).astype(np.float64) / len(labels)


def wasserstein_1d(a: np.ndarray, b: np.ndarray) -> float:
    """1-D Wasserstein-1 distance between the empirical distributions of a [N] and b [M]: the integral of
    |F_a - F_b| over the real line (same as scipy.stats.wasserstein_distance)."""
    a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    grid = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(a, grid[:-1], side="right") / len(a)
    cdf_b = np.searchsorted(b, grid[:-1], side="right") / len(b)
    return float(np.sum(np.abs(cdf_a - cdf_b) * np.diff(grid)))


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix [F, F] (eigenvalues clipped at 0 against round-off)."""
    vals, vecs = np.linalg.eigh(m)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets x [N, F] and y [M, F] (N, M >= 2):
    |mu_x - mu_y|^2 + tr(S_x + S_y - 2 (S_x^1/2 S_y S_x^1/2)^1/2).

    The matrix square root goes through symmetric eigendecompositions (S_x^1/2 S_y S_x^1/2 is symmetric PSD
    and has the trace of sqrt(S_x S_y)), so it needs no scipy and never turns complex. Clipped at 0
    (round-off).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mu_x, mu_y = x.mean(0), y.mean(0)
    s_x, s_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    s_x, s_y = np.atleast_2d(s_x), np.atleast_2d(s_y)
    root_x = _sqrt_psd(s_x)
    cross = root_x @ s_y @ root_x
    tr_cross = np.sqrt(np.clip(np.linalg.eigvalsh((cross + cross.T) / 2), 0.0, None)).sum()
    d = float(np.sum((mu_x - mu_y) ** 2) + np.trace(s_x) + np.trace(s_y) - 2.0 * tr_cross)
    return max(d, 0.0)


# ---------------------------------------------------------------------------------------------- sampling


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    """img float [N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3] (clamped, rounded: what a saved PNG holds)."""
    x = img.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def sample_generator(
    generator: torch.nn.Module, n: int, seed: int = GENERATOR_SEED, batch: int = 50, truncation: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """n generator samples with the upstream seed convention.

    Returns:
        images uint8 [n, R, R, 3], z float32 [n, style_dim] = RandomState(seed).randn(n, style_dim).
    """
    z = np.random.RandomState(seed).randn(n, generator.config.style_dim).astype(np.float32)
    param = next(generator.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    chunks = [
        _to_uint8(generator(torch.from_numpy(z[i : i + batch]).to(device), truncation=truncation))
        for i in range(0, n, batch)
    ]
    size = generator.config.size
    return (np.concatenate(chunks) if chunks else np.zeros((0, size, size, 3), np.uint8)), z


def _read(
    classifier: AttributeClassifier, images: np.ndarray, batch: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """uint8 [N, H, W, 3] -> (name -> probs [N, K] or values [N], penultimate features [N, F]), as numpy."""
    probs: dict[str, list[np.ndarray]] = {}
    feats: list[np.ndarray] = []
    for i in range(0, len(images), batch):
        img = to_img(images[i : i + batch])
        for name, p in classifier.predict(img).items():
            probs.setdefault(name, []).append(p.float().cpu().numpy())
        feats.append(classifier.embed(img).float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in probs.items()}, np.concatenate(feats)


# ---------------------------------------------------------------------------------------------- evaluation


def evaluate_generator(
    generator: torch.nn.Module,
    classifier: AttributeClassifier,
    n: int = 1000,
    seed: int = GENERATOR_SEED,
    *,
    render_seed: int = HELDOUT_SEED,
    baseline_seed: int = HELDOUT_SEED + 1,
    batch: int = 50,
    truncation: float = 1.0,
) -> dict:
    """Compares n generator samples with n renders through the classifier (see the module docstring).

    Args:
        generator: a styleclip Generator (anything with .config.style_dim, .config.size and
            forward(z [B, D], truncation=...) -> img [B, 3, R, R] in [-1, 1]).
        classifier: an AttributeClassifier (anything with .attributes, .predict(img) and .embed(img)).
        n: samples per set (>= 2, for the Frechet covariances).
        seed: z = RandomState(seed).randn(n, style_dim).
        render_seed, baseline_seed: make_dataset seeds of the renders and of the baseline renders.
        batch: images per generator / classifier forward.
        truncation: generator truncation psi.

    Returns:
        {"n", "seed", "render_seed", "baseline_seed", "paired",
         "discrete": name -> {"tv", "tv_baseline", "tv_true", "confident", "confident_renders", "agreement"
                              (None unless paired), "n_visible"},
         "continuous": name -> {"mean_generator", "mean_renders", "mean_diff", "wasserstein",
                                "wasserstein_baseline"},
         "all_confident", "all_confident_renders",
         "frechet": {"generator_vs_renders", "renders_vs_renders", "feature_dim"},
         "bars": {"tv_max", "confident_min", "confident_prob"},
         "checks": {"tv", "confident", "all_confident"} (bools), "passed"}.
        Fractions are in [0, 1]; NaN where a set has no visible sample.
    """
    if n < 2:
        raise ValueError(f"n must be >= 2 (covariances for the Frechet distance), got {n}")
    gen_images, z = sample_generator(generator, n, seed, batch, truncation)
    render_images, render_labels, render_params = make_dataset(n, render_seed, 64, workers=1, use_cache=False)
    base_images, _, _ = make_dataset(n, baseline_seed, 64, workers=1, use_cache=False)

    # The distilled generator draws render(params_of_z(z)), so z names the face each
    # sample should be: that gives per-sample visibility and target labels on the generator side.
    paired = generator.config.style_dim >= Z_DIMS_USED
    if paired:
        gen_params = [params_of_z(row) for row in z.astype(np.float64)]
        gen_visible = observable_array(gen_params)
        gen_target = labels_array(gen_params)
    else:
        gen_visible = {name: np.ones(n, bool) for name, _, _ in classifier.attributes}
        gen_target = None
    render_visible = observable_array(render_params)

    gen_probs, gen_feats = _read(classifier, gen_images, batch)
    render_probs, render_feats = _read(classifier, render_images, batch)
    base_probs, base_feats = _read(classifier, base_images, batch)

    discrete: dict[str, dict] = {}
    continuous: dict[str, dict] = {}
    gen_all = np.ones(n, bool)  # confident on every visible discrete attribute so far
    render_all = np.ones(n, bool)
    for name, kind, k in classifier.attributes:
        gp, rp, bp = gen_probs[name], render_probs[name], base_probs[name]
        gv, rv = gen_visible[name], render_visible[name]
        if kind == "discrete":
            g_pred, r_pred, b_pred = gp.argmax(1), rp.argmax(1), bp.argmax(1)
            g_conf, r_conf = gp.max(1) >= CONFIDENT_PROB, rp.max(1) >= CONFIDENT_PROB
            # A hidden attribute cannot be read off the image, so it does not count against a sample.
            gen_all &= g_conf | ~gv
            render_all &= r_conf | ~rv
            agreement = None
            if gen_target is not None:
                agreement = float((g_pred[gv] == gen_target[name][gv]).mean()) if gv.any() else math.nan
            discrete[name] = {
                "tv": total_variation(_histogram(g_pred, k), _histogram(r_pred, k)),
                "tv_baseline": total_variation(_histogram(b_pred, k), _histogram(r_pred, k)),
                "tv_true": total_variation(_histogram(g_pred[gv], k), _histogram(render_labels[name][rv], k)),
                "confident": float(g_conf[gv].mean()) if gv.any() else math.nan,
                "confident_renders": float(r_conf[rv].mean()) if rv.any() else math.nan,
                "agreement": agreement,
                "n_visible": int(gv.sum()),
            }
        else:
            continuous[name] = {
                "mean_generator": float(gp.mean()),
                "mean_renders": float(rp.mean()),
                "mean_diff": float(gp.mean() - rp.mean()),
                "wasserstein": wasserstein_1d(gp, rp),
                "wasserstein_baseline": wasserstein_1d(bp, rp),
            }

    checks = {
        "tv": all(meets_tv_bar(r["tv"]) for r in discrete.values()),
        "confident": all(meets_confidence_bar(r["confident"]) for r in discrete.values()),
        "all_confident": meets_confidence_bar(float(gen_all.mean())),
    }
    return {
        "n": n,
        "seed": seed,
        "render_seed": render_seed,
        "baseline_seed": baseline_seed,
        "paired": paired,
        "discrete": discrete,
        "continuous": continuous,
        "all_confident": float(gen_all.mean()),
        "all_confident_renders": float(render_all.mean()),
        "frechet": {
            "generator_vs_renders": frechet_distance(gen_feats, render_feats),
            "renders_vs_renders": frechet_distance(base_feats, render_feats),
            "feature_dim": int(gen_feats.shape[1]),
        },
        "bars": {"tv_max": TV_BAR, "confident_min": CONFIDENCE_BAR, "confident_prob": CONFIDENT_PROB},
        "checks": checks,
        "passed": all(checks.values()),
    }


# ---------------------------------------------------------------------------------------------- reporting


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def format_table(result: dict) -> str:
    """Markdown tables of evaluate_generator()'s result, with a PASS/FAIL column per bar."""
    tv_max, conf_min = result["bars"]["tv_max"], result["bars"]["confident_min"]
    lines = [
        f"Generator vs renders, n = {result['n']} each (z seed {result['seed']}, renders seed "
        f"{result['render_seed']}, baseline renders seed {result['baseline_seed']}).",
        "",
        f"| attribute | TV gen vs renders | TV renders vs renders | TV vs true labels | TV <= {tv_max:g} "
        f"| confident gen | confident renders | >= {100 * conf_min:.0f}% | agreement with z's face |",
        "|---|---:|---:|---:|:---:|---:|---:|:---:|---:|",
    ]
    for name, r in result["discrete"].items():
        lines.append(
            f"| {name} | {r['tv']:.3f} | {r['tv_baseline']:.3f} | {r['tv_true']:.3f} | "
            f"{_verdict(meets_tv_bar(r['tv'], tv_max))} | {_pct(r['confident'])} | "
            f"{_pct(r['confident_renders'])} | {_verdict(meets_confidence_bar(r['confident'], conf_min))} | "
            f"{_pct(r['agreement'])} |"
        )
    lines.append(
        f"| **all discrete at once** | | | | | {_pct(result['all_confident'])} | "
        f"{_pct(result['all_confident_renders'])} | {_verdict(result['checks']['all_confident'])} | |"
    )
    if result["continuous"]:
        lines += [
            "",
            "| attribute | mean gen | mean renders | mean diff | W1 gen vs renders | W1 renders vs renders |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, r in result["continuous"].items():
            lines.append(
                f"| {name} | {r['mean_generator']:.4f} | {r['mean_renders']:.4f} | {r['mean_diff']:+.4f} | "
                f"{r['wasserstein']:.4f} | {r['wasserstein_baseline']:.4f} |"
            )
    fd = result["frechet"]
    lines += [
        "",
        f"Frechet distance on classifier features ({fd['feature_dim']}-d): generator vs renders "
        f"{fd['generator_vs_renders']:.4f}, renders vs renders {fd['renders_vs_renders']:.4f} (baseline).",
        f"Overall: {_verdict(result['passed'])}",
    ]
    return "\n".join(lines)


def json_safe(x):
    """NaN -> None recursively, so --json prints strict JSON."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="generator samples and renders per set")
    ap.add_argument("--seed", type=int, default=GENERATOR_SEED, help="z = RandomState(seed).randn(n, D)")
    ap.add_argument("--generator", default=str(DEFAULT_GENERATOR), help="generator file")
    ap.add_argument("--classifier", default=None, help="classifier file (default: the shipped one)")
    ap.add_argument("--json", action="store_true", help="print the result dict as one JSON line")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from styleclip.models.generator_io import load_generator

    generator, classifier = load_generator(args.generator), load_classifier(args.classifier)
    result = evaluate_generator(generator, classifier, args.n, args.seed)
    print(json.dumps(json_safe(result)) if args.json else format_table(result))


if __name__ == "__main__":
    main()
