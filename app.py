"""StyleCLIP Studio: the Gradio UI. It only builds widgets and calls the library (styleclip.studio)."""

from __future__ import annotations

import functools
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
from styleclip.engines.precompute import precompute
from styleclip.models import model_zoo
from styleclip.engines.optimization import OptimizationCancelled
from styleclip.imaging import img_to_image
from styleclip.studio import (ALPHA_RANGE, BETA_RANGE, OPT_STEPS_DEFAULT, OPT_STEPS_RANGE, MissingStatisticsError,
                              Studio)

log = logging.getLogger("styleclip.app")
STUDIO = Studio()
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
    """Per-browser-session state: the model, the seed and the stack of applied edits (flat s codes)."""
    return {"model": model, "seed": int(seed), "stack": []}


def current_source(state: dict) -> torch.Tensor:
    loaded = STUDIO.model(state["model"])
    return torch.from_numpy(state["stack"][-1]) if state["stack"] else loaded.s_of_seed(state["seed"])


def format_info(info: dict) -> str:
    lines = [f"**{info['channels']} channels** moved · alpha {info['alpha']:+.2f} · beta {info['beta']:.3f} · "
             f"{info['timings_ms']['total']:.0f} ms",
             f"model `{info['model']}` · seed {info['seed']} · “{info['neutral']}” → “{info['target']}”"]
    return "\n\n".join(lines)


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
    for key in ("model", "seed", "neutral", "target", "alpha", "beta", "channels"):
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


OPTIMIZATION_NOTE = """Optimizes the **current seed's** latent (W+) so that CLIP matches the description, with an L2
pull toward the start and an optional identity term (StyleCLIP's latent optimization). The preview and the loss plot
update while it runs; *Stop* keeps what was reached. It starts from the seed's original image (applied global edits
are not included)."""


def on_optimize(state: dict, text: str, steps, l2_lambda, id_lambda):
    """Runs the optimization in a worker thread and streams (preview, status, loss table) to the page.

    Gradio cancels a streaming handler by closing it; `finally` then tells the worker to stop.
    """
    updates: queue.Queue = queue.Queue()
    stop = threading.Event()
    outcome: dict = {}
    rows: list[dict] = []

    def work():
        try:
            outcome["result"] = STUDIO.optimize(
                state["model"], state["seed"], text, steps, l2_lambda, id_lambda, should_stop=stop.is_set,
                on_preview=lambda step, image: updates.put(("preview", step, image)),
                on_step=lambda st: updates.put(("step", st, None)))
        except Exception as exc:  # noqa: BLE001 - reported to the page below
            outcome["error"] = exc
        finally:
            updates.put(None)

    threading.Thread(target=work, daemon=True, name="optimize").start()
    image, status, last_yield = None, "Starting…", 0.0
    try:
        while (item := updates.get()) is not None:
            kind, payload, extra = item
            if kind == "step":
                rows.extend({"step": payload.step, "term": term, "value": value} for term, value in
                            (("CLIP", payload.clip_loss), ("L2 (weighted)", float(l2_lambda) * payload.l2_loss),
                             ("identity (weighted)", float(id_lambda) * payload.id_loss)))
                status = f"step {payload.step}/{int(steps)} · CLIP loss {payload.clip_loss:.4f}"
            else:
                image = for_display(extra)
            if kind == "preview" or time.monotonic() - last_yield > 0.5:
                last_yield = time.monotonic()
                yield image, status, pd.DataFrame(rows)
    finally:
        stop.set()
    if "error" in outcome:
        exc = outcome["error"]
        if isinstance(exc, OptimizationCancelled):
            yield for_display(img_to_image(exc.result.img[0])), f"Stopped: {exc}", pd.DataFrame(rows)
            return
        if isinstance(exc, (ValueError, FileNotFoundError)):
            raise gr.Error(str(exc))
        log.error("optimization failed", exc_info=exc)
        raise gr.Error(f"Something went wrong ({type(exc).__name__}). Please try again.")
    result_image, info = outcome["result"]
    yield (for_display(result_image), f"Done in {info['seconds']:.1f} s · CLIP loss {info['clip_loss_start']:.4f} → "
           f"{info['clip_loss_end']:.4f} · seed {info['seed']} · “{info['text']}”", pd.DataFrame(rows))


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
                gr.Markdown("Per-prompt mapper networks: apply a trained mapper or train a new one. "
                            "*(This tab is being built: see the latent-mapper issue.)*")
            with gr.Tab("Latent optimization"):
                gr.Markdown(OPTIMIZATION_NOTE)
                with gr.Row():
                    with gr.Column():
                        opt_text = gr.Textbox(DEFAULT_TARGET, label="Target description", max_lines=1,
                                              elem_id="opt-text")
                        opt_steps = gr.Slider(*OPT_STEPS_RANGE, value=OPT_STEPS_DEFAULT, step=1, label="steps",
                                              elem_id="opt-steps")
                        opt_l2 = gr.Slider(0.0, 0.1, value=0.008, step=0.001,
                                           label="L2 weight — stay close to the source")
                        opt_id = gr.Slider(0.0, 0.1, value=0.0, step=0.001, label="identity weight")
                        with gr.Row():
                            opt_run = gr.Button("Optimize", variant="primary", elem_id="opt-run")
                            opt_stop = gr.Button("Stop")
                    with gr.Column():
                        opt_image = gr.Image(label="Optimized (updates while it runs)", type="numpy",
                                             interactive=False, elem_id="opt-image")
                        opt_info = gr.Markdown(elem_id="opt-info")
                        opt_plot = gr.LinePlot(x="step", y="value", color="term", label="Loss terms",
                                               height=220)
        gr.Markdown(f"<small>custom ops: {ops.describe()} · torch {torch.__version__}</small>")

        # hidden API endpoint global_edit(model, seed, neutral, target, alpha, beta) -> (image, info)
        with gr.Row(visible=False):
            api_in = [gr.Textbox(), gr.Number(), gr.Textbox(), gr.Textbox(), gr.Number(), gr.Number()]
            api_out = [gr.Image(type="numpy"), gr.JSON()]
            api_btn = gr.Button()
        # Served outside the queue: one synthesis is cheaper than the queue's SSE round trips.
        api_btn.click(api_global_edit, api_in, api_out, api_name="global_edit", queue=False)

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
        seed.submit(**source_event).then(on_edit, edit_inputs, edit_outputs, api_visibility="private")
        model.change(**source_event).then(on_edit, edit_inputs, edit_outputs, api_visibility="private")
        random_btn.click(on_random, [model, state], [seed, state, original], api_visibility="private").then(
            on_edit, edit_inputs, edit_outputs, api_visibility="private")
        apply_btn.click(on_apply, edit_inputs, [state, original, alpha], api_visibility="private").then(
            on_edit, edit_inputs, edit_outputs, api_visibility="private")
        undo_btn.click(on_undo, [state], [state, original], api_visibility="private").then(
            on_edit, edit_inputs, edit_outputs, api_visibility="private")
        export_btn.click(on_export, edit_inputs, [exports], api_visibility="private")
        compute_btn.click(on_compute_stats, [state], [compute_msg], api_visibility="private")
        opt_event = opt_run.click(on_optimize, [state, opt_text, opt_steps, opt_l2, opt_id],
                                  [opt_image, opt_info, opt_plot], api_visibility="private")
        opt_stop.click(None, None, None, cancels=[opt_event], api_visibility="private")

        def pick_example(evt: gr.SelectData, model_name, st):
            seed_value = EXAMPLE_SEEDS[evt.index]
            st, image = on_source(model_name, seed_value, st)
            return seed_value, st, image

        examples.select(pick_example, [model, state], [seed, state, original], api_visibility="private").then(
            on_edit, edit_inputs, edit_outputs, api_visibility="private")
        demo.load(_startup_view, [model, state], [state, original, examples], api_visibility="private").then(
            on_edit, edit_inputs, edit_outputs, api_visibility="private")
    return demo


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
    except (ValueError, FileNotFoundError) as exc:
        log.warning("default model not ready: %s", exc)
    demo = build_demo()
    demo.queue(default_concurrency_limit=2)
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"), show_error=True)


if __name__ == "__main__":
    main()
