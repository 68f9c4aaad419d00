"""Refits the embedded generator's mapping network z → w to its code encoder, without rendering anything.

During distillation (`train_generator`) the mapping learns z → encoder(attribute_code(params_of_z(z))) by MSE
beside the pixel loss, and it lags far behind the synthesis: attributes with a small footprint in w (lipstick,
eye colour, mouth) are the first it gets wrong. The target needs no image, only the attribute code, so this
stage fits the mapping alone on a large pool of (z, code) pairs, cheaply on a CPU:

    python -m styleclip.toyfaces.fit_mapping --generator assets/toyfaces/generator.pt --steps 20000

The loss balances attributes: besides the MSE to the target w (in units of w's variance), every attribute's
value must be recoverable from w_map, checked against the encoder's w for each of that attribute's values with
the rest of the code held fixed (a softmax over negative squared distances scaled by the spread of that
attribute's alternatives, i.e. nearest-code decoding at a per-attribute temperature), so an
attribute with a small footprint counts as much as one with a large one. `agreement` in the log is that decoding's
accuracy per attribute on held-out z.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..models.generator import Generator, GeneratorConfig
from ..models.generator_io import load_generator, save_generator
from .train_generator import CONFIG, CodeEncoder, code_encoder_weights
from .z_layout import attribute_code, code_alternatives, code_blocks, params_of_z, set_threshold_layers


def code_pool(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(z [n, D] float32, code [n, CODE_DIM] float32) for z ~ N(0, I) from default_rng(seed)."""
    z = np.random.default_rng(seed).standard_normal((n, CONFIG.style_dim)).astype(np.float32)
    return z, np.stack([attribute_code(params_of_z(row)) for row in z])


def decoding_logits(encoder: CodeEncoder, w: torch.Tensor, code: torch.Tensor, offset: int, width: int,
                    temperature: float | None = None) -> torch.Tensor:
    """[N, width]: −|w − encoder(alternative)|² for each value of one attribute, divided by `temperature` times
    the spread of the alternatives (their mean squared distance to their centre), so that an attribute with a
    small footprint in w is decoded as sharply as one with a large footprint; None leaves the distances raw."""
    with torch.no_grad():
        candidates = encoder(code_alternatives(code, offset, width))  # [N, width, D]
    dist = ((w[:, None, :] - candidates) ** 2).sum(-1)
    if temperature is None:
        return -dist
    with torch.no_grad():
        spread = ((candidates - candidates.mean(1, keepdim=True)) ** 2).sum(-1).mean(1, keepdim=True)
    return -dist / (temperature * spread + 1e-12)


def mapping_loss(encoder: CodeEncoder, w_map: torch.Tensor, code: torch.Tensor, w_var: float,
                 blocks: list[tuple[str, int, int]], temperature: float = 0.25) -> torch.Tensor:
    """Normalised MSE to the code's w plus the mean decoding cross-entropy over the discrete attributes."""
    with torch.no_grad():
        w_code = encoder(code)
    loss = F.mse_loss(w_map, w_code) / w_var
    for _, offset, width in blocks:
        logits = decoding_logits(encoder, w_map, code, offset, width, temperature)
        loss = loss + F.cross_entropy(logits, code[:, offset:offset + width].argmax(1)) / len(blocks)
    return loss


@torch.no_grad()
def agreement(mapping, encoder: CodeEncoder, z: torch.Tensor, code: torch.Tensor) -> dict[str, float]:
    """Per discrete attribute, the share of z whose w_map decodes to the attribute value of z's face."""
    w_map = mapping(z)
    return {name: round(float((decoding_logits(encoder, w_map, code, offset, width).argmax(1)
                               == code[:, offset:offset + width].argmax(1)).float().mean()), 4)
            for name, offset, width in code_blocks()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generator", required=True, help="export with a code encoder (read and rewritten)")
    p.add_argument("--out", default="", help="where to write (default: --generator)")
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam rate in effective (lr_mul-scaled) units")
    p.add_argument("--pool", type=int, default=200_000, help="(z, code) training pairs")
    p.add_argument("--n-mlp", type=int, default=0, help="rebuild the mapping with this many layers (0: keep)")
    p.add_argument("--sharpness", type=float, default=0.0,
                   help="build the first layer as threshold detectors of this sharpness (0: learn it)")
    p.add_argument("--temperature", type=float, default=0.25, help="decoding softmax temperature (see the loss)")
    p.add_argument("--fresh", action="store_true", help="start the mapping from a new initialisation")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="e.g. cuda: the fit renders nothing, so it runs there whole")
    p.add_argument("--log-every", type=int, default=1000)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    ckpt = torch.load(args.generator, map_location="cpu", weights_only=True)
    encoder_weights = code_encoder_weights(ckpt, args.generator)
    g = load_generator(args.generator).float().train()
    encoder = CodeEncoder(g.style_dim)
    encoder.load_state_dict(encoder_weights)
    encoder.requires_grad_(False)
    lr_mul = g.config.lr_mlp
    if args.fresh or args.n_mlp and args.n_mlp != g.config.n_mlp:
        n_mlp = args.n_mlp or g.config.n_mlp
        rebuilt = Generator.from_config(GeneratorConfig.from_dict(g.config.to_dict() | {"n_mlp": n_mlp}))
        rebuilt.load_state_dict({k: v for k, v in g.state_dict().items() if not k.startswith("style.")},
                                strict=False)  # a fresh mapping of the new depth, the same synthesis
        g = rebuilt.train()
    device = torch.device(args.device)
    encoder = encoder.to(device)
    mapping = g.style.requires_grad_(True).to(device)
    params = list(mapping.parameters())
    if args.sharpness:
        units = set_threshold_layers(mapping, args.sharpness)
        params = [p for p in mapping.parameters() if p.requires_grad]
        print(json.dumps({"threshold_units": units, "sharpness": args.sharpness}), flush=True)

    t0 = time.time()
    z_np, code_np = code_pool(args.pool, args.seed)
    z_val, code_val = (torch.from_numpy(a).to(device) for a in code_pool(4096, args.seed + 1))
    z_all, code_all = torch.from_numpy(z_np).to(device), torch.from_numpy(code_np).to(device)
    with torch.no_grad():
        w_var = float(encoder(code_all[:20_000]).var(0).mean())
    print(json.dumps({"pool": args.pool, "pool_s": round(time.time() - t0, 1), "w_var": round(w_var, 5),
                      "agreement_start": agreement(mapping, encoder, z_val, code_val)}), flush=True)
    opt = torch.optim.Adam(params, lr=args.lr / lr_mul, betas=(0.9, 0.99))
    blocks, rng, t0 = code_blocks(), np.random.default_rng(args.seed), time.time()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = args.lr / lr_mul * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        idx = torch.from_numpy(rng.integers(0, args.pool, args.batch)).to(device)
        loss = mapping_loss(encoder, mapping(z_all[idx]), code_all[idx], w_var, blocks, args.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            agree = agreement(mapping, encoder, z_val, code_val)
            print(json.dumps({"step": step + 1, "loss": round(loss.item(), 5), "min_agreement": min(agree.values()),
                              "mean_agreement": round(float(np.mean(list(agree.values()))), 4),
                              "s": round(time.time() - t0, 1)}), flush=True)
    agree = agreement(mapping, encoder, z_val, code_val)
    print(json.dumps({"agreement": agree}), flush=True)
    g = g.cpu().eval().requires_grad_(False)
    z = torch.from_numpy(np.random.RandomState(123).randn(20_000, g.style_dim).astype(np.float32))
    with torch.no_grad():
        g.latent_avg.copy_(g.mapping(z).mean(0))
    extra = {k: v for k, v in ckpt.items() if k not in ("g_ema", "latent_avg", "config")}
    extra["mapping_fit"] = {"steps": args.steps, "pool": args.pool, "seed": args.seed, "agreement": agree}
    extra["threshold_sharpness"] = float(args.sharpness)
    save_generator(g, args.out or args.generator, half=True, extra=extra)


if __name__ == "__main__":
    main()
