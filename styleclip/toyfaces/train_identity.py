"""Trains the toyfaces identity network (`identity_net.py`) contrastively on renderer triplets.

For each of `--triplets` faces three renders are made (cached under data/toyfaces/):
  a: a random face;
  b: the same face with at most one other attribute changed (hair, glasses, hat, expression, background, ...;
     none in 15% of the triplets), every nuisance (pose, size, position, light, shirt) resampled, and in half
     of the triplets a new background as well: the positive, "the same face apart from the edited attribute";
  c: face a, same pose and background, with one identity attribute (skin tone, eye colour, nose, face width)
     changed: a hard negative.
The background is never part of a face (an aligned ArcFace crop barely shows it): a network trained with it
fixed in the positives had learnt it as the strongest identity cue (cosine 0.66 for a background change alone),
which made the identity term fight every background edit.
The loss is InfoNCE over the batch: a and b are each other's positives; every other image is a negative except
those that cannot be told apart (`same_person`: the same identity attributes and at most one other visible
difference). So the embedding ignores pose and light, tolerates one changed attribute, and drifts further with
every additional change, most with an identity attribute. The augmentations are the classifier's (blur, noise,
JPEG, jitter), so the network also reads the generator's softer images. Seeded and resumable; no attribute
classifier is involved.

    python -m styleclip.toyfaces.train_identity                 # full run (~15 min on one CPU thread)
    python -m styleclip.toyfaces.train_identity --resume        # continue from runs/toyfaces_identity/last.pt
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .attributes import ATTRIBUTES, attribute
from .dataset import cache_dir, cached_renders, labels_array, observable_array
from .identity_net import DEFAULT_PATH, IDENTITY_ATTRIBUTES, ToyfacesIdentity, save_identity
from .renderer import NUM_PARAMS, RENDERER_VERSION, params_from_normal
from .train_classifier import _lr_at, augment, training_parser

__all__ = ["EDITABLE_ATTRIBUTES", "changed_normal", "identity_triplet_normals", "identity_triplets", "same_person", "identity_loss", "train", "main"]

_REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CKPT = _REPO_ROOT / "runs" / "toyfaces_identity" / "last.pt"
_COLUMNS = {a.name: i for i, a in enumerate(ATTRIBUTES)}
_ID_COLUMNS = [_COLUMNS[name] for name in IDENTITY_ATTRIBUTES]
EDITABLE_ATTRIBUTES = tuple(a.name for a in ATTRIBUTES if a.name not in IDENTITY_ATTRIBUTES)
_NUISANCE_COLUMNS = list(range(len(ATTRIBUTES), NUM_PARAMS))
UNCHANGED_FRACTION = 0.15  # positives that differ only in pose and light (and maybe the background)
BACKGROUND_FRACTION = 0.5  # positives that also get a new background
NON_FACE_ATTRIBUTES = ("background",)  # never an identity cue, nor a difference that `same_person` counts
TRIPLET_RECIPE = 2  # part of the cache file name: triplets of another recipe are not reused
WIDTH_TOLERANCE = 0.08  # face widths closer than this (in [0, 1]) count as the same person
_NORMAL = statistics.NormalDist()


def changed_normal(rng: np.random.Generator, name: str, u: float) -> float:
    """A normal that drives attribute `name` to a clearly different value than `u` does."""
    p = _NORMAL.cdf(u)
    if attribute(name).kind == "continuous":
        q = (p + rng.uniform(0.25, 0.75)) % 1.0
        return _NORMAL.inv_cdf(min(max(q, 1e-6), 1 - 1e-6))
    edges = np.cumsum(attribute(name).probs)[:-1]
    current = int(np.searchsorted(edges, p, side="right"))
    bounds = np.concatenate([[0.0], edges, [1.0]])
    choices = [k for k in range(len(bounds) - 1) if k != current]
    k = int(rng.choice(choices))
    q = rng.uniform(bounds[k], bounds[k + 1])
    return _NORMAL.inv_cdf(min(max(q, 1e-6), 1 - 1e-6))


def identity_triplet_normals(n: int, seed: int) -> np.ndarray:
    """[3, n, NUM_PARAMS] renderer normals: (a, b = a with at most one other attribute changed and a new pose,
    c = a with one identity attribute changed), see the module docstring."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, NUM_PARAMS))
    b, c = a.copy(), a.copy()
    b[:, _NUISANCE_COLUMNS] = rng.standard_normal((n, len(_NUISANCE_COLUMNS)))
    for i in range(n):
        if rng.random() >= UNCHANGED_FRACTION:
            name = EDITABLE_ATTRIBUTES[int(rng.integers(len(EDITABLE_ATTRIBUTES)))]
            b[i, _COLUMNS[name]] = changed_normal(rng, name, float(a[i, _COLUMNS[name]]))
        name = IDENTITY_ATTRIBUTES[int(rng.integers(len(IDENTITY_ATTRIBUTES)))]
        c[i, _COLUMNS[name]] = changed_normal(rng, name, float(a[i, _COLUMNS[name]]))
        if rng.random() < BACKGROUND_FRACTION:
            b[i, _COLUMNS["background"]] = changed_normal(rng, "background", float(a[i, _COLUMNS["background"]]))
    return np.stack([a, b, c])


def identity_triplets(n: int, seed: int, size: int = 64, workers: int = 2, use_cache: bool = True
                      ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Renders (or reads from the cache) n triplets.

    Returns:
        images uint8 [3, n, size, size, 3]; labels name -> [3, n]; visible name -> [3, n] bool.
    """
    u = identity_triplet_normals(n, seed)
    params = [params_from_normal(row) for row in u.reshape(-1, NUM_PARAMS)]
    path = cache_dir() / f"identity_v{RENDERER_VERSION}_t{TRIPLET_RECIPE}_n{n}_s{seed}_r{size}.npz"
    images = cached_renders(path if use_cache else None, u.reshape(-1, NUM_PARAMS), size, workers)
    images = images.reshape(3, n, size, size, 3)
    labels = {k: v.reshape(3, n) for k, v in labels_array(params).items()}
    visible = {k: v.reshape(3, n) for k, v in observable_array(params).items()}
    return images, labels, visible


def same_person(labels: dict[str, torch.Tensor], visible: dict[str, torch.Tensor]) -> torch.Tensor:
    """[M, M] bool: images that count as the same face: equal identity attributes (face widths within
    WIDTH_TOLERANCE; an eye colour hidden in either image matches any) and at most one other visible attribute
    different, the background not counted. labels/visible: attribute name -> [M]."""
    m = len(labels["skin_tone"])
    eq = torch.ones(m, m, dtype=torch.bool)
    for name in IDENTITY_ATTRIBUTES:
        v = labels[name]
        if attribute(name).kind == "continuous":
            eq &= (v[:, None] - v[None, :]).abs() < WIDTH_TOLERANCE
        elif name == "eye_color":
            seen = visible[name]
            eq &= (v[:, None] == v[None, :]) | ~seen[:, None] | ~seen[None, :]
        else:
            eq &= v[:, None] == v[None, :]
    differences = torch.zeros(m, m, dtype=torch.long)
    for name in EDITABLE_ATTRIBUTES:
        if name in NON_FACE_ATTRIBUTES:
            continue
        v, seen = labels[name], visible[name]
        differences += ((v[:, None] != v[None, :]) & seen[:, None] & seen[None, :]).long()
    return eq & (differences <= 1)


def identity_loss(emb: torch.Tensor, n: int, indistinct: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """InfoNCE for a batch laid out as [a (n), b (n), c (n)] unit embeddings [3n, D].

    Anchors are a and b; each one's positive is its partner; images in `indistinct` ([3n, 3n] bool, e.g.
    `same_person`) other than the partner are left out of the denominator.
    """
    sim = emb[: 2 * n] @ emb.t() / temperature  # [2n, 3n]
    idx = torch.arange(2 * n)
    partner = torch.cat([idx[n:], idx[:n]])
    drop = indistinct[: 2 * n].clone()
    drop[idx, partner] = False
    sim = sim.masked_fill(drop, float("-inf"))  # also removes each anchor itself
    return F.cross_entropy(sim, partner)


def train(steps: int = 1000, batch: int = 64, lr: float = 2e-3, n_triplets: int = 12000, seed: int = 0,
          ckpt_path: str | Path = DEFAULT_CKPT, out_path: str | Path | None = DEFAULT_PATH, resume: bool = False,
          ckpt_every: int = 50, workers: int = 2, log: Callable[[str], None] = print,
          data: tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]] | None = None
          ) -> tuple[ToyfacesIdentity, float]:
    """Trains the identity network; returns it and the final running loss (also written to out_path).

    Args:
        steps: optimiser steps; batch: people per step (3 renders each); lr: peak AdamW learning rate.
        n_triplets: cached triplets (`identity_triplets(n_triplets, seed=2000 + seed)`).
        seed: seeds the data, the initialisation, the batch order and the augmentations.
        ckpt_path: resumable checkpoint, written every `ckpt_every` steps and at the end.
        data: (images, labels, visible) as `identity_triplets` returns, instead of the cache (tests).
    """
    torch.manual_seed(seed)
    t0 = time.time()
    images, labels_np, visible_np = data if data is not None else identity_triplets(
        n_triplets, 2000 + seed, workers=workers)
    n = images.shape[1]
    log(f"data: {n} triplets ({time.time() - t0:.0f} s)")
    labels = {k: torch.as_tensor(v) for k, v in labels_np.items()}
    visible = {k: torch.as_tensor(v) for k, v in visible_np.items()}
    model = ToyfacesIdentity().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.02)
    step, running = 0, math.nan
    ckpt_path = Path(ckpt_path)
    if resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        step, running = int(ckpt["step"]), float(ckpt["running"])
        log(f"resumed from {ckpt_path} at step {step}")

    def save_ckpt() -> None:
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "running": running}, tmp)
        tmp.replace(ckpt_path)

    nn_module = torch.nn.Module.train  # the IdentityModel override pins eval mode; training needs BatchNorm
    nn_module(model, True)
    t_start = last_log = time.time()
    start_step, per_epoch = step, max(1, n // batch)
    while step < steps:
        epoch, k = divmod(step, per_epoch)
        idx = np.sort(np.random.default_rng([seed, epoch]).permutation(n)[k * batch:(k + 1) * batch])
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        img = augment(images[:, idx].reshape(-1, *images.shape[2:]), gen)  # [3B, 3, H, W] as a, b, c
        idx_t = torch.as_tensor(idx)
        indistinct = same_person({k2: v[:, idx_t].reshape(-1) for k2, v in labels.items()},
                                 {k2: v[:, idx_t].reshape(-1) for k2, v in visible.items()})
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup=min(100, steps // 10 + 1))
        loss = identity_loss(F.normalize(model.features(img), dim=-1), len(idx), indistinct)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        running = loss.item() if math.isnan(running) else 0.98 * running + 0.02 * loss.item()
        now = time.time()
        if now - last_log > 30 or step == steps or step == start_step + 1:
            rate = (step - start_step) / (now - t_start)
            log(f"step {step}/{steps} loss {running:.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"eta {(steps - step) / max(rate, 1e-9) / 60:.1f} min")
            last_log = now
        if step % ckpt_every == 0 or step == steps:
            save_ckpt()
    model.eval()
    if out_path is not None:
        save_identity(model, out_path, meta={"steps": steps, "batch": batch, "lr": lr, "n_triplets": n,
                                             "seed": seed, "train_seconds": round(time.time() - t_start)})
        log(f"saved {out_path}")
    return model, running


def main(argv: list[str] | None = None) -> None:
    ap = training_parser(__doc__, 1000, 64, 2e-3, DEFAULT_CKPT, DEFAULT_PATH, "faces per step (3 renders each)")
    ap.add_argument("--triplets", type=int, default=12000, help="cached training triplets")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    train(args.steps, args.batch, args.lr, args.triplets, args.seed, args.ckpt, args.out, args.resume,
          workers=args.workers, log=lambda s: print(s, flush=True))


if __name__ == "__main__":
    main()
