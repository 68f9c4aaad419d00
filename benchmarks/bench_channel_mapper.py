"""Experiment: a per-face mapper restricted to the global direction's style channels.

Global directions move few, well-chosen S channels (high preservation) by the same amount on every face, so an
absolute target ("purple background", "black hair") is reached only from nearby starting values. A latent mapper
adapts to each face but moves all of W+ (and the fragile attributes with it). This trains, per text pair, a small
network that moves only the channels the global direction selects at auto-beta (plus the `--extra` next most
relevant ones): Δs = alpha · Δs_global + σ ⊙ net(w), with net's last layer zero at the start, so training starts
from the global edit (the engine's `ChannelMapper`; this script keeps its own loop for the objective's variants). Objective: CLIP loss toward the target, StyleGAN-NADA's directional loss, the identity
network's loss, and the squared residual in σ units (the global edit is the prior). Then the edit benchmark reads
the results (seeds never used in training).

    python benchmarks/bench_channel_mapper.py [--edits "hat,black hair"] [--steps 300] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from styleclip.engines.channel_mapper import (  # noqa: E402
    ChannelMapper,
    ChannelMapperConfig,
    apply_channel_mapper,
    channels_for_pair,
)
from styleclip.engines.clip_losses import directional_loss, text_change_direction  # noqa: E402
from styleclip.engines.precompute import clip_render_resolution  # noqa: E402
from styleclip.evaluation import BENCHMARK_EDITS, HELDOUT_EDITS, EditSpec, evaluate_edits, format_report  # noqa: E402
from styleclip.models.identity import identity_for_bundle  # noqa: E402
from styleclip.studio import Studio  # noqa: E402
from styleclip.toyfaces.classifier import load_classifier  # noqa: E402

EDIT_SETS = {"benchmark": BENCHMARK_EDITS, "heldout": HELDOUT_EDITS}


# Attribute texts whose CLIP reading an edit of something else should leave alone (the face's fragile parts first).
PROBES = ("smiling face", "frowning face", "face with an open mouth", "face with closed eyes", "face with blue eyes",
          "face with brown eyes", "face with green eyes", "face with black hair", "face with blond hair",
          "face with red hair", "face with gray hair", "face with brown hair", "face with glasses",
          "face with sunglasses", "face with a hat", "face with a beard", "face with a moustache",
          "face with lipstick", "face with earrings", "bald face", "face with long hair", "old face")


def probe_directions(clip, change: torch.Tensor, probes: str, max_cos: float = 0.5) -> torch.Tensor:
    """[M, E] unit text changes face → probe, with the target's change [1, E] projected out; probes whose change
    is within acos(max_cos) of the target's are dropped (they describe the edit itself)."""
    texts = [t.strip() for t in probes.split(";") if t.strip()] if probes else list(PROBES)
    rows = []
    for text in texts:
        d = text_change_direction(clip, "face", text)
        cos = float(d @ change.t())
        if abs(cos) < max_cos:
            d = d - cos * change
            rows.append(d / d.norm())
    return torch.cat(rows).detach()


def train(loaded, spec: EditSpec, args, identity) -> ChannelMapper:
    g, clip = loaded.generator, loaded.clip
    positions, base, std, _ = channels_for_pair(loaded.engine(), spec.neutral, spec.target, args.alpha, args.extra,
                                                loaded.bundle.auto_beta_floor)
    mapper = ChannelMapper(ChannelMapperConfig(g.style_dim, g.n_latent, g.s_dim, positions.numel()), positions, base,
                           std)
    opt = torch.optim.Adam(mapper.parameters(), lr=args.lr)
    if args.templates:  # the prompt ensemble global directions use for Δt
        target = clip.encode_text_templates(spec.target)[None].detach()
        change = clip.encode_text_templates(spec.target) - clip.encode_text_templates(spec.neutral)
        change = (change / change.norm())[None].detach()
    else:
        target = clip.encode_text([spec.target]).detach()
        change = text_change_direction(clip, spec.neutral, spec.target).detach()
    probes = probe_directions(clip, change, args.probes) if args.probe_weight > 0 else None
    res = clip_render_resolution(g, clip)
    rng = torch.Generator().manual_seed(args.seed)
    for step in range(args.steps):
        z = torch.randn(args.batch, g.style_dim, generator=rng)
        with torch.no_grad():
            w_plus = g.w_to_w_plus(g.truncate(g.mapping(z), loaded.bundle.truncation))
            s_src = g.s_to_flat(g.w_plus_to_s(w_plus))
            img_src = g.synthesis(g.flat_to_s(s_src), until_resolution=res)
            emb_src = clip.encode_image(img_src)
        s = s_src.clone()
        s[:, positions] = s[:, positions] + mapper(w_plus)
        img = g.synthesis(g.flat_to_s(s), until_resolution=res)
        emb = clip.encode_image(img)
        clip_loss = (1 - emb @ target.t()).mean()
        dir_loss = directional_loss(emb, emb_src, change).mean()
        reg = mapper.residual(w_plus).square().mean()
        loss = clip_loss + args.dir_weight * dir_loss + args.reg_weight * reg
        if identity is not None and args.id_weight > 0:
            loss = loss + args.id_weight * identity.loss(img, img_src).mean()
        if probes is not None:  # CLIP's reading of the other attributes should stay where it was
            loss = loss + args.probe_weight * ((emb - emb_src) @ probes.t()).square().sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(json.dumps({"edit": spec.name, "step": step, "loss": round(float(loss), 4),
                              "clip": round(float(clip_loss), 4), "dir": round(float(dir_loss), 4),
                              "residual": round(float(reg), 4)}), file=sys.stderr, flush=True)
    return mapper.eval()


def add_common_arguments(p: argparse.ArgumentParser, seeds: int, extra: int) -> None:
    """The edit selection, the objective's weights and the benchmark's seeds, shared with
    bench_channel_optimization.py."""
    p.add_argument("--edits", default="", help="comma-separated edit names (default: all of the set)")
    p.add_argument("--edit-set", default="benchmark", choices=sorted(EDIT_SETS))
    p.add_argument("--alpha", type=float, default=4.1)
    p.add_argument("--extra", type=int, default=extra, help="channels beyond auto-beta's, by relevance")
    p.add_argument("--dir-weight", type=float, default=3.0)
    p.add_argument("--reg-weight", type=float, default=0.05)
    p.add_argument("--id-weight", type=float, default=0.3)
    p.add_argument("--seeds", type=int, default=seeds)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")


def selected_specs(args: argparse.Namespace) -> list[EditSpec]:
    specs = list(EDIT_SETS[args.edit_set])
    if args.edits:
        wanted = {e.strip() for e in args.edits.split(",")}
        specs = [s for s in specs if s.name in wanted]
    return specs


def report_edits(loaded, edit_fn, specs: list[EditSpec], args: argparse.Namespace, label: str,
                 seconds: tuple[str, float]) -> None:
    """Runs the edit benchmark on the args' seeds and prints the table, or one JSON line with `--json`."""
    report = evaluate_edits(loaded, load_classifier(), edit_fn, specs,
                            range(args.first_seed, args.first_seed + args.seeds), label=f"{label}: {vars(args)}")
    if args.json:
        print(json.dumps({"success": report.success, "preservation": report.preservation,
                          seconds[0]: round(seconds[1], 1),
                          "edits": {r.spec.name: [r.success, r.preservation] for r in report.rows}}))
    else:
        print(format_report(report))
        print(f"{seconds[0]}: {seconds[1]:.0f}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, seeds=50, extra=0)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--probe-weight", type=float, default=0.0,
                   help="weight of the CLIP probe term: the edit should not move CLIP's reading of other attributes")
    p.add_argument("--probes", default="", help="';'-separated probe texts (default: PROBES)")
    p.add_argument("--templates", action="store_true",
                   help="CLIP targets from the 80-template prompt ensemble instead of the bare text")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    specs = selected_specs(args)
    loaded = Studio("cpu").model("toyfaces")
    identity = identity_for_bundle("toyfaces") if args.id_weight > 0 else None
    mappers, t0 = {}, time.perf_counter()
    for spec in specs:
        mappers[spec.name] = train(loaded, spec, args, identity)
    train_s = time.perf_counter() - t0
    g = loaded.generator

    @torch.inference_mode()
    def edit_fn(spec: EditSpec, seed: int) -> torch.Tensor:
        return g.synthesis(g.flat_to_s(apply_channel_mapper(mappers[spec.name], g, loaded.source_w_plus(seed))))

    report_edits(loaded, edit_fn, specs, args, "channel mapper", ("train_s", train_s))


if __name__ == "__main__":
    main()
