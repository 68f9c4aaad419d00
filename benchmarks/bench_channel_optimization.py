"""Experiment: latent optimization restricted to a global direction's channels, started from the global edit.

Plain latent optimization reaches a lower CLIP loss than the true edit by shifting colour and light (BENCHMARKS.md,
"Optimization: the objective's minimum is not the edit"). The channel mapper shows that the global direction's
channels plus the next most relevant ones, moved per face with a directional loss, make the edit and keep the rest.
This optimizes those channels for one face at a time, no network: Δs = σ ⊙ u on the K channels, u starting at the
global edit (alpha · Δs_global / σ), Adam with the official schedule on CLIP loss + directional loss + identity loss
+ the squared change of u from its start. Then the edit benchmark reads the results.

    python benchmarks/bench_channel_optimization.py [--steps 40] [--lr 0.1] [--seeds 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_channel_mapper import add_common_arguments, report_edits, selected_specs  # noqa: E402

from styleclip.engines.channel_mapper import channels_for_pair  # noqa: E402
from styleclip.engines.clip_losses import directional_loss, text_change_direction  # noqa: E402
from styleclip.engines.optimization import lr_schedule  # noqa: E402
from styleclip.engines.precompute import clip_render_resolution  # noqa: E402
from styleclip.evaluation import EditSpec  # noqa: E402
from styleclip.models.identity import identity_for_bundle  # noqa: E402
from styleclip.studio import Studio  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, seeds=20, extra=512)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--lr", type=float, default=0.1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    specs = selected_specs(args)
    loaded = Studio("cpu").model("toyfaces")
    g, clip, engine = loaded.generator, loaded.clip, loaded.engine()
    identity = identity_for_bundle("toyfaces") if args.id_weight > 0 else None
    res = clip_render_resolution(g, clip)
    setup = {}
    for spec in specs:
        positions, base, scale, _ = channels_for_pair(engine, spec.neutral, spec.target, args.alpha, args.extra,
                                                      loaded.bundle.auto_beta_floor)
        setup[spec.name] = (positions, base / scale, scale, clip.encode_text([spec.target]).detach(),
                            text_change_direction(clip, spec.neutral, spec.target).detach())
    t_total = [0.0]

    def edit_fn(spec: EditSpec, seed: int) -> torch.Tensor:
        t0 = time.perf_counter()
        positions, u0, scale, target, change = setup[spec.name]
        with torch.no_grad():
            s_src = g.s_to_flat(g.w_plus_to_s(loaded.source_w_plus(seed))).clone()
            img_src = g.synthesis(g.flat_to_s(s_src), until_resolution=res)
            emb_src = clip.encode_image(img_src)
        u = u0.clone()[None].requires_grad_(True)
        opt = torch.optim.Adam([u], lr=args.lr)

        def render(until=None):
            s = s_src.clone()
            s[:, positions] = s[:, positions] + scale * u
            return g.synthesis(g.flat_to_s(s), until_resolution=until)

        for i in range(args.steps):
            for group in opt.param_groups:
                group["lr"] = lr_schedule(i / args.steps, args.lr)
            img = render(res)
            emb = clip.encode_image(img)
            loss = ((1 - emb @ target.t()).mean() + args.dir_weight * directional_loss(emb, emb_src, change).mean()
                    + args.reg_weight * (u - u0).square().mean())
            if identity is not None:
                loss = loss + args.id_weight * identity.loss(img, img_src).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            out = render()
        t_total[0] += time.perf_counter() - t0
        return out

    report_edits(loaded, edit_fn, specs, args, "channel optimization", ("optimize_s", t_total[0]))

if __name__ == "__main__":
    main()
