"""Latent optimization (StyleCLIP `optimization/run_optimization.py`): Adam on W+ (or S) toward a text prompt.

loss = CLIP loss + l2_lambda · Σ(latent − latent_0)² + id_lambda · identity loss [+ dir_lambda · StyleGAN-NADA's
directional CLIP loss, off by default as upstream has none], with the official
learning-rate schedule (linear ramp-up over the first 5 % of the steps, cosine ramp-down over the last 25 %).

Differences from the official script, on purpose:
- The CLIP loss goes through the shared `ClipModel.encode_image` (bilinear resize to CLIP's input with
  antialiasing, then CLIP's mean/std normalisation), the same image path every engine uses. The official loss
  nearest-upsamples ×7, average-pools by size/32 and skips the normalisation.
- For the loss the generator stops at the smallest resolution >= CLIP's input (`until_resolution`, e.g. 256
  for FFHQ-1024 with ViT-B/32): the layers above it add little to what CLIP sees at 224 px, and skipping them
  made a step about 2.4x cheaper on the CPU (config-f 1024 + a ViT-B/32-sized CLIP). Consequence: W+ rows and
  S tensors that only feed those layers get no CLIP gradient and stay at their start. The returned image is
  rendered at full resolution. `loss_resolution=generator.size` restores the full-resolution loss.
- Gradients are taken with `torch.autograd.grad` w.r.t. the latent only, so the shared generator's parameters
  neither receive nor accumulate `.grad`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..models.clip_model import ClipModel
from ..models.generator import Generator
from ..models.identity import IdentityModel
from .clip_losses import directional_loss, text_change_direction
from .precompute import Cancelled, ProgressFn, clip_render_resolution, sample_w

__all__ = [
    "DEFAULTS",
    "STAGE",
    "OptimizationCancelled",
    "OptimizationResult",
    "OptimizationStep",
    "lr_schedule",
    "optimize",
]

# The official script's defaults (run_optimization.py argparse). Its notebook uses steps=40, id_lambda=0.005.
DEFAULTS = {"steps": 300, "lr": 0.1, "l2_lambda": 0.008, "id_lambda": 0.0, "truncation": 0.7}
SPACES = ("w_plus", "s")
STAGE = "optimization"
PreviewFn = Callable[[int, torch.Tensor], None]  # (step, img [N, 3, R, R])


def lr_schedule(t: float, lr: float, rampdown: float = 0.25, rampup: float = 0.05) -> float:
    """The official learning rate at progress t = step / steps in [0, 1).

    lr · ease(min(1, (1 − t) / rampdown)) · min(1, t / rampup), with ease(x) = 0.5 − 0.5·cos(πx): a linear
    ramp-up over the first `rampup` of the run (lr = 0 at t = 0, so the first step does not move the latent)
    and a cosine ramp-down over the last `rampdown`.
    """
    down = min(1.0, (1.0 - t) / rampdown)
    down = 0.5 - 0.5 * math.cos(down * math.pi)
    return lr * down * min(1.0, t / rampup)


@dataclass(frozen=True)
class OptimizationStep:
    """The loss parts of one step, measured on the latent before that step's update.

    Attributes:
        step: 1-based step number.
        lr: the learning rate used for this step's update.
        loss: the total, clip_loss + l2_lambda·l2_loss + id_lambda·id_loss.
        clip_loss: mean over the batch of 1 − cos(CLIP(img), CLIP(text)).
        l2_loss: Σ(latent − latent_0)² (a sum over all elements, not a mean, as upstream).
        id_loss: mean over the batch of the identity loss (0.0 when id_lambda is 0).
        dir_loss: mean over the batch of the directional loss (0.0 when dir_lambda is 0).
    """

    step: int
    lr: float
    loss: float
    clip_loss: float
    l2_loss: float
    id_loss: float
    dir_loss: float = 0.0

    def describe(self) -> str:
        return (f"loss {self.loss:.4f} (clip {self.clip_loss:.4f}, l2 {self.l2_loss:.4f}, "
                f"id {self.id_loss:.4f}" + (f", dir {self.dir_loss:.4f})" if self.dir_loss else ")"))


@dataclass(frozen=True)
class OptimizationResult:
    """What `optimize` returns (and what `OptimizationCancelled.result` holds).

    Attributes:
        w_plus: [N, L, D] the optimized latent; None when space == "s" (S codes have no W+ preimage in
            general).
        img: [N, 3, R, R] float in about [-1, 1], rendered from the final latent at full resolution.
        history: one `OptimizationStep` per completed step.
        s: with space == "s", the optimized style tensors (list of [N, dim_l]); else None.
        space: "w_plus" or "s".
        loss_resolution: the resolution the generator rendered at for the losses.
        final_clip_loss: 1 − cos(CLIP(img), CLIP(text)) of the returned full-resolution `img`, batch mean.
    """

    w_plus: torch.Tensor | None
    img: torch.Tensor
    history: tuple[OptimizationStep, ...]
    s: list[torch.Tensor] | None = None
    space: str = "w_plus"
    loss_resolution: int = 0
    final_clip_loss: float = float("nan")
    steps_done: int = field(default=0)


class OptimizationCancelled(Cancelled):
    """`should_stop()` returned True. `result` holds the LATEST latent (after the last completed step, not the
    lowest-loss one: the losses trade off against each other, and latest is what a preview showed), its
    full-resolution image and the history so far."""

    def __init__(self, message: str, result: OptimizationResult):
        super().__init__(message)
        self.result = result


def _check_args(steps: int, lr: float, l2_lambda: float, id_lambda: float, space: str,
                identity: IdentityModel | None, preview_every: int | None) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, got {steps!r}.")
    for name, value in (("lr", lr), ("l2_lambda", l2_lambda), ("id_lambda", id_lambda)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}.")
    if id_lambda > 0 and identity is None:
        raise ValueError(f"id_lambda is {id_lambda} but no identity model was given; pass identity= or set "
                         "id_lambda=0.")
    if preview_every is not None and preview_every < 1:
        raise ValueError(f"preview_every must be >= 1 or None, got {preview_every!r}.")


def _checked_s(generator: Generator, s_0: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """s_0 as float tensors on the generator's device, after checking one [N, dim_l] tensor per style layer."""
    dims = [layer.dim for layer in generator.style_layers]
    shapes = [tuple(t.shape) for t in s_0]
    if len(shapes) != len(dims) or any(len(sh) != 2 or sh[1] != d or sh[0] != shapes[0][0]
                                       for sh, d in zip(shapes, dims, strict=False)):
        raise ValueError(f"s_0 must be {len(dims)} tensors [N, dim_l] with dims {dims}, got shapes {shapes}.")
    device = generator.device
    return [t.detach().to(device=device, dtype=torch.float32).clone() for t in s_0]


def _initial_w_plus(generator: Generator, w_plus_0: torch.Tensor | None, seed: int | None,
                    truncation: float) -> torch.Tensor:
    """The start latent [N, L, D] as an ordinary (non-inference) tensor on the generator's device."""
    device = generator.device
    if w_plus_0 is None:
        if seed is None:
            raise ValueError("pass w_plus_0 or a seed to start from.")
        if not isinstance(seed, int) or not 0 <= seed < 2 ** 32:
            raise ValueError(f"seed must be a whole number in 0..{2 ** 32 - 1}, got {seed!r}.")
        # The seed convention of the CLI and app: numpy RandomState(seed) normals, truncated to latent_avg.
        w = sample_w(generator, 1, seed, truncation)
        with torch.inference_mode():
            w_plus_0 = generator.w_to_w_plus(w)
    expected = (generator.n_latent, generator.style_dim)
    if w_plus_0.ndim != 3 or tuple(w_plus_0.shape[1:]) != expected:
        raise ValueError(f"w_plus_0 must be [N, {expected[0]}, {expected[1]}] for this generator, "
                         f"got {tuple(w_plus_0.shape)}.")
    # clone() outside inference mode: cached/inference tensors cannot take part in autograd.
    return w_plus_0.detach().to(device=device, dtype=torch.float32).clone()


def optimize(
    generator: Generator,
    clip_model: ClipModel,
    text: str,
    w_plus_0: torch.Tensor | None = None,
    *,
    steps: int = DEFAULTS["steps"],
    lr: float = DEFAULTS["lr"],
    l2_lambda: float = DEFAULTS["l2_lambda"],
    id_lambda: float = DEFAULTS["id_lambda"],
    identity: IdentityModel | None = None,
    space: str = "w_plus",
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    preview_every: int | None = None,
    on_preview: PreviewFn | None = None,
    on_step: Callable[[OptimizationStep], None] | None = None,
    seed: int | None = 0,
    truncation: float = DEFAULTS["truncation"],
    loss_resolution: int | None = None,
    s_0: Sequence[torch.Tensor] | None = None,
    clip_views: int = 1,
    dir_lambda: float = 0.0,
    neutral: str = "face",
) -> OptimizationResult:
    """Edit a latent so its image matches `text` (StyleCLIP latent optimization, "edit" mode).

    Args:
        generator: the shared generator (not modified; no gradients accumulate in it).
        clip_model: the shared CLIP wrapper.
        text: the target description (non-empty, at most 77 tokens).
        w_plus_0: [N, L, D] start latent (e.g. an inverted photo); None: one latent from `seed`.
        steps: Adam steps (official 300; its notebook 40).
        lr: peak learning rate (official 0.1), scheduled by `lr_schedule`.
        l2_lambda: weight of Σ(latent − latent_0)² (official 0.008); larger keeps the edit closer to the
            start.
        id_lambda: weight of the identity loss (official 0.0, notebook 0.005); needs `identity`.
        identity: an `IdentityModel`; its loss compares each render with the start image (fixed reference).
        space: "w_plus" (Adam on the [N, L, D] latent) or "s" (Adam on the non-ToRGB style tensors, the l2
            term summed over all S tensors, as upstream's --work_in_stylespace).
        progress: called after every step as progress(done, total, stage) with
            stage = "optimization: loss L (clip C, l2 X, id I)", the loss parts of that step (`STAGE` is the
            part before the colon, for callers that group by stage). The same numbers are kept, as floats, in
            `result.history`.
        should_stop: polled before every step; True raises `OptimizationCancelled` (with the latest latent).
        preview_every: render the full image every this many steps and pass it to `on_preview(step, img)`;
            the final image is passed too, as step `steps`.
        on_preview: receives (step, img [N, 3, R, R]) — a detached full-resolution render.
        on_step: receives every step's `OptimizationStep` (the loss parts as floats, e.g. for a live plot).
        seed: used only when `w_plus_0` is None (numpy RandomState(seed) normal z, like the CLI/app).
        truncation: used only with `seed` (official 0.7 for the random start latent).
        loss_resolution: resolution the losses see; default the smallest generator resolution >= CLIP's input.
        s_0: with space == "s", the start style tensors (list of [N, dim_l], e.g. an inversion refined in S,
            which has no exact W+ preimage) instead of those of `w_plus_0`; the ToRGB ones stay fixed.
        clip_views: CLIP reads the image itself (1, as upstream) or also `clip_views` − 1 copies shifted by a
            few pixels and lightly noised, the loss averaged over all: a latent that satisfies CLIP on one exact
            image only (an adversarial tint rather than the described change) no longer pays off. Seeded from
            `seed`, so a run stays deterministic.
        dir_lambda: weight of the directional loss 1 − cos(CLIP(img) − CLIP(img_0), CLIP(text) − CLIP(neutral))
            (`clip_losses.directional_loss`; 0 = the official objective); it asks the image to change only
            along the text's change, which keeps the other attributes.
        neutral: the text the directional loss's change starts from.

    Returns:
        OptimizationResult with the final latent, its full-resolution image and the per-step loss history.

    Raises:
        ValueError: bad arguments (the message names the value).
        OptimizationCancelled: stopped by should_stop (a `Cancelled`; `.result` holds the latest latent).
    """
    _check_args(steps, lr, l2_lambda, id_lambda, space, identity, preview_every)
    if not math.isfinite(dir_lambda) or dir_lambda < 0:
        raise ValueError(f"dir_lambda must be a finite number >= 0, got {dir_lambda!r}.")
    if not isinstance(clip_views, int) or clip_views < 1:
        raise ValueError(f"clip_views must be a whole number >= 1, got {clip_views!r}.")
    view_rng = torch.Generator().manual_seed(0 if seed is None else int(seed))
    res = loss_resolution if loss_resolution is not None else clip_render_resolution(generator, clip_model)
    if res not in generator.config.channels():
        raise ValueError(f"loss_resolution must be a power of two in 4..{generator.size}, got {res}.")
    until = None if res == generator.size else res
    if s_0 is not None and space != "s":
        raise ValueError("s_0 (a start in S) needs space='s'; a W+ optimization starts from w_plus_0.")
    w0 = _initial_w_plus(generator, w_plus_0, seed, truncation) if s_0 is None else None
    text_emb = clip_model.encode_text([text])  # [1, D] unit; validates the prompt before any work
    text_change = text_change_direction(clip_model, neutral, text) if dir_lambda > 0 else None

    with torch.no_grad():
        if space == "w_plus":
            start = [w0]
            trainable = [True]
        else:
            start = [s.detach().clone() for s in (generator.w_plus_to_s(w0) if s_0 is None
                                                  else _checked_s(generator, s_0))]  # list of [N, dim_l]
            # Only the conv styles move, as upstream: ToRGB styles mostly shift colours, not content.
            trainable = [not layer.is_torgb for layer in generator.style_layers]
        # [N, 3, res, res]: the identity reference, rendered like every step's image.
        img_0 = generator.synthesis(_to_s(generator, start, space), until_resolution=until)
        id_ref = identity.embed(img_0) if id_lambda > 0 else None  # [N, D_id], the fixed reference
        emb_0 = clip_model.encode_image(img_0) if text_change is not None else None  # [N, E]

    latent = [t.clone().requires_grad_(flag) for t, flag in zip(start, trainable, strict=True)]
    params = [t for t in latent if t.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    history: list[OptimizationStep] = []

    def result() -> OptimizationResult:
        with torch.no_grad():
            final = [t.detach().clone() for t in latent]
            img = generator.synthesis(_to_s(generator, final, space))
            final_clip = float(_clip_loss(clip_model.encode_image(img), text_emb).mean())
        return OptimizationResult(
            w_plus=final[0] if space == "w_plus" else None, img=img, history=tuple(history),
            s=final if space == "s" else None, space=space, loss_resolution=res, final_clip_loss=final_clip,
            steps_done=len(history))

    for i in range(steps):
        if should_stop is not None and should_stop():
            raise OptimizationCancelled(f"optimization stopped after {i} of {steps} steps", result())
        step_lr = lr_schedule(i / steps, lr)
        for group in optimizer.param_groups:
            group["lr"] = step_lr

        with torch.enable_grad():  # also when the caller runs under no_grad
            img = generator.synthesis(_to_s(generator, latent, space), until_resolution=until)
            emb = clip_model.encode_image(_views(img, clip_views, view_rng))  # [views·N, E], plain image first
            clip_loss = _clip_loss(emb, text_emb).mean()
            l2_loss = sum(((t - t0) ** 2).sum() for t, t0 in zip(latent, start, strict=True))
            loss = clip_loss + l2_lambda * l2_loss
            id_loss = torch.zeros(())
            if id_ref is not None:
                id_loss = identity.loss_to(img, id_ref).mean()
                loss = loss + id_lambda * id_loss
            dir_loss = torch.zeros(())
            if emb_0 is not None:
                dir_loss = directional_loss(emb[: img.shape[0]], emb_0, text_change).mean()
                loss = loss + dir_lambda * dir_loss
            grads = torch.autograd.grad(loss, params)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        optimizer.step()

        history.append(OptimizationStep(i + 1, step_lr, loss.item(), clip_loss.item(), l2_loss.item(),
                                        id_loss.item(), dir_loss.item()))
        if on_step is not None:
            on_step(history[-1])
        if progress is not None:
            progress(i + 1, steps, f"{STAGE}: {history[-1].describe()}")
        if on_preview is not None and preview_every and (i + 1) % preview_every == 0 and i + 1 < steps:
            with torch.no_grad():
                on_preview(i + 1, generator.synthesis(_to_s(generator, latent, space)).detach())
    out = result()
    if on_preview is not None and preview_every:
        on_preview(steps, out.img)
    return out


def _to_s(generator: Generator, latent: Sequence[torch.Tensor], space: str) -> list[torch.Tensor]:
    """The style tensors for `synthesis` from the optimized variables ([w_plus] or the S list)."""
    return generator.w_plus_to_s(latent[0]) if space == "w_plus" else list(latent)


def _views(img: torch.Tensor, count: int, rng: torch.Generator) -> torch.Tensor:
    """img [N, 3, R, R] and count − 1 copies, each rolled by up to R/32 pixels and with noise of std 0.03 →
    [count·N, 3, R, R]. Small enough that CLIP reads the same face (its training saw such shifts), large enough
    that a pixel-exact adversarial pattern does not survive."""
    if count == 1:
        return img
    max_shift = max(1, img.shape[-1] // 32)
    views = [img]
    for _ in range(count - 1):
        dy, dx = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=rng))
        noise = torch.randn(img.shape, generator=rng).to(img.device, img.dtype)
        views.append(torch.roll(img, shifts=(dy, dx), dims=(2, 3)) + 0.03 * noise)
    return torch.cat(views)


def _clip_loss(emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """1 − cos(CLIP(img), text) per sample: emb [N, D] unit image embeddings, text_emb [1, D] unit → [N]."""
    return 1.0 - (emb * text_emb).sum(dim=-1)
