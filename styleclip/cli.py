"""Command-line interface: thin wrappers over the library. Each subcommand prints one JSON line on success (a
batch over `--seeds`: one line per image)."""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

EXIT_USAGE = 2


class CliError(Exception):
    """A user-facing error: printed as one line, no traceback."""



def _stderr_progress():
    """A progress callback (done, total, stage) printing at most once a second to stderr, so that stdout keeps
    the command's one JSON line."""
    last = [0.0]

    def progress(done: int, total: int, stage: str) -> None:
        if time.time() - last[0] >= 1.0 or done == total:
            last[0] = time.time()
            print(f"{done}/{total} {stage}", file=sys.stderr, flush=True)

    return progress

def seed_to_z(seed: int, z_dim: int) -> torch.Tensor:
    """The seed convention of the upstream scripts: numpy RandomState(seed).randn(1, z_dim) as float32."""
    if not 0 <= seed < 2 ** 32:
        raise CliError(f"seed must be in 0..{2 ** 32 - 1}, got {seed}")
    return torch.from_numpy(np.random.RandomState(seed).randn(1, z_dim).astype(np.float32))


def cmd_render(args: argparse.Namespace) -> dict:
    from .imaging import img_to_image, save_image
    from .models import model_zoo
    from .models.device import resolve_device

    device = resolve_device(args.device)
    g = model_zoo.load_generator_spec(args.generator, device)
    z = seed_to_z(args.seed, g.style_dim).to(device)
    with torch.inference_mode():
        def forward():
            img = g(z, truncation=args.truncation)
            if device.type == "cuda":  # kernels run asynchronously: time them to the end
                torch.cuda.synchronize(device)
            return img

        img = forward()
        timings = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            forward()
            timings.append(time.perf_counter() - t0)
    save_image(img_to_image(img), args.out)
    out = {"out": str(args.out), "size": g.size, "seed": args.seed, "truncation": args.truncation,
           "device": str(device)}
    if timings:
        out.update(repeat=args.repeat, median_s=statistics.median(timings), min_s=min(timings))
    return out


def cmd_encode_text(args: argparse.Namespace) -> dict:
    from .models.clip_model import ClipModel
    from .models.device import resolve_device

    model = ClipModel.load(args.clip, device=resolve_device(args.device))
    t0 = time.perf_counter()
    emb = model.encode_text(list(args.texts))
    elapsed = time.perf_counter() - t0
    arr = emb.float().cpu().numpy().astype(np.float32)
    np.save(args.out, arr)
    return {"out": str(args.out), "shape": list(arr.shape), "seconds": elapsed}


class _ProgressPrinter:
    """Progress lines with an ETA on stderr (stdout keeps the one JSON line)."""

    def __init__(self):
        self.started: dict[str, tuple[float, int]] = {}
        self.last = 0.0

    def __call__(self, done: int, total: int, stage: str) -> None:
        now = time.time()
        # Text after " | " is live detail (the mapper's losses); only the part before it is the stage. A stage's
        # clock starts at its first report and keeps running when stages take turns (the precompute's relevance
        # and probe stages do on the first images).
        t0, done0 = self.started.setdefault(stage.split(" | ", 1)[0], (now, done))
        if now - self.last < 1.0 and done < total:
            return
        self.last = now
        rate = (done - done0) / max(now - t0, 1e-9)
        eta = f"{(total - done) / rate:.0f} s" if rate > 0 else "?"
        print(f"{stage}: {done}/{total} ({100 * done / total:.0f}%), ETA {eta}", file=sys.stderr, flush=True)


def cmd_models(args: argparse.Namespace) -> dict:
    """Every model with whether its files are on disk and whether its global-direction statistics exist."""
    from .models import model_zoo, registry

    ready = {b.name for b in model_zoo.available_bundles()}
    return {"models_folder": str(registry.models_dir()), "models": [
        {"name": b.name, "description": b.description, "files_present": b.name in ready,
         "statistics": (model_zoo.precomputed_dir(b.name) / "fs3.npy").is_file(),
         "builtin": b.name in model_zoo.builtin_names()}
        for b in model_zoo.list_bundles()]}


def cmd_add_model(args: argparse.Namespace) -> dict:
    """Your own StyleGAN2 checkpoint as a model of the app, API and CLI (see models/user_models.py)."""
    from .models.user_models import add_model, model_file

    bundle, shape = add_model(args.name, args.generator, args.clip, truncation=args.truncation,
                              alignment=args.alignment, description=args.description or "")
    return {"model": bundle.name, "file": str(model_file(bundle.name)), "generator": bundle.generator,
            "clip": bundle.clip, **shape,
            "next": f"python -m styleclip precompute --model {bundle.name}  (global directions need it; the app "
                    "can also compute it: 'Compute statistics')"}


def cmd_precompute(args: argparse.Namespace) -> dict:
    from .engines.precompute import precompute
    from .models import model_zoo
    from .studio import Studio

    loaded = Studio(args.device).model(args.model)
    out = Path(args.out) if args.out else model_zoo.precomputed_dir(loaded.name)
    t0 = time.perf_counter()
    stats = precompute(loaded.generator, loaded.clip, out, n_stats=args.n_stats, n_images=args.n_images,
                       truncation=loaded.bundle.truncation, basis_energy=args.basis_energy,
                       refine_channels=args.refine_channels, probe_images=args.probe_images,
                       generator_sha256=loaded.generator_sha256, clip_sha256=loaded.clip_sha256,
                       progress=_ProgressPrinter())
    return {"out": str(out), "fs3_rows": int(stats.fs3.shape[0]), "seconds": round(time.perf_counter() - t0, 1)}


MAX_BATCH_SEEDS = 10_000
SEED_FIELD = "{seed}"


def parse_seeds(spec: str) -> list[int]:
    """A seed list such as "0-3,7" → [0, 1, 2, 3, 7]: ranges inclusive, in the order given, repeats dropped."""
    seeds: list[int] = []
    seen: set[int] = set()
    for part in (p.strip() for p in spec.split(",")):
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not match:
            raise CliError(f"--seeds: {part!r} is not a seed or a range such as 0-9 (whole numbers, comma-separated)")
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise CliError(f"--seeds: the range {part!r} ends before it starts")
        if last >= 2 ** 32:
            raise CliError(f"--seeds: seeds go up to {2 ** 32 - 1}, got {last}")
        if last - first + 1 + len(seeds) > MAX_BATCH_SEEDS:
            raise CliError(f"--seeds: at most {MAX_BATCH_SEEDS} seeds per run")
        seeds += [seed for seed in range(first, last + 1) if seed not in seen]
        seen.update(range(first, last + 1))
    return seeds


def _batch(args: argparse.Namespace) -> list[tuple[int, Path]]:
    """(seed, output path) pairs: `--seed` and `--out`, or every seed of `--seeds` with {seed} in `--out` filled."""
    if args.seeds is None:
        return [(args.seed, Path(args.out))]
    if SEED_FIELD not in str(args.out):
        raise CliError(f"--seeds writes one image per seed: put {SEED_FIELD} in --out, e.g. edits/seed{SEED_FIELD}.png")
    pairs = [(seed, Path(str(args.out).replace(SEED_FIELD, str(seed)))) for seed in parse_seeds(args.seeds)]
    for parent in {path.parent for _, path in pairs}:
        parent.mkdir(parents=True, exist_ok=True)
    return pairs


def cmd_edit(args: argparse.Namespace) -> dict | list[dict]:
    from .imaging import save_image
    from .studio import Studio

    batch = _batch(args)
    studio = Studio(args.device)
    t0 = time.perf_counter()
    loaded = studio.model(args.model)
    t_load = time.perf_counter() - t0
    beta = args.beta if args.beta is not None else studio.auto_beta(args.model, args.neutral, args.target)
    lines = []
    for seed, out in batch:
        image, info = studio.global_edit(args.model, seed, args.neutral, args.target, args.alpha, beta)
        save_image(image, out)
        info.pop("top_channels")
        info["timings_ms"]["load_models"] = round(t_load * 1000, 1) if not lines else 0.0
        lines.append({"out": str(out), **info, "model": loaded.name})
    return lines if args.seeds is not None else lines[0]


def cmd_optimize(args: argparse.Namespace) -> dict:
    """Latent optimization of a seed's image toward a text (see engines/optimization.py)."""
    from .engines.optimization import optimize
    from .imaging import img_to_image, save_image
    from .studio import (
        DIRECTIONAL_NEUTRAL,
        Studio,
        optimization_dir_lambda,
        optimization_steps,
        optimization_weights,
        validate_text,
    )

    text = validate_text(args.text, "target")
    loaded = Studio(args.device).model(args.model)
    try:
        l2_lambda, id_lambda, identity = optimization_weights(loaded, args.l2_lambda, args.id_lambda)
    except ValueError as exc:
        raise CliError(f"{exc} (--id-lambda 0)") from None
    steps = optimization_steps(loaded, args.steps)
    try:
        dir_lambda = optimization_dir_lambda(loaded, args.dir_lambda)
    except ValueError as exc:
        raise CliError(f"--dir-lambda: {exc}") from None
    w_plus_0 = loaded.source_w_plus(args.seed)
    progress = _stderr_progress()
    t0 = time.perf_counter()
    result = optimize(loaded.generator, loaded.clip, text, w_plus_0, steps=steps, lr=args.lr,
                      l2_lambda=l2_lambda, id_lambda=id_lambda, identity=identity, space=args.space,
                      progress=progress, dir_lambda=dir_lambda, neutral=args.neutral or DIRECTIONAL_NEUTRAL)
    seconds = time.perf_counter() - t0
    save_image(img_to_image(result.img), args.out)
    return {"out": str(args.out), "model": loaded.name, "seed": args.seed, "text": text, "steps": steps,
            "space": args.space, "lr": args.lr, "l2_lambda": l2_lambda, "id_lambda": id_lambda,
            "dir_lambda": dir_lambda,
            "identity": identity.kind if identity is not None else None,
            "clip_loss_start": round(result.history[0].clip_loss, 5),
            "clip_loss_end": round(result.final_clip_loss, 5), "seconds": round(seconds, 2)}


def _add_optimize_parser(sub) -> None:
    p = sub.add_parser("optimize", help="latent optimization of a seed's image toward a text (slow on CPU)")
    p.add_argument("--model", default="", help="model name; default: the embedded model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text", required=True, help="target description, e.g. 'a person with purple hair'")
    p.add_argument("--steps", type=int, default=None,
                   help="Adam steps; default: the model's (ffhq 40 as the StyleCLIP notebook, toyfaces 100)")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--l2-lambda", type=float, default=None,
                   help="pull toward the start latent; default: the model's (ffhq 0.008 official, toyfaces 0.05)")
    p.add_argument("--id-lambda", type=float, default=None,
                   help="identity loss weight; default: the model's (ffhq 0.005 as the notebook, toyfaces 0.5) when "
                        "its identity network is on disk, else 0")
    p.add_argument("--dir-lambda", type=float, default=None,
                   help="directional CLIP loss weight (StyleGAN-NADA's; 0 = the official objective); default: the "
                        "model's")
    p.add_argument("--neutral", default=None, help="the directional loss's starting text (default: 'face')")
    p.add_argument("--space", choices=("w_plus", "s"), default="w_plus")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_optimize)


def _stop_on_interrupt():
    """A should_stop flag set by Ctrl-C, so that training saves its checkpoint before stopping.

    Returns (should_stop, restore); outside the main thread (signals unavailable) Ctrl-C keeps its default.
    """
    import signal
    import threading

    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        return stop.is_set, lambda: None
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    return stop.is_set, lambda: signal.signal(signal.SIGINT, previous)


def cmd_train_mapper(args: argparse.Namespace) -> dict:
    from .engines.mapper import GROUPS, train_mapper
    from .studio import Studio, validate_text

    text = validate_text(args.text, "mapper")
    studio = Studio(args.device)
    loaded = studio.model(args.model)
    try:
        identity, id_weight, note = studio.mapper_identity(loaded.name, args.id_weight)
    except ValueError as exc:
        raise CliError(f"{exc} (--id-weight 0)") from None
    if note:
        print(f"note: {note}", file=sys.stderr)
    try:
        direction_weight = studio.mapper_direction_weight(loaded.name, args.direction_weight)
    except ValueError as exc:
        raise CliError(f"--direction-weight: {exc}") from None
    groups = [g for g in GROUPS if not getattr(args, f"no_{g}")]
    truncation = loaded.bundle.truncation if args.truncation is None else args.truncation
    out = Path(args.out)
    resumed = out.exists()
    should_stop, restore = _stop_on_interrupt()
    t0 = time.perf_counter()
    try:
        mapper, history = train_mapper(
            loaded.generator, loaded.clip, text, steps=args.steps, batch=args.batch, lr=args.lr,
            clip_weight=args.clip_weight, l2_weight=args.l2_weight, id_weight=id_weight, identity=identity,
            truncation=truncation, seed=args.seed, direction_weight=direction_weight, neutral=args.neutral,
            groups=groups, norm_axis=args.norm_axis, checkpoint_path=out,
            checkpoint_every=args.checkpoint_every, progress=_ProgressPrinter(), should_stop=should_stop,
            meta={"model": loaded.name})
    finally:
        restore()
    seconds = time.perf_counter() - t0
    last = history[-10:]
    parts = ("loss", "clip", "l2") + (("id",) if id_weight > 0 else ())
    parts += ("dir",) if direction_weight > 0 else ()
    final = {k: round(statistics.mean(r[k] for r in last), 5) for k in parts} if last else {}
    return {"out": str(out), "model": loaded.name, "text": text, "steps": len(history), "batch": args.batch,
            "groups": list(mapper.groups), "id_weight": id_weight, "direction_weight": direction_weight,
            "identity": identity.kind if identity is not None else None, "resumed": resumed,
            "seconds": round(seconds, 1), "final_losses_last10": final}


def cmd_train_channel_mapper(args: argparse.Namespace) -> dict:
    """A channel mapper (engines/channel_mapper.py) for a text pair; rerun with the same settings to resume."""
    from .studio import Studio

    out = Path(args.out)
    resumed = out.exists()
    should_stop, restore = _stop_on_interrupt()
    try:
        info = Studio(args.device).train_channel_mapper(
            args.model, args.neutral, args.target, out, steps=args.steps, extra=args.extra, id_weight=args.id_weight,
            seed=args.seed, progress=_ProgressPrinter(), should_stop=should_stop)
    finally:
        restore()
    return {"out": str(out), "resumed": resumed, **{k: v for k, v in info.items() if k != "path"}}


def cmd_apply_mapper(args: argparse.Namespace) -> dict:
    from .engines.channel_mapper import ChannelMapper, load_any_mapper, mapped_s
    from .imaging import img_to_image, save_image
    from .studio import Studio

    batch = _batch(args)
    t0 = time.perf_counter()
    loaded = Studio(args.device).model(args.model)
    generator = loaded.generator
    mapper = load_any_mapper(args.mapper, generator)
    kind = ({"kind": "channels", "channels": mapper.config.channels} if isinstance(mapper, ChannelMapper)
            else {"kind": "w_plus", "groups": list(mapper.groups)})
    t_load = time.perf_counter() - t0
    lines = []
    for seed, out in batch:
        w_plus = loaded.source_w_plus(seed)  # [1, L, D] at the bundle's truncation
        t1 = time.perf_counter()
        with torch.inference_mode():
            s = mapped_s(mapper, generator, w_plus, args.strength)
            t2 = time.perf_counter()
            img = generator.synthesis(generator.flat_to_s(s))
        t3 = time.perf_counter()
        save_image(img_to_image(img), out)
        lines.append({"out": str(out), "model": loaded.name, "seed": seed, "strength": args.strength,
                      "text": mapper.meta.get("text"), **kind,
                      "timings_ms": {"load_models": round(t_load * 1000, 1) if not lines else 0.0,
                                     "mapper": round((t2 - t1) * 1000, 2),
                                     "synthesis": round((t3 - t2) * 1000, 1)}})
    return lines if args.seeds is not None else lines[0]


def _add_mapper_parsers(sub) -> None:
    p = sub.add_parser("train-mapper", help="train a latent mapper for one text (rerun to resume)")
    p.add_argument("--model", default="", help="model name; default: the embedded model")
    p.add_argument("--text", required=True, help="the edit, e.g. 'a smiling face'")
    p.add_argument("--out", type=Path, required=True,
                   help="mapper file; also the training checkpoint (an existing one is resumed)")
    p.add_argument("--steps", type=int, default=1000, help="total steps (official: 50000 on a GPU)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.5, help="Adam learning rate")
    p.add_argument("--clip-weight", type=float, default=1.0)
    p.add_argument("--l2-weight", type=float, default=0.8)
    p.add_argument("--id-weight", type=float, default=None,
                   help="identity loss weight; default: the model's (ffhq: the official 0.1 with ArcFace; "
                        "toyfaces: 0.3 with its identity network) when its identity network is on disk, else 0")
    p.add_argument("--truncation", type=float, default=None, help="source sampling psi; default: the model's")
    p.add_argument("--direction-weight", type=float, default=None,
                   help="weight of the directional CLIP loss (StyleGAN-NADA): the image should change along "
                        "CLIP(text) - CLIP(--neutral) only; 0 = the official objective; default: the model's "
                        "(toyfaces 3, ffhq 0)")
    p.add_argument("--neutral", default="face", help="the directional loss's starting text")
    p.add_argument("--seed", type=int, default=0)
    for group in ("coarse", "medium", "fine"):
        p.add_argument(f"--no-{group}", action="store_true", help=f"leave the {group} W+ rows unchanged")
    p.add_argument("--norm-axis", choices=("layers", "features"), default="layers",
                   help="PixelNorm axis: 'layers' as the official mapper, or over each row's features")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.set_defaults(func=cmd_train_mapper)

    p = sub.add_parser("train-channel-mapper",
                       help="train a channel mapper for a text pair: the global direction's channels, moved per face "
                            "(rerun to resume)")
    p.add_argument("--model", default="", help="model name; default: the embedded model (needs its statistics)")
    p.add_argument("--neutral", default="face", help="the text the edit starts from")
    p.add_argument("--target", required=True, help="the edit, e.g. 'face with black hair'")
    p.add_argument("--out", type=Path, required=True,
                   help="mapper file; also the training checkpoint (an existing one is resumed)")
    p.add_argument("--steps", type=int, default=300, help="total steps (batch 4)")
    p.add_argument("--extra", type=int, default=None,
                   help="channels beyond the global direction's, by relevance (default 512)")
    p.add_argument("--id-weight", type=float, default=None,
                   help="identity loss weight; default 0.3 when the model's identity network is on disk, else 0")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train_channel_mapper)

    p = sub.add_parser("apply-mapper", help="edit a seed's image with a trained (or official) mapper")
    p.add_argument("--model", default="", help="model name; default: the embedded model")
    p.add_argument("--mapper", type=Path, required=True,
                   help="mapper file: a W+ mapper (ours or an official one) or a channel mapper")
    _add_seed_arguments(p)
    p.add_argument("--strength", type=float, default=1.0, help="scales the mapper's edit (1 = as trained)")
    p.set_defaults(func=cmd_apply_mapper)


def cmd_align(args: argparse.Namespace) -> dict:
    """FFHQ alignment of a photo (see engines/alignment.py); --center-crop-if-no-face falls back to a centre crop."""
    from .engines.alignment import NoFaceError, align_face, center_crop, load_image
    from .imaging import save_image

    if args.size < 16 or args.size > 4096:
        raise CliError(f"--size must be in 16..4096, got {args.size}")
    image = load_image(args.image)
    t0 = time.perf_counter()
    try:
        result = align_face(image, size=args.size)
    except NoFaceError:
        if not args.center_crop_if_no_face:
            raise CliError("no face found in the image; rerun with --center-crop-if-no-face to use the centre "
                           "crop instead") from None
        save_image(center_crop(image, args.size), args.out)
        return {"out": str(args.out), "size": args.size, "faces_found": 0, "mode": "center_crop",
                "seconds": round(time.perf_counter() - t0, 2)}
    save_image(result.image, args.out)
    return {"out": str(args.out), "size": args.size, "faces_found": result.faces_found,
            "chosen_index": result.chosen_index, "mode": "ffhq", "note": result.note,
            "quad": [[round(float(v), 2) for v in corner] for corner in result.quad],
            "seconds": round(time.perf_counter() - t0, 2)}


def cmd_invert(args: argparse.Namespace) -> dict:
    """Projection of an (already aligned) photo into W+, optionally refined in S; writes w_plus, the flat s of the
    reconstruction and the PSNR to an .npz."""
    from .engines.alignment import load_image
    from .engines.inversion import invert
    from .imaging import image_to_img, img_to_image, save_image
    from .studio import INVERT_PIXEL_LOSS, INVERT_S_STEPS_DEFAULT, Studio

    if args.s_steps is None:
        args.s_steps = INVERT_S_STEPS_DEFAULT
    pixel_loss = args.pixel_loss or INVERT_PIXEL_LOSS
    if args.steps < 1 or args.s_steps < 0:
        raise CliError(f"--steps must be >= 1 and --s-steps >= 0, got {args.steps} and {args.s_steps}")
    image = load_image(args.image)
    loaded = Studio(args.device).model(args.model)
    target = image_to_img(image, loaded.generator.size)  # [1, 3, R, R] in [-1, 1]
    progress = _stderr_progress()
    t0 = time.perf_counter()
    result = invert(loaded.generator, loaded.clip, target, steps=args.steps, lr=args.lr, s_steps=args.s_steps,
                    pixel_loss=pixel_loss, progress=progress)
    seconds = time.perf_counter() - t0
    s_flat = result.flat_s(loaded.generator)
    np.savez(args.out, w_plus=result.w_plus.cpu().numpy().astype(np.float32),
             s=s_flat.cpu().numpy().astype(np.float32), psnr=np.float32(result.psnr),
             psnr_start=np.float32(result.psnr_start), model=np.str_(loaded.name), steps=np.int64(args.steps),
             s_steps=np.int64(args.s_steps))
    out = {"out": str(args.out), "model": loaded.name, "steps": args.steps, "s_steps": args.s_steps,
           "pixel_loss": pixel_loss,
           "psnr_start": round(result.psnr_start, 3), "psnr": round(result.psnr, 3), "seconds": round(seconds, 2)}
    if args.recon is not None:
        save_image(img_to_image(result.img), args.recon)
        out["recon"] = str(args.recon)
    return out


def _add_photo_parsers(sub) -> None:
    p = sub.add_parser("align", help="FFHQ-align the most prominent face of a photo (dlib landmarks)")
    p.add_argument("--image", type=Path, required=True, help="input photo (any Pillow format)")
    p.add_argument("--out", type=Path, required=True, help="aligned PNG")
    p.add_argument("--size", type=int, default=1024, help="output side in px (FFHQ: 1024)")
    p.add_argument("--center-crop-if-no-face", action="store_true",
                   help="write the centre crop instead of failing when no face is found")
    p.set_defaults(func=cmd_align)

    p = sub.add_parser("invert", help="project an aligned photo into W+ (writes w_plus and PSNR to .npz)")
    p.add_argument("--model", default="", help="model name; default: the embedded model")
    p.add_argument("--image", type=Path, required=True, help="aligned photo (e.g. from `align`)")
    p.add_argument("--out", type=Path, required=True,
                   help="output .npz (w_plus [1, L, D], s [1, s_dim] of the reconstruction, psnr)")
    p.add_argument("--steps", type=int, default=200, help="Adam steps on W+")
    p.add_argument("--s-steps", type=int, default=None,
                   help="Adam steps refining the result in S (default: the app's, 150; 0: W+ only; a refined s "
                        "has no W+ preimage)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--pixel-loss", choices=("mse", "l1", "lap1"), default=None,
                   help="pixel term (default: the app's, lap1 = Laplacian-pyramid L1)")
    p.add_argument("--recon", type=Path, default=None, help="also save the reconstruction as an image")
    p.set_defaults(func=cmd_invert)


def build_parser() -> argparse.ArgumentParser:
    from .engines.precompute import RELEVANCE_BASIS_ENERGY, RELEVANCE_PROBE_IMAGES, RELEVANCE_REFINE_CHANNELS

    parser = argparse.ArgumentParser(prog="python -m styleclip", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("render", help="render one image from a seed")
    p.add_argument("--generator", required=True, help="checkpoint path or known model name (e.g. toyfaces)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--truncation", type=float, default=1.0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--repeat", type=int, default=0, help="time R forward passes after one warm-up")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("encode-text", help="write L2-normalised CLIP text embeddings as an (N, D) .npy")
    p.add_argument("--clip", required=True, help="CLIP name (e.g. ViT-B/32) or local file")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("texts", nargs="+")
    p.set_defaults(func=cmd_encode_text)

    p = sub.add_parser("models", help="list the models: built-in and your own, files present, statistics made")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("add-model", help="make your own StyleGAN2 checkpoint a model of the app, API and CLI")
    p.add_argument("--name", required=True, help="what to call it, e.g. cats (lower-case letters, digits, - and _)")
    p.add_argument("--generator", type=Path, required=True,
                   help="rosinality-format StyleGAN2 checkpoint ({'g_ema', ...}; any size)")
    p.add_argument("--clip", default="ViT-B/32", help="a known CLIP (ViT-B/32, toyfaces-clip) or a CLIP file")
    p.add_argument("--truncation", type=float, default=0.7, help="psi for sources drawn from seeds")
    p.add_argument("--alignment", choices=("center", "ffhq"), default="center",
                   help="how uploaded photos are cropped: centre crop (any domain) or FFHQ face alignment")
    p.add_argument("--description", default="", help="one line for the model picker")
    p.set_defaults(func=cmd_add_model)

    p = sub.add_parser("precompute", help="S statistics + channel relevance for global directions (resumable)")
    p.add_argument("--model", required=True, help="model name (e.g. toyfaces, ffhq)")
    p.add_argument("--n-stats", type=int, default=100_000, help="latents sampled for S mean/std")
    p.add_argument("--n-images", type=int, default=100,
                   help="images averaged in the relevance matrix (the official procedure's 100)")
    p.add_argument("--basis-energy", type=float, default=RELEVANCE_BASIS_ENERGY, metavar="SHARE",
                   help="after 10 full-Jacobian images, only the CLIP directions holding this share of the "
                        f"Jacobian's energy (default {RELEVANCE_BASIS_ENERGY}; 1: the full Jacobian on every image)")
    p.add_argument("--refine-channels", type=int, default=RELEVANCE_REFINE_CHANNELS, metavar="M",
                   help="the M channels whose official ±5σ differences agree least with their Jacobian columns on "
                        f"the probe images get the official rows (default {RELEVANCE_REFINE_CHANNELS}; 0: none)")
    p.add_argument("--probe-images", type=int, default=RELEVANCE_PROBE_IMAGES, metavar="K",
                   help="with --refine-channels: images on which every channel is probed")
    p.add_argument("--out", help="output folder (default precomputed/<model>/)")
    p.set_defaults(func=cmd_precompute)

    p = sub.add_parser("edit", help="global-direction edit of a seed's image (or of many: --seeds)")
    p.add_argument("--model", default="", help="model name; default: the embedded model")
    _add_seed_arguments(p)
    p.add_argument("--neutral", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--alpha", type=float, default=4.1)
    p.add_argument("--beta", type=float, default=None, help="default: auto-beta (one beta for every seed)")
    p.set_defaults(func=cmd_edit)
    _add_optimize_parser(sub)
    _add_mapper_parsers(sub)
    _add_photo_parsers(sub)
    for name, p in sub.choices.items():
        if name not in ("align", "models", "add-model"):  # these run no network
            p.add_argument("--device", default=None,
                           help="auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N "
                                "(default: $STYLECLIP_DEVICE, else auto)")
    return parser


def _add_seed_arguments(p: argparse.ArgumentParser) -> None:
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=0)
    seeds.add_argument("--seeds", metavar="LIST",
                       help="a batch, e.g. 0-99 or 1,5,9-12: the models load once, one image and one JSON line "
                            f"per seed; --out must hold {SEED_FIELD}")
    p.add_argument("--out", type=Path, required=True, help=f"PNG file (with --seeds: a pattern with {SEED_FIELD})")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except (CliError, ValueError, FileNotFoundError, RuntimeError, OSError) as exc:
        # Library errors carry plain messages; CLI users get them without a traceback.
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for line in result if isinstance(result, list) else [result]:  # a batch prints one line per image
        print(json.dumps(line))
    return 0
