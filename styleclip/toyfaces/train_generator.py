"""Train the embedded StyleGAN2 by distilling the renderer: G(z) ≈ render(params_from_normal(z[:K])).

The renderer is a deterministic function of K standard normals, so a standard StyleGAN2 can learn it by plain
regression (no discriminator): the mapping network learns to pick the attributes from z, the synthesis network
learns to draw them. Fresh renders every step, so there is no dataset to overfit. Seeded and resumable:

    python -m styleclip.toyfaces.train_generator --steps 20000          # resumes from runs/ if present
    python -m styleclip.toyfaces.train_generator --export-only           # write assets/ from the last state

Without runs/ (a fresh clone) it continues from the shipped assets/toyfaces/generator.pt and its recorded step;
`--restart` trains from scratch.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models.generator import Generator, GeneratorConfig
from ..models.generator_io import save_generator
from .renderer import NUM_PARAMS, params_from_normal, render_batch

REPO = Path(__file__).resolve().parents[2]
DEFAULT_STATE = REPO / "runs" / "toyfaces_generator" / "state.pt"
DEFAULT_EXPORT = REPO / "assets" / "toyfaces" / "generator.pt"
MAPPING_LR_BOOST = 100.0
CONFIG = GeneratorConfig(size=64, style_dim=128, n_mlp=4, channel_table=(256, 256, 192, 96, 48))


def target_batch(z: np.ndarray, size: int) -> torch.Tensor:
    """z: [B, style_dim] → the renderer's img [B, 3, size, size] for params_from_normal(z[:, :K])."""
    images = render_batch([params_from_normal(row[:NUM_PARAMS]) for row in z], size)
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def _edges(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return img[..., 1:, :] - img[..., :-1, :], img[..., :, 1:] - img[..., :, :-1]


def distillation_loss(img: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 on pixels, on image gradients (keeps edges sharp) and at half resolution (layout first)."""
    loss = (img - target).abs().mean()
    for a, b in zip(_edges(img), _edges(target)):
        loss = loss + (a - b).abs().mean()
    return loss + (F.avg_pool2d(img, 2) - F.avg_pool2d(target, 2)).abs().mean()


def lr_at(step: int, total: int, base: float, warmup: int = 500) -> float:
    """Linear warm-up, then cosine decay to 10% of `base`."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def make_state(seed: int) -> dict:
    torch.manual_seed(seed)
    g = Generator.from_config(CONFIG)
    return {"g": g, "g_ema": copy.deepcopy(g).eval().requires_grad_(False), "step": 0, "seed": seed,
            "opt": make_optimizer(g, 2e-3), "history": []}


def make_optimizer(g: Generator, lr: float) -> torch.optim.Optimizer:
    """Adam with the mapping network at MAPPING_LR_BOOST x the base rate.

    StyleGAN2's mapping layers scale their weights by lr_mul = 0.01 (stored weights are 100x larger), which slows
    their learning 100-fold, a choice made for adversarial stability. Regression has no such instability, and
    every bit of attribute information must pass through the mapping, so it learns at the synthesis' pace.
    """
    mapping = [p for name, p in g.named_parameters() if name.startswith("style.")]
    rest = [p for name, p in g.named_parameters() if not name.startswith("style.")]
    return torch.optim.Adam([{"params": rest, "lr_scale": 1.0}, {"params": mapping, "lr_scale": MAPPING_LR_BOOST}],
                            lr=lr, betas=(0.9, 0.99))


def save_state(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"g": state["g"].state_dict(), "g_ema": state["g_ema"].state_dict(),
                "opt": state["opt"].state_dict(), "step": state["step"], "seed": state["seed"],
                "config": CONFIG.to_dict(), "history": state["history"]}, tmp)
    tmp.replace(path)


def load_state(path: Path) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = make_state(int(ckpt["seed"]))
    state["g"].load_state_dict(ckpt["g"])
    state["g_ema"].load_state_dict(ckpt["g_ema"])
    state["opt"].load_state_dict(ckpt["opt"])
    state["step"], state["history"] = int(ckpt["step"]), list(ckpt["history"])
    return state


def warm_start(export_path: Path, seed: int) -> dict:
    """A new session has no runs/ folder (it is not committed): continue from the shipped fp16 weights and their
    recorded step. The optimizer moments restart; the schedule continues where it was."""
    ckpt = torch.load(export_path, map_location="cpu", weights_only=True)
    state = make_state(seed)
    weights = {k: v.float() for k, v in ckpt["g_ema"].items()}
    state["g"].load_state_dict(weights, strict=False)
    state["g_ema"].load_state_dict(weights, strict=False)
    state["step"] = int(ckpt.get("train_step", 0))
    print(json.dumps({"warm_start": str(export_path), "step": state["step"]}), flush=True)
    return state


@torch.no_grad()
def export(state: dict, path: Path, n_avg: int = 20_000) -> None:
    """Writes the EMA generator (fp16) with latent_avg, the mean w over n_avg z."""
    g = state["g_ema"]
    z = torch.from_numpy(np.random.RandomState(123).randn(n_avg, CONFIG.style_dim).astype(np.float32))
    g.latent_avg.copy_(g.mapping(z).mean(0))
    save_generator(g, path, half=True, extra={"train_step": state["step"]})


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    state_path = Path(args.state)
    if state_path.is_file() and not args.restart:
        state = load_state(state_path)
    elif Path(args.export).is_file() and not args.restart:
        state = warm_start(Path(args.export), args.seed)
    else:
        state = make_state(args.seed)
    if args.export_only:
        export(state, Path(args.export))
        return
    g, g_ema, opt = state["g"], state["g_ema"], state["opt"]
    t_start, last_save, start_step = time.time(), time.time(), state["step"]
    running = None
    while state["step"] < args.steps:
        step = state["step"]
        rng = np.random.default_rng([state["seed"], step])
        z = rng.standard_normal((args.batch, CONFIG.style_dim)).astype(np.float32)
        target = target_batch(z, CONFIG.size)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup) * group.get("lr_scale", 1.0)
        loss = distillation_loss(g(torch.from_numpy(z)), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for p_ema, p in zip(g_ema.parameters(), g.parameters()):
                p_ema.lerp_(p, 1 - decay)
        state["step"] = step + 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if state["step"] % args.log_every == 0:
            rate = (state["step"] - start_step) / (time.time() - t_start)
            eta = (args.steps - state["step"]) / max(rate, 1e-9)
            state["history"].append([state["step"], round(running, 5)])
            print(json.dumps({"step": state["step"], "loss": round(running, 5), "lr": round(lr_at(step, args.steps,
                  args.lr, args.warmup), 6), "steps_per_s": round(rate, 3), "eta_min": round(eta / 60, 1)}), flush=True)
        if time.time() - last_save > args.save_minutes * 60 or state["step"] == args.steps:
            save_state(state, state_path)
            export(state, Path(args.export), n_avg=5000)
            last_save = time.time()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ema", type=float, default=0.995, help="EMA decay of the exported weights")
    p.add_argument("--warmup", type=int, default=200, help="learning-rate warm-up steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--state", default=str(DEFAULT_STATE), help="training state (resumed when present)")
    p.add_argument("--export", default=str(DEFAULT_EXPORT), help="where the shipped fp16 generator goes")
    p.add_argument("--save-minutes", type=float, default=5.0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--restart", action="store_true", help="ignore an existing state")
    p.add_argument("--export-only", action="store_true")
    train(p.parse_args(argv))


if __name__ == "__main__":
    main()
