"""Train the embedded StyleGAN2 by distilling the renderer: G(z) ≈ render(params_of_z(z)).

The renderer is a deterministic function of K standard normals, so a standard StyleGAN2 can learn it by
regression (no discriminator). `params_of_z` reads the first K entries of the pixel-normalised z, which is what
the mapping network sees, so the target is an exact function of the network's input.

Learning the attribute thresholds and the drawing through one regression is slow (the pixel loss averages over
the faces a half-trained mapping confuses), so training splits the two:
- the synthesis network draws from w = code_encoder(attribute code), a small MLP of the one-hot attributes and
  the continuous parameters, so it always gets an unambiguous w;
- the mapping network regresses z → that w (MSE, the target detached);
- from 30% of the run on, a growing part of each batch (up to half) renders from mapping(z) end to end, so the
  synthesis also learns the w the mapping really produces.
The exported generator is a standard StyleGAN2 (mapping + synthesis); the encoder rides along in the export only
so that a later run can resume. Fresh renders every step, so there is no dataset to overfit. Seeded, resumable,
CPU or GPU (`--device cuda --workers N` renders batches in N processes):

    python -m styleclip.toyfaces.train_generator --steps 20000          # resumes from runs/ if present
    python -m styleclip.toyfaces.train_generator --export-only           # write assets/ from the last state
    python -m styleclip.toyfaces.train_generator --device cuda --workers 8 --batch 64 --minutes 8

Without runs/ (a fresh clone) it continues from the shipped assets/toyfaces/generator.pt and its recorded step;
`--restart` trains from scratch.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.generator import Generator, GeneratorConfig
from ..models.generator_io import save_generator
from .attributes import ATTRIBUTES
from .budget import StepBudget
from .classifier import to_img
from .prefetch import batches
from .renderer import FaceParams, render_batch
from .replay import replayed
from .z_layout import (
    CODE_DIM,
    attribute_code,
    code_alternatives,
    code_blocks,
    params_of_z,
    set_threshold_layers,
)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_STATE = REPO / "runs" / "toyfaces_generator" / "state.pt"
DEFAULT_EXPORT = REPO / "assets" / "toyfaces" / "generator.pt"
MAPPING_LR_BOOST = 100.0
CONFIG = GeneratorConfig(size=64, style_dim=128, n_mlp=4, channel_table=(256, 256, 192, 96, 48))
MIX_START, MIX_FULL, MIX_MAX = 0.3, 0.7, 0.5  # run fractions / batch share rendered through mapping(z)
# The small features the shipped generator blurs into their most common value (model card); --detail-weight
# weights their pixels in the loss. A pixel is theirs when changing them changes it by more than DETAIL_THRESHOLD.
DETAIL_ATTRIBUTES = ("eye_color", "mouth", "earrings", "lipstick", "blush", "nose", "facial_hair", "age")
DETAIL_THRESHOLD = 24


def detail_variant(params: FaceParams) -> FaceParams:
    """The same face with every DETAIL_ATTRIBUTES value moved to the next value of its attribute (cyclically)."""
    values = {a.name: a.values for a in ATTRIBUTES}
    return dataclasses.replace(params, **{
        name: values[name][(values[name].index(getattr(params, name)) + 1) % len(values[name])]
        for name in DETAIL_ATTRIBUTES})


def detail_mask(params: list[FaceParams], images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [B, size, size], 1 where a face's DETAIL_ATTRIBUTES show: the pixels that change when they change."""
    variants = render_batch([detail_variant(p) for p in params], size)
    change = np.abs(images.astype(np.int16) - variants.astype(np.int16)).max(axis=-1)
    return (change > DETAIL_THRESHOLD).astype(np.uint8)


def make_batch(seed: int, batch: int, size: int, step: int, detail: bool = False) -> tuple[np.ndarray, ...]:
    """The training batch of `step`: (z [B, D] float32, image [B, size, size, 3] uint8, code [B, CODE_DIM]), and
    with `detail` the detail mask [B, size, size] uint8 (one more render per face)."""
    z = np.random.default_rng([seed, step]).standard_normal((batch, CONFIG.style_dim)).astype(np.float32)
    params = [params_of_z(row) for row in z]
    codes = np.stack([attribute_code(p) for p in params])
    images = render_batch(params, size)
    return (z, images, codes, detail_mask(params, images, size)) if detail else (z, images, codes)


def pixel_weight(mask: torch.Tensor | None, detail_weight: float) -> torch.Tensor | None:
    """Detail mask uint8 [B, H, W] -> loss weight [B, 1, H, W]: 1, and 1 + detail_weight on the detail pixels
    and their neighbours (a 3x3 dilation, so the features' outlines count too). None without a mask."""
    if mask is None or not detail_weight:
        return None
    grown = F.max_pool2d(mask[:, None].float(), 3, stride=1, padding=1)
    return 1.0 + detail_weight * grown


class CodeEncoder(nn.Module):
    """Attribute code [N, CODE_DIM] → w [N, D], ending in the mapping network's own activation (leaky ReLU ×√2)
    so that the mapping can reach every w it is asked to regress."""

    def __init__(self, style_dim: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(CODE_DIM, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, style_dim))

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.net(code), 0.2) * math.sqrt(2)


def code_encoder_weights(ckpt: dict, source: str | Path) -> dict[str, torch.Tensor]:
    """The code encoder's float weights from an export of this trainer (`ckpt`, read from `source`)."""
    if "code_encoder" not in ckpt:
        raise SystemExit(f"{source} has no code encoder: it was not written by train_generator (or by an older "
                         "version of it; start over with --restart)")
    return {k: v.float() for k, v in ckpt["code_encoder"].items()}


def _edges(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return img[..., 1:, :] - img[..., :-1, :], img[..., :, 1:] - img[..., :, :-1]


def _edge_weights(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel weight [B, 1, H, W] -> the weights of the vertical and horizontal image-gradient terms (each the
    larger of its two pixels')."""
    return (torch.maximum(weight[..., 1:, :], weight[..., :-1, :]),
            torch.maximum(weight[..., :, 1:], weight[..., :, :-1]))


def distillation_loss(img: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """L1 on pixels, on image gradients (keeps edges sharp) and at half resolution (layout first); `weight`
    [B, 1, H, W] (see pixel_weight) weights the full-resolution terms per pixel."""
    pixel_w, edge_w = (1.0, (1.0, 1.0)) if weight is None else (weight, _edge_weights(weight))
    loss = ((img - target).abs() * pixel_w).mean()
    for a, b, w in zip(_edges(img), _edges(target), edge_w):
        loss = loss + ((a - b).abs() * w).mean()
    return loss + (F.avg_pool2d(img, 2) - F.avg_pool2d(target, 2)).abs().mean()


def mix_fraction(step: int, total: int) -> float:
    """Share of the batch rendered from mapping(z) rather than from the attribute code."""
    t = (step / max(1, total) - MIX_START) / (MIX_FULL - MIX_START)
    return MIX_MAX * min(1.0, max(0.0, t))


def encoder_margin_loss(encoder: CodeEncoder, code: torch.Tensor, margin: float,
                        w_code: torch.Tensor | None = None) -> torch.Tensor:
    """How far the code encoder falls short of separating each discrete attribute's values in w.

    For every code [N, CODE_DIM] and every other value of each discrete attribute, the distance between the two
    w over the spread of w in the batch (the norm of its per-dimension std, as bench_generator_latents reports
    it) should be at least `margin`; the loss is the mean squared shortfall as a fraction of the margin, so 0
    when every attribute is separated and near 1 for one the encoder ignores. The pixel loss alone moves w by
    1.5-5% of its spread for lipstick, blush and earrings (a few pixels each), too little for the synthesis to
    draw them (generator card, "GPU run of 2026-11-27")."""
    w_code = encoder(code) if w_code is None else w_code
    spread = w_code.std(0).norm()
    shortfalls = []
    for _, offset, width in code_blocks():
        moved = encoder(code_alternatives(code, offset, width))  # [N, width, D]
        dist = ((moved - w_code[:, None, :]) ** 2).sum(-1).add(1e-12).sqrt() / spread
        other = 1.0 - code[:, offset:offset + width]  # the code's own value is no alternative
        shortfalls.append(((F.relu(margin - dist) / margin) ** 2 * other).sum() / other.sum())
    return torch.stack(shortfalls).mean()


def training_loss(g: Generator, encoder: CodeEncoder, z: torch.Tensor, code: torch.Tensor, target: torch.Tensor,
                  mix: float, weight: torch.Tensor | None = None, margin: float = 0.0,
                  margin_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Pixel distillation of the synthesis (from the code's w, and from mapping(z) for a `mix` share of the
    batch) plus the mapping's regression onto the code's w, plus `margin_weight` x encoder_margin_loss."""
    w_code = encoder(code)
    w_map = g.mapping(z)
    n_map = int(round(mix * z.shape[0]))
    w = torch.cat([w_map[:n_map], w_code[n_map:]]) if n_map else w_code
    img = g.synthesis_w_plus(g.w_to_w_plus(w))
    pixel = distillation_loss(img, target, weight)
    mapping = F.mse_loss(w_map, w_code.detach())
    parts = {"pixel": pixel.item(), "mapping": mapping.item()}
    loss = pixel + mapping
    if margin_weight:
        separation = encoder_margin_loss(encoder, code, margin, w_code)
        loss, parts["margin"] = loss + margin_weight * separation, separation.item()
    return loss, parts


def lr_at(step: int, total: int, base: float, warmup: int = 500) -> float:
    """Linear warm-up, then cosine decay to 10% of `base`."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def make_state(seed: int, config: GeneratorConfig = CONFIG, sharpness: float = 0.0) -> dict:
    """A fresh training state; with `sharpness` > 0 the mapping's first two layers are threshold detectors for
    the z layout (see z_layout.set_threshold_layers), frozen."""
    torch.manual_seed(seed)
    g = Generator.from_config(config)
    if sharpness:
        set_threshold_layers(g.style, sharpness)
    encoder = CodeEncoder(config.style_dim)
    return {"g": g, "g_ema": copy.deepcopy(g).eval().requires_grad_(False), "encoder": encoder, "step": 0,
            "seed": seed, "opt": make_optimizer(g, encoder, 2e-3), "history": [], "sharpness": sharpness}


def make_optimizer(g: Generator, encoder: CodeEncoder, lr: float) -> torch.optim.Optimizer:
    """Adam with the mapping network at MAPPING_LR_BOOST x the base rate (frozen parameters left out).

    StyleGAN2's mapping layers scale their weights by lr_mul = 0.01 (stored weights are 100x larger), which slows
    their learning 100-fold, a choice made for adversarial stability. Regression has no such instability.
    """
    mapping = [p for name, p in g.named_parameters() if name.startswith("style.") and p.requires_grad]
    rest = [p for name, p in g.named_parameters() if not name.startswith("style.")]
    return torch.optim.Adam([{"params": rest, "lr_scale": 1.0}, {"params": mapping, "lr_scale": MAPPING_LR_BOOST},
                             {"params": list(encoder.parameters()), "lr_scale": 1.0}], lr=lr, betas=(0.9, 0.99))


def save_state(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"g": state["g"].state_dict(), "g_ema": state["g_ema"].state_dict(),
                "encoder": state["encoder"].state_dict(), "opt": state["opt"].state_dict(), "step": state["step"],
                "seed": state["seed"], "config": state["g"].config.to_dict(), "history": state["history"],
                "sharpness": state["sharpness"]}, tmp)
    tmp.replace(path)


def load_state(path: Path) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if "encoder" not in ckpt:
        raise SystemExit(f"{path} was written by the older end-to-end trainer; start over with --restart")
    state = make_state(int(ckpt["seed"]), GeneratorConfig.from_dict(ckpt["config"]), float(ckpt.get("sharpness", 0)))
    state["g"].load_state_dict(ckpt["g"])
    state["g_ema"].load_state_dict(ckpt["g_ema"])
    state["encoder"].load_state_dict(ckpt["encoder"])
    state["opt"].load_state_dict(ckpt["opt"])
    state["step"], state["history"] = int(ckpt["step"]), list(ckpt["history"])
    return state


def warm_start(export_path: Path, seed: int) -> dict:
    """A new session has no runs/ folder (it is not committed): continue from an fp16 export (with the code
    encoder stored beside it) and its recorded step. The optimizer moments restart."""
    ckpt = torch.load(export_path, map_location="cpu", weights_only=True)
    encoder_weights = code_encoder_weights(ckpt, export_path)
    state = make_state(seed, GeneratorConfig.from_dict(ckpt["config"]), float(ckpt.get("threshold_sharpness", 0)))
    weights = {k: v.float() for k, v in ckpt["g_ema"].items()}
    state["g"].load_state_dict(weights, strict=False)
    state["g_ema"].load_state_dict(weights, strict=False)
    state["encoder"].load_state_dict(encoder_weights)
    state["step"] = int(ckpt.get("train_step", 0))
    print(json.dumps({"warm_start": str(export_path), "step": state["step"], "n_mlp": state["g"].config.n_mlp,
                      "sharpness": state["sharpness"]}), flush=True)
    return state


@torch.no_grad()
def export(state: dict, path: Path, n_avg: int = 20_000) -> None:
    """Writes the EMA generator (fp16) with latent_avg, the mean w over n_avg z, and the code encoder."""
    g = state["g_ema"]
    z = torch.from_numpy(np.random.RandomState(123).randn(n_avg, g.style_dim).astype(np.float32))
    g.latent_avg.copy_(g.mapping(z.to(g.latent_avg.device)).mean(0))
    encoder = {k: v.detach().half().cpu() for k, v in state["encoder"].state_dict().items()}
    save_generator(g, path, half=True, extra={"train_step": state["step"], "code_encoder": encoder,
                                              "threshold_sharpness": state["sharpness"]})


def _load_or_start(args: argparse.Namespace) -> dict:
    state_path, init = Path(args.state), Path(args.init or args.export)
    if state_path.is_file() and not args.restart:
        return load_state(state_path)
    if init.is_file() and not args.restart:
        return warm_start(init, args.seed)
    return make_state(args.seed, sharpness=args.sharpness)


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    state = _load_or_start(args)
    if args.export_only:
        export(state, Path(args.export))
        return
    # With --reuse R each rendered batch serves R steps (a GPU outpaces the render workers); render index
    # step // R keeps the rendered faces a function of the step.
    renders = batches(functools.partial(make_batch, state["seed"], args.batch, state["g"].size,
                                        detail=args.detail_weight > 0),
                      state["step"] // args.reuse, args.workers)
    stream = replayed(renders, args.reuse, args.batch, state["seed"], state["step"], device)
    g, g_ema, encoder = state["g"].to(device), state["g_ema"].to(device), state["encoder"].to(device)
    if args.freeze_mapping:
        # End-to-end pixel gradients let the mapping drop the small attributes the synthesis does not draw yet
        # (benchmarks/bench_generator_latents.py); frozen, it keeps what fit_mapping gave it. Parameters
        # without a gradient are skipped by Adam.
        g.style.requires_grad_(False)
    opt = state["opt"]
    opt.load_state_dict(opt.state_dict())  # moves the moments onto the parameters' device
    state_path = Path(args.state)
    t_start, last_save, start_step = time.time(), time.time(), state["step"]
    running, parts = None, {}
    # Measure the rate only once the batches rendered ahead of the loop are used up.
    budget = StepBudget(args.steps, args.minutes, start_step, settle=20 + 2 * args.workers * args.reuse,
                        window=100)
    total = budget.total
    if total <= start_step:
        raise SystemExit(f"nothing to train: the run is at step {start_step} and --steps {args.steps} counts from "
                         f"step 0 (give e.g. --steps {start_step + 1000}, or --minutes)")
    while state["step"] < total:
        step = state["step"]
        total = budget.update(step)
        z, image, code, *mask = next(stream)
        target, weight = to_img(image), pixel_weight(mask[0] if mask else None, args.detail_weight)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, args.lr, args.warmup) * group.get("lr_scale", 1.0)
        if args.mode == "e2e":
            pixel = distillation_loss(g(z), target, weight)
            loss, parts_now = pixel, {"pixel": pixel.item()}
        else:
            loss, parts_now = training_loss(g, encoder, z, code, target, mix_fraction(step, total), weight,
                                            args.encoder_margin, args.margin_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(list(g_ema.parameters()), list(g.parameters()), 1 - decay)
        state["step"] = step + 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        parts = {k: round(v if k not in parts else 0.98 * parts[k] + 0.02 * v, 5) for k, v in parts_now.items()}
        if state["step"] % args.log_every == 0:
            rate = (state["step"] - start_step) / (time.time() - t_start)
            eta = (total - state["step"]) / max(rate, 1e-9)
            state["history"].append([state["step"], round(running, 5)])
            print(json.dumps({"step": state["step"], "loss": round(running, 5), **parts,
                              "lr": round(lr_at(step, total, args.lr, args.warmup), 6),
                              "steps_per_s": round(rate, 3), "eta_min": round(eta / 60, 1)}), flush=True)
        if time.time() - last_save > args.save_minutes * 60 or state["step"] >= total:
            save_state(state, state_path)
            export(state, Path(args.export), n_avg=5000)
            last_save = time.time()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--minutes", type=float, default=0.0,
                   help="time budget: sets --steps to what fits, from the rate after 60 steps (0 = use --steps)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ema", type=float, default=0.995, help="EMA decay of the exported weights")
    p.add_argument("--warmup", type=int, default=200, help="learning-rate warm-up steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=0, help="processes rendering batches ahead (0: inline)")
    p.add_argument("--reuse", type=int, default=1,
                   help="steps each rendered batch serves, drawn at random from a buffer of recent renders "
                        "(for a GPU that outpaces the render workers; 1 = every sample fresh)")
    p.add_argument("--state", default=str(DEFAULT_STATE), help="training state (resumed when present)")
    p.add_argument("--export", default=str(DEFAULT_EXPORT), help="where the shipped fp16 generator goes")
    p.add_argument("--init", default="", help="export to continue from when there is no state (default: --export)")
    p.add_argument("--save-minutes", type=float, default=5.0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--mode", choices=("code", "e2e"), default="code",
                   help="code: synthesis from the attribute code's w, mapping regressed onto it (first stage); "
                        "e2e: plain pixel distillation of G(z) (fine-tuning after fit_mapping)")
    p.add_argument("--sharpness", type=float, default=0.0,
                   help="fresh runs: build the mapping's first layers as threshold detectors of this sharpness")
    p.add_argument("--detail-weight", type=float, default=0.0,
                   help="extra loss weight on the pixels of the small features (DETAIL_ATTRIBUTES), found by "
                        "rendering each face again with them changed (0: off, one render per face)")
    p.add_argument("--encoder-margin", type=float, default=0.1,
                   help="code mode: the least distance in w, over w's spread, between a code's w and its w with "
                        "one discrete attribute changed (see encoder_margin_loss)")
    p.add_argument("--margin-weight", type=float, default=0.0,
                   help="code mode: weight of that margin term (0: off)")
    p.add_argument("--freeze-mapping", action="store_true",
                   help="train the synthesis only (for --mode e2e after fit_mapping)")
    p.add_argument("--restart", action="store_true", help="ignore an existing state")
    p.add_argument("--export-only", action="store_true")
    args = p.parse_args(argv)
    if args.margin_weight < 0 or args.encoder_margin <= 0:
        p.error(f"--margin-weight must be at least 0 and --encoder-margin above 0, got {args.margin_weight} and "
                f"{args.encoder_margin}")
    if args.reuse < 1 or args.detail_weight < 0:
        p.error(f"--reuse must be at least 1 and --detail-weight at least 0, got {args.reuse} and "
                f"{args.detail_weight}")
    train(args)


if __name__ == "__main__":
    main()
