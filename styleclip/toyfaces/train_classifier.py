"""Trains the toyfaces attribute classifier on cached renders with degradations (blur, noise, JPEG, jitter).

Usage:
    python -m styleclip.toyfaces.train_classifier           # full run (~30 min on one CPU thread)
    python -m styleclip.toyfaces.train_classifier --resume  # continue from runs/toyfaces_classifier/last.pt
"""

from __future__ import annotations

import argparse
import io
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from styleclip.toyfaces.classifier import DEFAULT_PATH, AttributeClassifier, save_classifier, to_img
from styleclip.toyfaces.dataset import make_dataset, observable_array

__all__ = ["augment", "classifier_loss", "train", "training_parser", "main"]

_REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CKPT = _REPO_ROOT / "runs" / "toyfaces_classifier" / "last.pt"


# ----------------------------------------------------------------------------------------------------------
# Augmentations: make the classifier read generator outputs (slightly blurry, noisy, colour-shifted) reliably.


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _gaussian_blur(img: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample separable Gaussian blur; img [N, C, H, W], sigma [N] (0 leaves a sample unchanged)."""
    n, c, h, w = img.shape
    r = 3
    t = torch.arange(-r, r + 1, dtype=img.dtype)
    k = torch.exp(-0.5 * (t[None] / sigma.clamp_min(1e-3)[:, None]) ** 2)  # [N, 2r+1]
    k = k / k.sum(dim=1, keepdim=True)
    k = k.repeat_interleave(c, dim=0)  # [N*C, 2r+1]
    x = F.pad(img.reshape(1, n * c, h, w), (r, r, r, r), mode="replicate")
    x = F.conv2d(x, k[:, None, None, :], groups=n * c)
    x = F.conv2d(x, k[:, None, :, None], groups=n * c)
    return x.reshape(n, c, h, w)


def augment(images: np.ndarray, gen: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Random degradations of a batch; returns img float [N, 3, H, W] in [-1, 1].

    Args:
        images: uint8 [N, H, W, 3].
        gen: torch generator (all randomness comes from it, so a run is reproducible and resumable).
        strength: 0 returns the clean images; 1 is the training setting.
    """
    n, h, w, _ = images.shape

    def u(lo: float, hi: float, size: int = n) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(size, generator=gen)

    def chance(p: float) -> torch.Tensor:
        return torch.rand(n, generator=gen) < p * strength

    images = images.copy()
    jpeg = chance(0.25)
    q = torch.randint(35, 90, (n,), generator=gen)
    for i in torch.nonzero(jpeg).flatten().tolist():
        images[i] = _jpeg(images[i], int(q[i]))
    img = to_img(images)

    # small translations with edge padding
    p = 3
    shifts = torch.randint(-p, p + 1, (n, 2), generator=gen) * chance(0.7)[:, None]
    padded = F.pad(img, (p, p, p, p), mode="replicate")
    img = torch.stack(
        [padded[i, :, p + dy : p + dy + h, p + dx : p + dx + w] for i, (dx, dy) in enumerate(shifts.tolist())]
    )

    # low-pass: down to 40-56 px and back up (what a blurry generator or resampling does)
    lowpass = chance(0.2)
    if lowpass.any():
        s = int(torch.randint(40, 57, (1,), generator=gen))
        sub = img[lowpass]
        sub = F.interpolate(sub, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        img[lowpass] = F.interpolate(sub, size=(h, w), mode="bilinear", align_corners=False)

    sigma = u(0.3, 1.0) * chance(0.45)
    img = _gaussian_blur(img, sigma)

    # colour jitter: brightness, contrast, saturation (mild: colours are labels here)
    jitter = chance(0.6)[:, None, None, None]
    b = u(-0.08, 0.08)[:, None, None, None]
    ct = u(0.9, 1.1)[:, None, None, None]
    sat = u(0.88, 1.12)[:, None, None, None]
    mean = img.mean(dim=(1, 2, 3), keepdim=True)
    gray = img.mean(dim=1, keepdim=True)
    jittered = (gray + (img - gray) * sat - mean) * ct + mean + b
    img = torch.where(jitter, jittered, img)

    noise = u(0.0, 0.05) * chance(0.4)
    img = img + noise[:, None, None, None] * torch.randn(img.shape, generator=gen)
    return img.clamp(-1, 1).contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------------------------------------
# Loss and training.


def classifier_loss(
    model: AttributeClassifier,
    out: dict[str, torch.Tensor],
    labels: dict[str, torch.Tensor],
    visible: dict[str, torch.Tensor],
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over heads of masked cross-entropy (discrete) and 10 x L1 (continuous); also per-head values."""
    total = torch.zeros(())
    parts = {}
    for name, kind, _ in model.attributes:
        mask = visible[name]
        if not mask.any():
            continue
        if kind == "discrete":
            loss = F.cross_entropy(out[name][mask], labels[name][mask])
        else:
            loss = 10.0 * (out[name][mask].sigmoid() - labels[name][mask]).abs().mean()
        parts[name] = loss.item()
        total = total + loss
    return total, parts


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def train(
    steps: int = 2400,
    batch: int = 128,
    lr: float = 2e-3,
    train_n: int = 100_000,
    seed: int = 0,
    ckpt_path: str | Path = DEFAULT_CKPT,
    out_path: str | Path = DEFAULT_PATH,
    resume: bool = False,
    ckpt_every_s: float = 180.0,
    log: Callable[[str], None] = print,
    workers: int = 2,
    data: tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]] | None = None,
) -> AttributeClassifier:
    """Trains a classifier; returns it (also written to out_path as fp16 state_dict + config).

    Args:
        steps: optimiser steps.
        batch: images per step.
        lr: peak AdamW learning rate (linear warm-up, cosine decay).
        train_n: cached training renders (make_dataset(train_n, seed=1000 + seed, size=64)).
        seed: seeds the data, the initialisation, the batch order and the augmentations.
        ckpt_path: resumable checkpoint (model, optimiser, step), written every ckpt_every_s seconds.
        out_path: where the final fp16 weights go (None to skip).
        resume: continue from ckpt_path when it exists.
        log: progress sink.
        workers: rendering processes for the dataset cache.
        data: (images, labels, visible) to use instead of the cached renders (tests).
    """
    torch.manual_seed(seed)
    if data is None:
        t0 = time.time()
        images, labels_np, params = make_dataset(train_n, seed=1000 + seed, size=64, workers=workers)
        visible_np = observable_array(params)
        log(f"data: {len(images)} renders at 64 px ({time.time() - t0:.0f} s)")
    else:
        images, labels_np, visible_np = data
    n = len(images)
    labels = {k: torch.as_tensor(v) for k, v in labels_np.items()}
    visible = {k: torch.as_tensor(v) for k, v in visible_np.items()}

    model = AttributeClassifier().to(memory_format=torch.channels_last)
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.02}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    step = 0
    ckpt_path = Path(ckpt_path)
    if resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        step = int(ckpt["step"])
        log(f"resumed from {ckpt_path} at step {step}")

    def save_ckpt() -> None:
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, tmp)
        tmp.replace(ckpt_path)

    steps_per_epoch = max(1, n // batch)
    model.train()
    t_start = last_ckpt = last_log = time.time()
    start_step = step
    running: dict[str, float] = {}
    while step < steps:
        epoch, k = divmod(step, steps_per_epoch)
        perm = np.random.default_rng([seed, epoch]).permutation(n)  # batch order is a function of the step
        idx = np.sort(perm[k * batch : (k + 1) * batch])
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        img = augment(images[idx], gen)
        idx_t = torch.as_tensor(idx)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup=min(100, steps // 10 + 1))
        out = model(img)
        loss, parts = classifier_loss(
            model, out, {a: v[idx_t] for a, v in labels.items()}, {a: v[idx_t] for a, v in visible.items()}
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        for name, v in parts.items():
            running[name] = 0.98 * running.get(name, v) + 0.02 * v
        running["total"] = 0.98 * running.get("total", loss.item()) + 0.02 * loss.item()
        now = time.time()
        if now - last_log > 30 or step == steps or step == start_step + 1:
            rate = (step - start_step) / (now - t_start)
            eta = (steps - step) / max(rate, 1e-9)
            worst = sorted(((v, k) for k, v in running.items() if k != "total"), reverse=True)[:3]
            log(
                f"step {step}/{steps} loss {running['total']:.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"{rate * batch:.0f} img/s eta {eta / 60:.1f} min; worst: "
                + ", ".join(f"{k} {v:.3f}" for v, k in worst)
            )
            last_log = now
        if now - last_ckpt > ckpt_every_s:
            save_ckpt()
            last_ckpt = now
    save_ckpt()
    model.eval()
    if out_path is not None:
        save_classifier(
            model,
            out_path,
            meta={
                "steps": steps,
                "batch": batch,
                "lr": lr,
                "train_n": n,
                "seed": seed,
                "train_seconds": round(time.time() - t_start),
            },
        )
        log(f"saved {out_path}")
    return model


def training_parser(doc: str | None, steps: int, batch: int, lr: float, ckpt: Path, out: Path,
                    batch_help: str | None = None) -> argparse.ArgumentParser:
    """The options every toyfaces CNN trainer shares: steps, batch, lr, seed, workers, threads, ckpt, out, resume."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--batch", type=int, default=batch, help=batch_help)
    ap.add_argument("--lr", type=float, default=lr)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2, help="processes that render the dataset cache")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training")
    ap.add_argument("--ckpt", default=str(ckpt))
    ap.add_argument("--out", default=str(out))
    ap.add_argument("--resume", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = training_parser(__doc__, 2400, 128, 2e-3, DEFAULT_CKPT, DEFAULT_PATH)
    ap.add_argument("--train-n", type=int, default=100_000, help="cached training renders")
    ap.add_argument(
        "--eval-n", type=int, default=2000, help="fresh held-out renders to score at the end (0: skip)"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = train(
        args.steps,
        args.batch,
        args.lr,
        args.train_n,
        args.seed,
        args.ckpt,
        args.out,
        args.resume,
        workers=args.workers,
        log=lambda s: print(s, flush=True),
    )
    if args.eval_n:
        from styleclip.toyfaces.eval_classifier import evaluate, format_table

        print(format_table(evaluate(model, args.eval_n)), flush=True)


if __name__ == "__main__":
    main()
