"""StyleCLIP Studio: the Gradio UI. It only builds widgets and calls the library (styleclip.studio)."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import queue
import random
import tempfile
import threading
import time
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
import torch
from PIL import Image

import ops
from styleclip.engines.global_directions import NoChannelsError
from styleclip.engines.optimization import OptimizationCancelled
from styleclip.engines.precompute import Cancelled, precompute
from styleclip.imaging import img_to_image
from styleclip.models import model_zoo
from styleclip.models.device import DeviceError
from styleclip.studio import (ALPHA_RANGE, BETA_RANGE, INVERT_S_STEPS_DEFAULT, INVERT_S_STEPS_RANGE,
                              INVERT_STEPS_DEFAULT, INVERT_STEPS_RANGE, MAPPER_GROUPS, MAPPER_STEPS_DEFAULT,
                              MAPPER_STEPS_RANGE, MAPPER_STRENGTH_RANGE, OPT_STEPS_RANGE,
                              MissingStatisticsError, Studio, unknown_words, unknown_words_note, validate_groups,
                              validate_text)

log = logging.getLogger("styleclip.app")
try:
    STUDIO = Studio()  # device from $STYLECLIP_DEVICE, else a CUDA GPU when there is one
except DeviceError as exc:
    raise SystemExit(f"error: {exc}") from None
DISPLAY_SIZE = 256
EXAMPLE_SEEDS = list(range(12))
DEFAULT_NEUTRAL, DEFAULT_TARGET = "face", "smiling face"
EXPORT_DIR = Path(tempfile.mkdtemp(prefix="styleclip_exports_"))

HOW_IT_WORKS = """
**How it works.** Both texts are encoded by CLIP (averaged over 79 prompt templates); their difference Δt is a
direction in CLIP space. A precomputed relevance matrix says how much each StyleGAN2 style channel moves an image
along Δt. Channels whose relevance is below **beta** are left alone (higher beta = fewer channels = a more
disentangled edit); the rest move by **alpha** times their relevance, in units of each channel's spread.
Negative alpha moves away from the target. *Apply edit* makes the result the new source, so edits stack.
On the embedded model the relevance is measured in a whitened CLIP metric, so that changes nearly every channel
makes (a shared "something moved" axis) do not outweigh the change the text names; the info box says which metric
the model uses.
"""


# ------------------------------------------------------------------------------------------ helpers
def user_errors(fn):
    """Library errors become a plain message in the UI (gr.Error), never a stack trace."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, FileNotFoundError) as exc:
            raise gr.Error(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - keep serving; the log has the details
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(f"Something went wrong ({type(exc).__name__}). Please try again.") from None
    return wrapper


def for_display(image: np.ndarray) -> np.ndarray:
    """Small models render 64 px; show them at DISPLAY_SIZE with a smooth filter."""
    if image.shape[0] >= DISPLAY_SIZE:
        return image
    return np.asarray(Image.fromarray(image).resize((DISPLAY_SIZE, DISPLAY_SIZE), Image.LANCZOS))


def model_choices() -> list[str]:
    names = [b.name for b in model_zoo.available_bundles()]
    return names or [model_zoo.DEFAULT_MODEL]


def new_session(model: str, seed: int) -> dict:
    """Per-browser-session state: the model, the seed, an inverted photo's codes (w_plus [1, L, D] and its flat s,
    or None) and the stack of applied edits (flat s codes)."""
    return {"model": model, "seed": int(seed), "stack": [], "photo_w_plus": None, "photo_s": None}


def current_source(state: dict) -> torch.Tensor:
    """The flat s code [1, s_dim] every global edit starts from: the last applied edit, else the photo or seed."""
    if state["stack"]:
        return torch.from_numpy(state["stack"][-1])
    if state.get("photo_s") is not None:
        return torch.from_numpy(state["photo_s"])
    return STUDIO.model(state["model"]).s_of_seed(state["seed"])


def photo_w_plus(state: dict) -> torch.Tensor | None:
    return None if state.get("photo_w_plus") is None else torch.from_numpy(state["photo_w_plus"])


def photo_s(state: dict) -> torch.Tensor | None:
    """The inverted photo's flat S code [1, s_dim] (refined in S), or None."""
    return None if state.get("photo_s") is None else torch.from_numpy(state["photo_s"])


def format_info(info: dict) -> str:
    lines = [f"**{info['channels']} channels** moved · alpha {info['alpha']:+.2f} · beta {info['beta']:.3f} · "
             f"{info['timings_ms']['total']:.0f} ms",
             (f"model `{info['model']}` · seed {info['seed']} · “{info['neutral']}” → “{info['target']}” · "
              f"{info['relevance_metric']} relevance")]
    note = unknown_words_note(info.get("unknown_words", ()))
    if note:
        lines.append(f"⚠️ {note}")
    return "\n\n".join(lines)


def example_edit_samples(model: str) -> list[list[str]]:
    """The model's example (neutral, target) pairs for the examples list ([] for an unknown model)."""
    try:
        return [list(pair) for pair in model_zoo.get_bundle(model).example_edits]
    except ValueError:
        return []


def example_edits_update(model: str) -> gr.Dataset:
    """The examples list for a newly picked model (hidden when it has none)."""
    samples = example_edit_samples(model)
    return gr.Dataset(samples=samples, visible=bool(samples))


def warn_unknown_words(model: str, *texts: str) -> None:
    """A notice (the run goes on) naming the words of `texts` that the model's CLIP never saw in training."""
    try:
        note = unknown_words_note(unknown_words(STUDIO.model(model), *texts))
    except (ValueError, FileNotFoundError):
        return  # the run itself reports what is wrong with the model or the text
    if note:
        gr.Warning(note)


def top_channel_rows(info: dict) -> list[list]:
    return [[c["layer"], c["channel"], c["relevance"]] for c in info["top_channels"][:10]]


# ------------------------------------------------------------------------------------------ handlers
@user_errors
def on_source(model: str, seed, state: dict):
    """A new seed or model: reset the edit stack and show the source."""
    loaded = STUDIO.model(model)
    state = new_session(loaded.name, int(seed))
    image = loaded.render_s(current_source(state))
    return state, for_display(image)


@user_errors
def on_random(model: str, state: dict):
    seed = random.randint(0, 2 ** 31 - 1)
    state, image = on_source(model, seed, state)
    return seed, state, image


@user_errors
def on_edit(state: dict, neutral: str, target: str, alpha: float, beta: float):
    """A slider move or new text: render the edit of the current source (cached direction, one synthesis)."""
    try:
        image, info = STUDIO.global_edit(state["model"], state["seed"], neutral, target, alpha, beta,
                                         source_s=current_source(state))
    except NoChannelsError as exc:
        raise gr.Error(str(exc)) from None
    except MissingStatisticsError as exc:
        raise gr.Error(f"{exc} You can also press 'Compute statistics' below.") from None
    return for_display(image), format_info(info), top_channel_rows(info)


@user_errors
def on_new_text(state: dict, neutral: str, target: str, alpha: float):
    """New texts: choose beta as the official GUI does, then render."""
    beta = STUDIO.auto_beta(state["model"], neutral, target)
    image, info, rows = on_edit(state, neutral, target, alpha, beta)
    return beta, image, info, rows


@user_errors
def on_apply(state: dict, neutral: str, target: str, alpha: float, beta: float):
    s_new = STUDIO.apply_edit(state["model"], current_source(state), neutral, target, alpha, beta)
    state = {**state, "stack": state["stack"] + [s_new.numpy()]}
    image = STUDIO.model(state["model"]).render_s(s_new)
    gr.Info(f"Edit applied ({len(state['stack'])} in the stack). Set a new target to add another.")
    return state, for_display(image), 0.0


@user_errors
def on_undo(state: dict):
    if not state["stack"]:
        raise gr.Error("Nothing to undo: the source is the seed's original image.")
    state = {**state, "stack": state["stack"][:-1]}
    return state, for_display(STUDIO.model(state["model"]).render_s(current_source(state)))


@user_errors
def on_export(state: dict, neutral: str, target: str, alpha: float, beta: float):
    s = current_source(state)
    image, info = STUDIO.global_edit(state["model"], state["seed"], neutral, target, alpha, beta, source_s=s)
    stem = f"{state['model']}_seed{state['seed']}_a{alpha:+.1f}_b{beta:.2f}"
    png = EXPORT_DIR / f"{stem}.png"
    Image.fromarray(image).save(png, pnginfo=_png_text(info))
    npz = EXPORT_DIR / f"{stem}.npz"
    s_edit = s + alpha * STUDIO.model(state["model"]).engine().direction(neutral, target, beta).delta_s
    npz.write_bytes(STUDIO.export_npz(state["model"], s, s_edit, neutral, target, alpha, beta))
    gif = EXPORT_DIR / f"{stem}_sweep.gif"
    gif.write_bytes(STUDIO.alpha_sweep_gif(state["model"], s, neutral, target, alpha, beta))
    return [str(png), str(npz), str(gif)]


def _png_text(info: dict):
    from PIL.PngImagePlugin import PngInfo
    meta = PngInfo()
    for key in ("model", "seed", "neutral", "target", "alpha", "beta", "channels", "relevance_metric"):
        meta.add_text(f"styleclip:{key}", str(info[key]))
    return meta


def on_compute_stats(state: dict, progress=gr.Progress()):
    """Runs the precompute for the current model with a progress bar (resumable if interrupted)."""
    try:
        loaded = STUDIO.model(state["model"])
        out = model_zoo.precomputed_dir(loaded.name)
        stats = precompute(loaded.generator, loaded.clip, out, truncation=loaded.bundle.truncation,
                           generator_sha256=loaded.generator_sha256, clip_sha256=loaded.clip_sha256,
                           progress=lambda done, total, stage: progress(done / total, desc=stage))
        loaded.set_statistics(stats)
    except ValueError as exc:
        raise gr.Error(str(exc)) from None
    return f"Statistics computed in {stats.manifest['seconds']:.0f} s and saved to `{out}`."


MAPPER_NOTE = """A latent mapper is a small network trained for one text: it maps any latent to its edited latent in
one pass (StyleCLIP's second engine). Pick a mapper and apply it to one or many seeds, or train a new one below
(minutes on a CPU for the embedded model; the loss plot and previews update while it trains; *Stop* keeps the
checkpoint, and training again with the same settings resumes it). Two kinds: the **W+ mapper** of the paper, and a
**channel mapper** *(channels)*, which starts from the global direction of a text pair and learns, per face, how far
to move its style channels (it keeps more of the face and trains faster; it needs the model's statistics)."""
MAPPER_KINDS = [("W+ mapper (StyleCLIP)", "w_plus"), ("channel mapper (refines the global direction)", "channels")]

OPTIMIZATION_NOTE = """Optimizes the **current seed's** latent (W+) so that CLIP matches the description, with an L2
pull toward the start and an optional identity term (StyleCLIP's latent optimization). The preview and the loss plot
update while it runs; *Stop* keeps what was reached. It starts from the seed's original image (applied global edits
are not included). For an uploaded photo, *S* starts from the reconstruction itself; *W+* starts from the photo's W+
code, i.e. the reconstruction before its S refinement (a little softer)."""


def stream_job(job):
    """Runs job(emit, should_stop) in a worker thread; yields each (kind, payload) it emits, then ("done", result).

    Gradio cancels a streaming handler by closing its generator; `finally` then tells the worker to stop.
    Exceptions of the job are re-raised here, in the handler's thread.
    """
    updates: queue.Queue = queue.Queue()
    stop = threading.Event()
    outcome: dict = {}

    def work():
        try:
            outcome["result"] = job(lambda kind, payload: updates.put((kind, payload)), stop.is_set)
        except Exception as exc:  # noqa: BLE001 - re-raised in the handler below
            outcome["error"] = exc
        finally:
            updates.put(None)

    threading.Thread(target=work, daemon=True, name="studio-job").start()
    try:
        while (item := updates.get()) is not None:
            yield item
    finally:
        stop.set()
    if "error" in outcome:
        raise outcome["error"]
    yield "done", outcome["result"]


def eta_text(t_start: float, done: int, total: int) -> str:
    elapsed = time.monotonic() - t_start
    left = elapsed / max(done, 1) * (total - done)
    return f"{elapsed:.0f} s elapsed, about {left:.0f} s left"


def job_error(exc: Exception) -> gr.Error:
    if isinstance(exc, (ValueError, FileNotFoundError)):
        return gr.Error(str(exc))
    log.error("job failed", exc_info=exc)
    return gr.Error(f"Something went wrong ({type(exc).__name__}). Please try again.")


_OPTIMIZING: set[str] = set()  # browser sessions with an optimization running
_OPTIMIZING_LOCK = threading.Lock()


def on_optimize(state: dict, text: str, steps, l2_lambda, id_lambda, mode: str, space: str,
                request: gr.Request = None):
    """Streams (preview, status, loss table, downloads) while the optimization runs; Stop keeps the latest result.

    One run per browser session: a second click while one runs gets a message instead of a second job.
    """
    session = getattr(request, "session_hash", None) or "api"
    with _OPTIMIZING_LOCK:
        if session in _OPTIMIZING:
            raise gr.Error("An optimization is already running in this session. Wait for it, or press Stop.")
        _OPTIMIZING.add(session)
    try:
        yield from _optimize_stream(state, text, steps, l2_lambda, id_lambda, mode, space)
    finally:
        with _OPTIMIZING_LOCK:
            _OPTIMIZING.discard(session)


def _optimize_stream(state, text, steps, l2_lambda, id_lambda, mode, space):
    warn_unknown_words(state["model"], text or "")
    rows: list[dict] = []
    frames: list[np.ndarray] = []
    image, status, last_yield, t_start = None, "Starting…", 0.0, time.monotonic()

    def job(emit, should_stop):
        return STUDIO.optimize(state["model"], state["seed"], text, steps, l2_lambda, id_lambda,
                               should_stop=should_stop, on_preview=lambda step, im: emit("preview", im),
                               on_step=lambda st: emit("step", st), mode=mode, space=space,
                               w_plus_source=photo_w_plus(state), s_source=photo_s(state))
    try:
        for kind, payload in stream_job(job):
            if kind == "step":
                rows.extend({"step": payload.step, "term": term, "value": value} for term, value in
                            (("CLIP", payload.clip_loss), ("L2 (weighted)", float(l2_lambda) * payload.l2_loss),
                             ("identity (weighted)", float(id_lambda) * payload.id_loss)))
                status = (f"step {payload.step}/{int(steps)} · CLIP loss {payload.clip_loss:.4f} · "
                          f"{eta_text(t_start, payload.step, int(steps))}")
            elif kind == "preview":
                frames.append(payload)
                image = for_display(payload)
            else:
                result_image, info = payload
                yield (for_display(result_image), f"Done in {info['seconds']:.1f} s · CLIP loss "
                       f"{info['clip_loss_start']:.4f} → {info['clip_loss_end']:.4f} · {info['mode']} mode, "
                       f"{info['space']} · seed {info['seed']} · “{info['text']}”", pd.DataFrame(rows),
                       _optimization_downloads(result_image, info, frames))
                return
            if kind == "preview" or time.monotonic() - last_yield > 0.5:
                last_yield = time.monotonic()
                yield image, status, pd.DataFrame(rows), None
    except OptimizationCancelled as exc:
        yield for_display(img_to_image(exc.result.img[0])), f"Stopped: {exc}", pd.DataFrame(rows), None
    except Exception as exc:  # noqa: BLE001
        raise job_error(exc) from None


def _optimization_downloads(image: np.ndarray, info: dict, frames: list[np.ndarray]) -> list[str]:
    """The result PNG, its latent (.npz) and a GIF of the optimization path."""
    stem = EXPORT_DIR / f"{info['model']}_seed{info['seed']}_opt_{info['mode']}_{int(time.time() * 1000)}"
    Image.fromarray(image).save(f"{stem}.png")
    np.savez(f"{stem}.npz", latent=info["latent"], space=info["space"], text=info["text"], mode=info["mode"],
             seed=info["seed"], steps=info["steps"], l2_lambda=info["l2_lambda"], id_lambda=info["id_lambda"])
    path_frames = [Image.fromarray(for_display(f)) for f in frames or [image]]
    path_frames[0].save(f"{stem}.gif", save_all=True, append_images=path_frames[1:], duration=120, loop=0)
    return [f"{stem}.png", f"{stem}.npz", f"{stem}.gif"]


def mapper_choices(model: str, session_mappers: dict) -> list[tuple[str, str]]:
    shipped = [(name, str(path)) for name, path in STUDIO.shipped_mappers(model).items()]
    return shipped + [(f"{name} (trained here)", path) for name, path in session_mappers.items()]


def parse_seeds(text: str) -> list[int]:
    """'0-3, 7' → [0, 1, 2, 3, 7]."""
    seeds: list[int] = []
    for part in (text or "").replace(" ", "").split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise gr.Error(f"Seeds are whole numbers or ranges like 0-7, separated by commas; got {part!r}.")
        seeds.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    return seeds


@user_errors
def on_apply_mapper(state: dict, mapper_path: str, seeds_text: str, strength):
    if not mapper_path:
        raise gr.Error("Pick a mapper first, or train one below.")
    allowed = {str(p) for p in STUDIO.shipped_mappers(state["model"]).values()}
    if mapper_path not in allowed and Path(mapper_path).parent != EXPORT_DIR:
        raise gr.Error("That mapper is not available here; pick one from the list.")
    seeds = parse_seeds(seeds_text)
    photo = photo_w_plus(state) if not seeds else None  # no seeds typed: the current source (photo or seed)
    results = STUDIO.apply_mapper(state["model"], mapper_path, seeds or [state["seed"]], strength,
                                  w_plus_source=photo, s_source=photo_s(state) if photo is not None else None)
    name = lambda seed: "photo" if seed < 0 else f"seed {seed}"  # noqa: E731
    gallery = [item for seed, src, edit in results
               for item in ((for_display(src), name(seed)), (for_display(edit), f"{name(seed)} · mapped"))]
    paths = []
    for seed, _, edit in results:
        path = EXPORT_DIR / f"{state['model']}_{Path(mapper_path).stem}_seed{seed}_x{float(strength):.1f}.png"
        Image.fromarray(edit).save(path)
        paths.append(str(path))
    return gallery, paths + [mapper_path]


def mapper_run_path(model: str, name: str, steps, l2_weight, groups=MAPPER_GROUPS) -> tuple[Path, float]:
    """The session checkpoint of a mapper run, and the identity weight it trains with (the model's default).

    The name holds every setting a resume must share, so "train again with the same settings" finds the run
    (also after a restart of the app), and a run under another default identity weight starts its own file.
    """
    _, id_weight, _ = STUDIO.mapper_identity(model)
    settings = [model, name, int(steps), float(l2_weight), float(id_weight)]
    if tuple(groups) != MAPPER_GROUPS:  # all three groups: the name runs had before the switch existed
        settings.append(list(groups))
    direction_weight = STUDIO.mapper_direction_weight(model)
    if direction_weight > 0:  # likewise: runs without the directional term keep their names
        settings.append({"direction_weight": direction_weight})
    settings = json.dumps(settings)
    return EXPORT_DIR / f"mapper_{model}_{hashlib.sha256(settings.encode()).hexdigest()[:16]}.pt", id_weight


def channel_mapper_run_path(model: str, neutral: str, target: str, steps) -> Path:
    """The session checkpoint of a channel-mapper run; its name holds every setting a resume must share."""
    settings = json.dumps(["channels", model, neutral, target, int(steps)])
    return EXPORT_DIR / f"channel_mapper_{model}_{hashlib.sha256(settings.encode()).hexdigest()[:16]}.pt"


def on_train_mapper(state: dict, mapper_kind: str, neutral: str, text: str, steps, l2_weight, groups,
                    session_mappers: dict):
    """Streams (status, loss table, preview gallery, mapper choices, session mappers) while training a mapper of
    `mapper_kind` ("w_plus" or "channels"; the latter from `neutral` to `text`)."""
    channels = mapper_kind == "channels"
    name = (text or "").strip()
    rows: list[dict] = []
    gallery, status, last_yield, t_start = [], "Starting…", 0.0, time.monotonic()
    keep = gr.update()
    try:
        if channels:
            neutral = validate_text(neutral, "neutral")
            name = f"{neutral} → {validate_text(text, 'target')} (channels)"
            out = channel_mapper_run_path(state["model"], neutral, text.strip(), steps)
            warn_unknown_words(state["model"], neutral, text)
            train = functools.partial(STUDIO.train_channel_mapper, state["model"], neutral, text, out, steps)
        else:
            groups = validate_groups(groups)
            out, id_weight = mapper_run_path(state["model"], name, steps, l2_weight, groups)
            warn_unknown_words(state["model"], name)
            train = functools.partial(STUDIO.train_mapper, state["model"], text, out, steps, l2_weight,
                                      id_weight=id_weight, groups=groups)

        def job(emit, should_stop):
            return train(should_stop=should_stop, on_step=lambda rec: emit("step", rec),
                         on_preview=lambda step, pairs: emit("preview", pairs))
        for kind, payload in stream_job(job):
            if kind == "step":
                rows.extend({"step": payload["step"], "term": term, "value": payload[term]}
                            for term in ("clip", "l2", "id", "dir", "residual") if term in payload)
                status = (f"step {payload['step']}/{int(steps)} · CLIP loss {payload['clip']:.4f} · "
                          f"{eta_text(t_start, payload['step'], int(steps))}")
            elif kind == "preview":
                gallery = [for_display(im) for pair in payload for im in pair]
            else:
                session_mappers = {**session_mappers, name: payload["path"]}
                choices = mapper_choices(state["model"], session_mappers)
                identity = f", identity weight {payload['id_weight']:g}" if payload["id_weight"] else ""
                identity += (f", directional weight {payload['direction_weight']:g}"
                             if payload.get("direction_weight") else "")
                layers = ((f", {payload['channels']} style channels" if channels else "")
                          or ("" if tuple(groups) == MAPPER_GROUPS else f", {' and '.join(groups)} layers only"))
                yield (f"Trained “{name}” in {payload['seconds']:.0f} s (CLIP loss {payload['clip_loss_end']:.4f}"
                       f"{identity}{layers}); it is now in the mapper list.", pd.DataFrame(rows), gallery,
                       gr.update(choices=choices, value=payload["path"]), session_mappers)
                return
            if kind == "preview" or time.monotonic() - last_yield > 0.5:
                last_yield = time.monotonic()
                yield status, pd.DataFrame(rows), gallery, keep, session_mappers
    except Cancelled:
        yield (f"Stopped. The checkpoint is kept: train “{name}” again with the same settings to resume.",
               pd.DataFrame(rows), gallery, keep, session_mappers)
    except Exception as exc:  # noqa: BLE001
        raise job_error(exc) from None


def on_photo(state: dict, photo_path: str | None, center_if_no_face: bool, steps, s_steps):
    """Upload → aligned preview → inversion (streamed previews) → the reconstruction becomes the source."""
    if not photo_path:
        raise gr.Error("Upload a photo first (or render a fresh toyface).")
    try:
        aligned, note = STUDIO.align_photo(state["model"], photo_path, center_if_no_face)
    except (ValueError, FileNotFoundError) as exc:
        raise gr.Error(str(exc)) from None
    yield for_display(aligned), None, f"Aligned ({note}). Inverting…", gr.update(), state

    def job(emit, should_stop):
        return STUDIO.invert_photo(state["model"], aligned, steps, s_steps, should_stop=should_stop,
                                   progress=lambda done, total, stage: emit("progress", (done, total)),
                                   on_preview=lambda step, im: emit("preview", im))
    recon, last_yield = None, 0.0
    try:
        for kind, payload in stream_job(job):
            if kind == "preview":
                recon = for_display(payload)
            elif kind == "done":
                w_plus, s_flat, recon_image, info = payload
                new_state = {**new_session(state["model"], state["seed"]), "photo_w_plus": w_plus.numpy(),
                             "photo_s": s_flat.numpy()}
                yield (for_display(aligned), for_display(recon_image),
                       f"Inverted in {info['seconds']:.0f} s · PSNR {info['psnr']:.1f} dB. The reconstruction is "
                       "now the source in every tab (a new seed goes back to generated faces).",
                       for_display(recon_image), new_state)
                return
            if kind == "preview" or time.monotonic() - last_yield > 0.5:
                last_yield = time.monotonic()
                done, total = payload if kind == "progress" else (None, None)
                yield (gr.update(), recon, f"Inverting… step {done}/{total}" if done else gr.update(), gr.update(),
                       state)
    except Cancelled:
        yield gr.update(), recon, "Inversion stopped; the source is unchanged.", gr.update(), state
    except Exception as exc:  # noqa: BLE001
        raise job_error(exc) from None


@user_errors
def on_fresh_render(model: str):
    """Saves a fresh renderer face (never produced by the generator) as the photo to upload."""
    image = STUDIO.fresh_render(model, random.randint(0, 2 ** 31 - 1))
    path = EXPORT_DIR / f"fresh_toyface_{int(time.time() * 1000)}.png"
    Image.fromarray(image).save(path)
    return str(path)


def api_invert_photo(model: str, photo_path: str, steps: float):
    """API: an uploaded photo → (reconstruction image, info with PSNR); model "" is the default model."""
    try:
        aligned, note = STUDIO.align_photo(model, photo_path, center_crop_if_no_face=False)
        _, _, recon, info = STUDIO.invert_photo(model, aligned, steps)
    except (ValueError, FileNotFoundError) as exc:
        raise gr.Error(str(exc)) from None
    return recon, {**info, "alignment": note}


def api_optimize(model: str, seed: float, text: str, steps: float, l2_lambda: float, id_lambda: float,
                 mode: str, space: str):
    """API: latent optimization of a seed → (image, info); model "" is the default model."""
    try:
        image, info = STUDIO.optimize(model, seed, text, steps, l2_lambda, id_lambda, mode=mode or "edit",
                                      space=space or "w_plus")
    except (ValueError, FileNotFoundError) as exc:
        raise gr.Error(str(exc)) from None
    info.pop("latent")
    return image, info


def api_apply_mapper(model: str, mapper: str, seed: float, strength: float):
    """API: a shipped mapper applied to a seed → (image, info)."""
    try:
        shipped = STUDIO.shipped_mappers(model)
        if mapper not in shipped:
            raise ValueError(f"Unknown mapper {mapper!r}; this model ships: {', '.join(shipped) or 'none yet'}.")
        [(seed_value, _, edited)] = STUDIO.apply_mapper(model, shipped[mapper], [seed], strength)
    except (ValueError, FileNotFoundError) as exc:
        raise gr.Error(str(exc)) from None
    return edited, {"model": STUDIO.model(model).name, "mapper": mapper, "seed": seed_value,
                    "strength": float(strength), "kind": "channels" if mapper.endswith("(channels)") else "w_plus"}


def api_global_edit(model: str, seed: float, neutral: str, target: str, alpha: float, beta: float):
    """API: (model, seed, neutral, target, alpha, beta) → (image, info). model "" is the default model."""
    try:
        image, info = STUDIO.global_edit(model, seed, neutral, target, alpha, beta)
    except (ValueError, FileNotFoundError) as exc:
        raise gr.Error(str(exc)) from None
    return image, info


# ------------------------------------------------------------------------------------------ layout
def build_demo() -> gr.Blocks:
    default_model = model_choices()[0]
    with gr.Blocks(title="StyleCLIP Studio") as demo:
        gr.Markdown("# StyleCLIP Studio\nEdit StyleGAN2 faces with text: describe the face and the change, "
                    "then drag the sliders.")
        state = gr.State(new_session(default_model, 0))
        with gr.Row():
            model = gr.Dropdown(model_choices(), value=default_model, label="Model", scale=2)
            seed = gr.Number(value=0, precision=0, minimum=0, maximum=2 ** 32 - 1, label="Seed", scale=1)
            random_btn = gr.Button("🎲 Random", scale=0)
        with gr.Accordion("📷 Use your own photo", open=False):
            with gr.Row():
                photo = gr.Image(type="filepath", label="Photo (PNG, JPEG, WebP, …; at most 20 MB)",
                                 sources=["upload", "clipboard"], elem_id="photo-in", height=220)
                photo_aligned = gr.Image(label="Aligned", type="numpy", interactive=False, height=220)
                photo_recon = gr.Image(label="Reconstruction (the new source)", type="numpy", interactive=False,
                                       height=220, elem_id="photo-recon")
            with gr.Row():
                photo_steps = gr.Slider(*INVERT_STEPS_RANGE, value=INVERT_STEPS_DEFAULT, step=1,
                                        label="inversion steps (W+)")
                photo_s_steps = gr.Slider(*INVERT_S_STEPS_RANGE, value=INVERT_S_STEPS_DEFAULT, step=1,
                                          label="S refinement steps (sharper; 0 = W+ only)")
                photo_center = gr.Checkbox(False, label="If no face is found, use the centre crop")
                photo_btn = gr.Button("Align and invert", variant="primary", elem_id="photo-run")
                photo_stop = gr.Button("Stop")
                fresh_btn = gr.Button("Render a fresh toyface", elem_id="photo-fresh")
            photo_status = gr.Markdown(elem_id="photo-status")
        with gr.Tabs():
            with gr.Tab("Global directions"):
                with gr.Row():
                    with gr.Column():
                        neutral = gr.Textbox(DEFAULT_NEUTRAL, label="Neutral (describes the face now)",
                                             max_lines=1)
                        target = gr.Textbox(DEFAULT_TARGET, label="Target (describes the face you want)",
                                            max_lines=1, elem_id="target-text")
                        alpha = gr.Slider(*ALPHA_RANGE, value=4.1, step=0.1, label="alpha — strength",
                                          elem_id="alpha-slider")
                        beta = gr.Slider(*BETA_RANGE, value=0.15, step=0.01, label="beta — disentanglement")
                        with gr.Row():
                            apply_btn = gr.Button("Apply edit", variant="primary")
                            undo_btn = gr.Button("Undo")
                            export_btn = gr.Button("Export")
                        edit_examples = gr.Dataset(components=[neutral, target],
                                                   samples=example_edit_samples(default_model),
                                                   label="Example edits (click to use)", samples_per_page=12,
                                                   elem_id="edit-examples")
                    with gr.Column():
                        with gr.Row():
                            original = gr.Image(label="Source", type="numpy", interactive=False)
                            edited = gr.Image(label="Edited", type="numpy", interactive=False, elem_id="edited-image")
                        info = gr.Markdown(elem_id="edit-info")
                        channels = gr.Dataframe(headers=["layer", "channel", "relevance"], label="Most relevant "
                                                "channels", interactive=False, max_height=260)
                examples = gr.Gallery(label="Examples (click to use)", columns=12, height=110,
                                      allow_preview=False)
                exports = gr.File(label="Downloads: edited PNG, S codes + direction (.npz), alpha sweep (GIF)",
                                  file_count="multiple", interactive=False)
                with gr.Accordion("Missing statistics?", open=False):
                    gr.Markdown("Global directions need per-model statistics (precomputed/<model>/). "
                                "For a model without them, compute them here (minutes on a CPU; resumable).")
                    compute_btn = gr.Button("Compute statistics")
                    compute_msg = gr.Markdown()
                gr.Markdown(HOW_IT_WORKS)
            with gr.Tab("Latent mapper"):
                gr.Markdown(MAPPER_NOTE)
                session_mappers = gr.State({})
                with gr.Row():
                    with gr.Column():
                        mapper_pick = gr.Dropdown(mapper_choices(default_model, {}), label="Mapper",
                                                  elem_id="mapper-pick")
                        mapper_seeds = gr.Textbox("", label="Seeds (e.g. 0-7, 12; empty: the current seed)",
                                                  max_lines=1, elem_id="mapper-seeds")
                        mapper_strength = gr.Slider(*MAPPER_STRENGTH_RANGE, value=1.0, step=0.1,
                                                    label="strength (1 = as trained)")
                        mapper_apply = gr.Button("Apply mapper", variant="primary", elem_id="mapper-apply")
                    with gr.Column():
                        mapper_gallery = gr.Gallery(label="Source and mapped, per seed", columns=4, height=300,
                                                    elem_id="mapper-gallery")
                        mapper_files = gr.File(label="Downloads: mapped PNGs and the mapper", file_count="multiple",
                                               interactive=False)
                with gr.Accordion("Train a new mapper", open=False):
                    with gr.Row():
                        with gr.Column():
                            train_kind = gr.Radio(MAPPER_KINDS, value="w_plus", label="kind", elem_id="train-kind")
                            train_neutral = gr.Textbox(DEFAULT_NEUTRAL, label="Neutral text (the edit starts here)",
                                                       max_lines=1, visible=False, elem_id="train-neutral")
                            train_text = gr.Textbox("smiling face", label="Text the mapper should achieve",
                                                    max_lines=1, elem_id="train-text")
                            train_steps = gr.Slider(*MAPPER_STEPS_RANGE, value=MAPPER_STEPS_DEFAULT, step=1,
                                                    label="steps", elem_id="train-steps")
                            train_l2 = gr.Slider(0.0, 2.0, value=0.8, step=0.05,
                                                 label="L2 weight — smaller edits more, larger keeps more")
                            train_groups = gr.CheckboxGroup(
                                list(MAPPER_GROUPS), value=list(MAPPER_GROUPS), label="Layers the mapper edits",
                                info="coarse: shapes and accessories (hats, glasses, eyes); medium and fine: "
                                     "colours (hair, background). Leaving out the others keeps more of the face.",
                                elem_id="train-groups")
                            with gr.Row():
                                train_btn = gr.Button("Train", variant="primary", elem_id="train-run")
                                train_stop = gr.Button("Stop")
                            train_status = gr.Markdown(elem_id="train-status")
                        with gr.Column():
                            train_plot = gr.LinePlot(x="step", y="value", color="term", label="Loss terms",
                                                     height=200)
                            train_preview = gr.Gallery(label="Preview: source / mapped", columns=4, height=200)
            with gr.Tab("Latent optimization"):
                gr.Markdown(OPTIMIZATION_NOTE)
                with gr.Row():
                    with gr.Column():
                        opt_text = gr.Textbox(DEFAULT_TARGET, label="Target description", max_lines=1,
                                              elem_id="opt-text")
                        opt_steps = gr.Slider(*OPT_STEPS_RANGE, value=model_zoo.get_bundle(default_model).opt_steps,
                                              step=1, label="steps", elem_id="opt-steps")
                        opt_l2 = gr.Slider(0.0, 0.1, value=0.008, step=0.001,
                                           label="L2 weight — stay close to the source")
                        opt_id = gr.Slider(0.0, 2.0, value=0.0, step=0.005, label="identity weight")
                        with gr.Row():
                            opt_mode = gr.Radio([("edit the seed", "edit"), ("free generation", "free")],
                                                value="edit", label="mode")
                            opt_space = gr.Radio([("W+", "w_plus"), ("S (conv channels)", "s")], value="w_plus",
                                                 label="latent space")
                        with gr.Row():
                            opt_run = gr.Button("Optimize", variant="primary", elem_id="opt-run")
                            opt_stop = gr.Button("Stop")
                    with gr.Column():
                        opt_image = gr.Image(label="Optimized (updates while it runs)", type="numpy",
                                             interactive=False, elem_id="opt-image")
                        opt_info = gr.Markdown(elem_id="opt-info")
                        opt_plot = gr.LinePlot(x="step", y="value", color="term", label="Loss terms",
                                               height=220)
                        opt_files = gr.File(label="Downloads: image, latent (.npz), optimization path (GIF)",
                                            file_count="multiple", interactive=False)
        gr.Markdown(f"<small>device: {STUDIO.device} · custom ops: {ops.describe(STUDIO.device)} · "
                    f"torch {torch.__version__}</small>")

        # Hidden API endpoints; their input components live in an invisible row so the page does not show them.
        with gr.Row(visible=False):
            # global_edit(model, seed, neutral, target, alpha, beta) -> (image, info)
            api_in = [gr.Textbox(), gr.Number(), gr.Textbox(), gr.Textbox(), gr.Number(), gr.Number()]
            api_out = [gr.Image(type="numpy"), gr.JSON()]
            api_btn = gr.Button()
            # invert_photo(model, photo, steps) -> (reconstruction, info); queued (seconds)
            invert_api_in = [gr.Textbox(), gr.File(type="filepath"), gr.Number()]
            invert_btn = gr.Button()
            # optimize(model, seed, text, steps, l2_lambda, id_lambda, mode, space) -> (image, info); queued
            opt_api_in = [gr.Textbox(), gr.Number(), gr.Textbox(), gr.Number(), gr.Number(), gr.Number(),
                          gr.Textbox(), gr.Textbox()]
            opt_api_btn = gr.Button()
            # apply_mapper(model, mapper, seed, strength) -> (image, info): mapper is a shipped mapper's name
            mapper_api_in = [gr.Textbox(), gr.Textbox(), gr.Number(), gr.Number()]
            mapper_api_btn = gr.Button()
        # Served outside the queue: one synthesis is cheaper than the queue's SSE round trips.
        api_btn.click(api_global_edit, api_in, api_out, api_name="global_edit", queue=False)
        invert_btn.click(api_invert_photo, invert_api_in, api_out, api_name="invert_photo")
        opt_api_btn.click(api_optimize, opt_api_in, api_out, api_name="optimize")
        mapper_api_btn.click(api_apply_mapper, mapper_api_in, api_out, api_name="apply_mapper")

        edit_inputs = [state, neutral, target, alpha, beta]
        edit_outputs = [edited, info, channels]
        source_event = dict(fn=on_source, inputs=[model, seed, state], outputs=[state, original],
                            api_visibility="private")
        for slider in (alpha, beta):
            slider.change(on_edit, edit_inputs, edit_outputs, trigger_mode="always_last",
                          show_progress="hidden", api_visibility="private")
        for box in (neutral, target):
            box.submit(on_new_text, [state, neutral, target, alpha], [beta, *edit_outputs],
                       api_visibility="private")
        edit_examples.click(lambda pair: tuple(pair), [edit_examples], [neutral, target],
                            api_visibility="private").then(
            on_new_text, [state, neutral, target, alpha], [beta, *edit_outputs], api_visibility="private")
        model.change(example_edits_update, [model], [edit_examples], api_visibility="private")
        seed.submit(**source_event).then(on_edit, edit_inputs, edit_outputs, api_visibility="private")
        model.change(**source_event).then(on_edit, edit_inputs, edit_outputs, api_visibility="private")
        # Mappers belong to one generator: the list follows the model, and session mappers of another model go.
        model.change(lambda m: (gr.update(choices=mapper_choices(m, {}), value=None), {}), [model],
                     [mapper_pick, session_mappers], api_visibility="private")
        random_btn.click(on_random, [model, state], [seed, state, original], api_visibility="private").then(
            on_edit, edit_inputs, edit_outputs, api_visibility="private")
        apply_btn.click(on_apply, edit_inputs, [state, original, alpha], api_visibility="private").then(
            on_edit, edit_inputs, edit_outputs, api_visibility="private")
        undo_btn.click(on_undo, [state], [state, original], api_visibility="private").then(
            on_edit, edit_inputs, edit_outputs, api_visibility="private")
        export_btn.click(on_export, edit_inputs, [exports], api_visibility="private")
        compute_btn.click(on_compute_stats, [state], [compute_msg], api_visibility="private")
        photo_event = photo_btn.click(on_photo, [state, photo, photo_center, photo_steps, photo_s_steps],
                                      [photo_aligned, photo_recon, photo_status, original, state],
                                      api_visibility="private")
        photo_event.then(on_edit, edit_inputs, edit_outputs, api_visibility="private")
        photo_stop.click(None, None, None, cancels=[photo_event], api_visibility="private")
        fresh_btn.click(on_fresh_render, [model], [photo], api_visibility="private")
        mapper_apply.click(on_apply_mapper, [state, mapper_pick, mapper_seeds, mapper_strength],
                           [mapper_gallery, mapper_files], api_visibility="private")
        # A channel mapper starts from a text pair and moves style channels, so it has no W+ L2 or layer groups.
        train_kind.change(lambda k: (gr.update(visible=k == "channels"), gr.update(visible=k != "channels"),
                                     gr.update(visible=k != "channels")),
                          [train_kind], [train_neutral, train_l2, train_groups], api_visibility="private")
        train_event = train_btn.click(on_train_mapper,
                                      [state, train_kind, train_neutral, train_text, train_steps, train_l2,
                                       train_groups, session_mappers],
                                      [train_status, train_plot, train_preview, mapper_pick, session_mappers],
                                      api_visibility="private")
        train_stop.click(None, None, None, cancels=[train_event], api_visibility="private")
        opt_event = opt_run.click(on_optimize, [state, opt_text, opt_steps, opt_l2, opt_id, opt_mode, opt_space],
                                  [opt_image, opt_info, opt_plot, opt_files], api_visibility="private")
        opt_stop.click(None, None, None, cancels=[opt_event], api_visibility="private")
        model.change(optimization_sliders, [model], [opt_steps, opt_l2, opt_id], api_visibility="private")

        def pick_example(evt: gr.SelectData, model_name, st):
            seed_value = EXAMPLE_SEEDS[evt.index]
            st, image = on_source(model_name, seed_value, st)
            return seed_value, st, image

        examples.select(pick_example, [model, state], [seed, state, original], api_visibility="private").then(
            on_edit, edit_inputs, edit_outputs, api_visibility="private")
        demo.load(_startup_view, [model, state], [state, original, examples], api_visibility="private").then(
            on_edit, edit_inputs, edit_outputs, api_visibility="private")
        demo.load(optimization_sliders, [model], [opt_steps, opt_l2, opt_id], api_visibility="private")
    return demo


def optimization_sliders(model: str):
    """The steps, L2 and identity sliders for a model: its defaults; the identity slider is set to 0 and locked,
    with the reason, when the model has no identity network."""
    try:
        loaded = STUDIO.model(model)
        available, note = STUDIO.identity_status(model)
    except (ValueError, FileNotFoundError) as exc:
        return gr.update(), gr.update(), gr.update(value=0.0, interactive=False, info=str(exc).splitlines()[0])
    steps, l2 = gr.update(value=loaded.bundle.opt_steps), gr.update(value=loaded.bundle.opt_l2_lambda)
    if available:
        return steps, l2, gr.update(value=loaded.bundle.opt_id_lambda, interactive=True, info=note)
    return steps, l2, gr.update(value=0.0, interactive=False, info=f"{note} The identity weight stays at 0.")


@user_errors
def _startup_view(model: str, state: dict):
    state, image = on_source(model, state["seed"], state)
    loaded = STUDIO.model(model)
    thumbs = [(loaded.render_s(loaded.s_of_seed(s)), f"seed {s}") for s in EXAMPLE_SEEDS]
    return state, image, thumbs


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ops.log_active_impl(log)
    try:  # load and warm up the default model so the first slider move is fast
        loaded = STUDIO.model("")
        loaded.render_s(loaded.s_of_seed(0))
        loaded.engine().direction(DEFAULT_NEUTRAL, DEFAULT_TARGET, 0.15)
        unknown_words(loaded, DEFAULT_TARGET)  # builds a closed-vocabulary CLIP's word list once
    except (ValueError, FileNotFoundError) as exc:
        log.warning("default model not ready: %s", exc)
    demo = build_demo()
    demo.queue(default_concurrency_limit=2)
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"), show_error=True)


if __name__ == "__main__":
    main()
