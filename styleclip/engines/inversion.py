"""Projection of a real (aligned) photo into W+ by optimisation, with an optional S refinement.

loss = pixel_lambda · pixel(img, target) + clip_lambda · (1 − cos(CLIP(img), CLIP(target)))
       + w_avg_lambda · mean ‖w_l − latent_avg‖² + delta_lambda · mean ‖w_l − mean_l w‖²

- Start: latent_avg in every W+ row (the average face: a neutral start that every photo is equally far from).
- Pixel term on the generator's full-resolution image vs the target in [-1, 1]: MSE, L1, or the L1 of a
  Laplacian pyramid ("lap1", the app's choice: it keeps small parts such as a mouth that MSE blurs away).
- Perceptual term: CLIP image features through the shared `ClipModel.encode_image` (no extra network: CLIP is
  already loaded for editing, and its features reward matching hair / expression where MSE only blurs).
- Regularisers keep the latent where the generator and the editing directions behave: near latent_avg, and with
  W+ rows close to each other (an e4e-style "delta" penalty; rows that drift apart invert well but edit badly).
- Noise buffers stay as stored (the generator's deterministic buffers): fitting noise would put image detail
  into maps that the edits never touch.
- Optional S refinement (`s_steps`): a few Adam steps on the style tensors starting from the W+ result, with an
  L2 pull back to that start. Sharper reconstructions, but the result is then an S code (`result.s`).
- The learning rate follows the latent-optimisation schedule (`optimization.lr_schedule`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..models.checkpoints import CheckpointError, load_checkpoint, preview_keys
from ..models.clip_model import ClipModel
from ..models.generator import EqualLinear, Generator
from ..models.identity import _IR50_STAGES, _IRSEUnit
from .optimization import lr_schedule
from .precompute import Cancelled, ProgressFn

__all__ = ["DEFAULTS", "E4EEncoder", "E4EInverter", "InversionCancelled", "InversionResult", "InversionStep",
           "invert", "load_e4e", "psnr"]

DEFAULTS = {"steps": 200, "lr": 0.05, "pixel_lambda": 1.0, "clip_lambda": 0.5, "w_avg_lambda": 1e-4,
            "delta_lambda": 1e-3, "s_steps": 0, "s_lr": 0.01, "s_l2_lambda": 0.01}
PIXEL_LOSSES = ("mse", "l1", "lap1")
PreviewFn = Callable[[int, torch.Tensor], None]  # (step, img [1, 3, R, R])


def psnr(img: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of img vs target, both [N, 3, H, W] in [-1, 1] (peak-to-peak 2, i.e. 8-bit PSNR up to
    rounding): 10·log10(4 / MSE), with img clamped to [-1, 1] as it would be when saved."""
    mse = float(F.mse_loss(img.detach().float().clamp(-1, 1), target.detach().float()))
    return float("inf") if mse == 0 else 10.0 * math.log10(4.0 / mse)


@dataclass(frozen=True)
class InversionStep:
    """Loss parts of one step (measured before that step's update).

    Attributes:
        step: 1-based step number over both stages.
        stage: "w_plus" or "s".
        lr: learning rate of this step's update.
        loss: weighted total.
        pixel: pixel loss (MSE or L1 on [-1, 1]).
        clip: 1 − cos(CLIP(img), CLIP(target)).
        reg: the weighted regularisation (W+ stage: w_avg + delta terms; S stage: the S L2 term).
        psnr: PSNR (dB) of this step's image vs the target.
    """

    step: int
    stage: str
    lr: float
    loss: float
    pixel: float
    clip: float
    reg: float
    psnr: float

    def describe(self) -> str:
        return (f"{self.stage}: loss {self.loss:.4f} (pixel {self.pixel:.4f}, clip {self.clip:.4f}, "
                f"reg {self.reg:.5f}), PSNR {self.psnr:.2f} dB")


@dataclass(frozen=True)
class InversionResult:
    """What `invert` returns (and `InversionCancelled.result` holds).

    Attributes:
        w_plus: [1, L, D] the W+ latent (after the W+ stage; the S stage does not change it).
        img: [1, 3, R, R] float in about [-1, 1], the reconstruction (from `s` when the S stage ran).
        history: one `InversionStep` per completed step.
        psnr: PSNR (dB) of `img` vs the target (resized to R).
        s: the refined style tensors (list of [1, dim_l]) when s_steps > 0 ran, else None.
        psnr_start: PSNR of the start image (latent_avg) vs the target, for comparison.
    """

    w_plus: torch.Tensor
    img: torch.Tensor
    history: tuple[InversionStep, ...]
    psnr: float
    s: list[torch.Tensor] | None = None
    psnr_start: float = float("nan")

    def flat_s(self, generator: Generator) -> torch.Tensor:
        """[1, s_dim] the flat S code of the reconstruction: the refined code, or the W+ latent's when the S
        stage did not run."""
        with torch.inference_mode():
            return generator.s_to_flat(self.s if self.s is not None else generator.w_plus_to_s(self.w_plus))


class InversionCancelled(Cancelled):
    """`should_stop()` returned True; `result` holds the latest latent (not the best one) and its image."""

    def __init__(self, message: str, result: InversionResult):
        super().__init__(message)
        self.result = result


def laplacian_pyramid(img: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Band-pass images of img [N, C, H, W]: `levels` - 1 detail bands (finest first, [N, C, H/2^j, W/2^j])
    and the last blurred, downsampled residual. Binomial 5-tap blur, factor-2 steps, bilinear upsampling."""
    taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=img.device, dtype=img.dtype) / 16
    kernel = (taps[:, None] * taps[None, :]).expand(img.shape[1], 1, 5, 5)
    bands = []
    for _ in range(levels - 1):
        if min(img.shape[-2:]) < 4:
            break
        low = F.conv2d(F.pad(img, (2, 2, 2, 2), mode="reflect"), kernel, groups=img.shape[1])[..., ::2, ::2]
        bands.append(img - F.interpolate(low, size=img.shape[-2:], mode="bilinear", align_corners=False))
        img = low
    return bands + [img]


def lap1_loss(img: torch.Tensor, target: torch.Tensor, levels: int = 4) -> torch.Tensor:
    """Laplacian-pyramid L1 (Bojanowski et al., "Optimizing the latent space of generative networks"): the mean
    absolute difference of each band, summed over bands. The fine bands hold edges and small parts (a mouth, an
    earring) that a plain MSE lets an optimiser blur away; on the embedded model this loss reconstructs fresh
    renders closer (PSNR and attribute agreement) than MSE at the same step count (BENCHMARKS.md, inversion)."""
    return sum(F.l1_loss(a, b) for a, b in zip(laplacian_pyramid(img, levels), laplacian_pyramid(target, levels),
                                                strict=True))


_PIXEL_FNS = {"mse": F.mse_loss, "l1": F.l1_loss, "lap1": lap1_loss}


def _prepare_target(generator: Generator, img_target: torch.Tensor) -> torch.Tensor:
    if not isinstance(img_target, torch.Tensor) or img_target.ndim != 4 or tuple(img_target.shape[:2]) != (1, 3):
        shape = tuple(img_target.shape) if isinstance(img_target, torch.Tensor) else type(img_target).__name__
        raise ValueError(f"img_target must be [1, 3, H, W] float in [-1, 1]; got {shape}.")
    device = generator.device
    target = img_target.detach().to(device=device, dtype=torch.float32)
    if target.shape[-2:] != (generator.size, generator.size):
        # Antialiased area-like resize: a 1024 photo for a 256 generator must not alias.
        target = F.interpolate(target, size=(generator.size, generator.size), mode="bilinear",
                               align_corners=False, antialias=True)
    return target.clamp(-1, 1)


def _check_args(steps: int, s_steps: int, lrs: dict[str, float], pixel_loss: str,
                preview_every: int | None) -> None:
    if not isinstance(steps, int) or steps < 0 or not isinstance(s_steps, int) or s_steps < 0:
        raise ValueError(f"steps and s_steps must be whole numbers >= 0, got {steps!r} and {s_steps!r}.")
    if steps + s_steps < 1:
        raise ValueError("steps + s_steps must be >= 1.")
    for name, value in lrs.items():
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    if pixel_loss not in PIXEL_LOSSES:
        raise ValueError(f"pixel_loss must be one of {PIXEL_LOSSES}, got {pixel_loss!r}.")
    if preview_every is not None and preview_every < 1:
        raise ValueError(f"preview_every must be >= 1 or None, got {preview_every!r}.")


def invert(
    generator: Generator,
    clip_model: ClipModel | None,
    img_target: torch.Tensor,
    *,
    steps: int = DEFAULTS["steps"],
    lr: float = DEFAULTS["lr"],
    pixel_loss: str = "mse",
    pixel_lambda: float = DEFAULTS["pixel_lambda"],
    clip_lambda: float = DEFAULTS["clip_lambda"],
    w_avg_lambda: float = DEFAULTS["w_avg_lambda"],
    delta_lambda: float = DEFAULTS["delta_lambda"],
    s_steps: int = DEFAULTS["s_steps"],
    s_lr: float = DEFAULTS["s_lr"],
    s_l2_lambda: float = DEFAULTS["s_l2_lambda"],
    w_plus_0: torch.Tensor | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    preview_every: int | None = None,
    on_preview: PreviewFn | None = None,
) -> InversionResult:
    """Find w_plus whose image reconstructs `img_target`.

    Args:
        generator: the shared generator (not modified; gradients are taken w.r.t. the latent only).
        clip_model: the shared CLIP wrapper; None (or clip_lambda = 0) drops the perceptual term.
        img_target: [1, 3, H, W] float in [-1, 1], an FFHQ-aligned photo (see `alignment.align_face`); resized
            (antialiased) to the generator's resolution when H, W differ.
        steps: Adam steps on W+ (0 = only the S stage, from `w_plus_0` or latent_avg).
        lr: peak learning rate of the W+ stage.
        pixel_loss: "mse", "l1" or "lap1" (Laplacian-pyramid L1, `lap1_loss`: weighs fine detail more).
        pixel_lambda, clip_lambda: weights of the pixel and CLIP terms.
        w_avg_lambda: weight of mean over rows of ‖w_l − latent_avg‖² (summed over D).
        delta_lambda: weight of mean over rows of ‖w_l − mean_l w‖² (summed over D).
        s_steps: Adam steps on the style tensors after the W+ stage (0 = none).
        s_lr: peak learning rate of the S stage.
        s_l2_lambda: weight of Σ_l mean((s_l − s_l,start)²) in the S stage.
        w_plus_0: [1, L, D] start latent; default latent_avg in every row.
        progress: progress(done, total, "inversion: <loss parts>") after every step.
        should_stop: polled before every step; True raises `InversionCancelled` with the latest result.
        preview_every: every this many steps call on_preview(step, img [1, 3, R, R]) with a detached render.
        on_preview: see preview_every.

    Returns:
        InversionResult (w_plus [1, L, D], img [1, 3, R, R], history, psnr).

    Raises:
        ValueError: bad arguments (the message names the value).
        InversionCancelled: stopped by should_stop (a `Cancelled`; `.result` holds the latest latent).
    """
    _check_args(steps, s_steps, {"lr": lr, "s_lr": s_lr, "pixel_lambda": pixel_lambda, "clip_lambda": clip_lambda,
                                 "w_avg_lambda": w_avg_lambda, "delta_lambda": delta_lambda,
                                 "s_l2_lambda": s_l2_lambda}, pixel_loss, preview_every)
    target = _prepare_target(generator, img_target)  # [1, 3, R, R]
    device = target.device
    avg = generator.latent_avg.detach().to(device=device, dtype=torch.float32).clone()  # [D]
    if w_plus_0 is None:
        w_start = avg[None, None, :].expand(1, generator.n_latent, -1).clone()  # [1, L, D]
    else:
        if tuple(w_plus_0.shape) != (1, generator.n_latent, generator.style_dim):
            raise ValueError(f"w_plus_0 must be [1, {generator.n_latent}, {generator.style_dim}], "
                             f"got {tuple(w_plus_0.shape)}.")
        w_start = w_plus_0.detach().to(device=device, dtype=torch.float32).clone()
    use_clip = clip_model is not None and clip_lambda > 0
    with torch.no_grad():
        target_emb = clip_model.encode_image(target) if use_clip else None  # [1, E] unit
        psnr_start = psnr(generator.synthesis_w_plus(w_start), target)

    w_plus = w_start.clone().requires_grad_(True)
    s_latent: list[torch.Tensor] | None = None
    history: list[InversionStep] = []
    total = steps + s_steps

    def render() -> torch.Tensor:
        if s_latent is not None:
            return generator.synthesis(s_latent)
        return generator.synthesis_w_plus(w_plus)

    def result() -> InversionResult:
        with torch.no_grad():
            img = render().detach()
            s_out = [t.detach().clone() for t in s_latent] if s_latent is not None else None
            return InversionResult(w_plus.detach().clone(), img, tuple(history), psnr(img, target), s_out,
                                   psnr_start)

    def image_losses(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pix = _PIXEL_FNS[pixel_loss](img, target)
        if target_emb is None:
            return pix, torch.zeros((), device=device)
        return pix, 1.0 - (clip_model.encode_image(img) * target_emb).sum(-1).mean()

    def run_stage(stage: str, n: int, peak_lr: float, params: list[torch.Tensor],
                  reg_fn: Callable[[], torch.Tensor], offset: int) -> None:
        optimizer = torch.optim.Adam(params, lr=peak_lr)
        for i in range(n):
            if should_stop is not None and should_stop():
                raise InversionCancelled(f"inversion stopped after {offset + i} of {total} steps", result())
            step_lr = lr_schedule(i / n, peak_lr)
            for group in optimizer.param_groups:
                group["lr"] = step_lr
            with torch.enable_grad():  # also when the caller runs under no_grad
                img = render()
                pix, clip_term = image_losses(img)
                reg = reg_fn()
                loss = pixel_lambda * pix + clip_lambda * clip_term + reg
                grads = torch.autograd.grad(loss, params)
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            optimizer.step()
            # PSNR from the pre-update image (clamped, as it would be saved).
            history.append(InversionStep(offset + i + 1, stage, step_lr, loss.item(), pix.item(), clip_term.item(),
                                         reg.item(), psnr(img, target)))
            if progress is not None:
                progress(offset + i + 1, total, f"inversion {history[-1].describe()}")
            if on_preview is not None and preview_every and (offset + i + 1) % preview_every == 0:
                with torch.no_grad():
                    on_preview(offset + i + 1, render().detach())

    def w_reg() -> torch.Tensor:
        to_avg = ((w_plus - avg) ** 2).sum(-1).mean()  # mean over rows of ‖w_l − avg‖²
        delta = ((w_plus - w_plus.mean(1, keepdim=True)) ** 2).sum(-1).mean()  # rows' spread
        return w_avg_lambda * to_avg + delta_lambda * delta

    if steps > 0:
        run_stage("w_plus", steps, lr, [w_plus], w_reg, 0)
    if s_steps > 0:
        with torch.no_grad():
            s_start = [s.detach().clone() for s in generator.w_plus_to_s(w_plus.detach())]  # list of [1, dim_l]
        s_latent = [s.clone().requires_grad_(True) for s in s_start]

        def s_reg() -> torch.Tensor:
            return s_l2_lambda * sum(((s - s0) ** 2).mean() for s, s0 in zip(s_latent, s_start, strict=True))

        run_stage("s", s_steps, s_lr, s_latent, s_reg, steps)
    return result()


# ----------------------------------------------------------------------------------------- e4e encoder

E4E_INPUT = 256  # e4e encodes FFHQ-aligned faces resized to 256 × 256, normalised to [-1, 1]
_E4E_COARSE, _E4E_MIDDLE = 3, 7  # W+ rows < 3 read the 16 px features, < 7 the 32 px, the rest 64 px
_E4E_EXPECTED = ("an e4e checkpoint (e4e_ffhq_encode.pt: a dict with 'state_dict' holding encoder.* and decoder.* "
                 "tensors, plus 'latent_avg')")


class _GradualStyleBlock(nn.Module):
    """Feature map [N, C, R, R] → one W+ row [N, D]: log2(R) stride-2 3×3 convs with leaky ReLU (down to 1 px),
    then an equalised linear layer. Attribute names (convs.<k>, linear) are the official key names."""

    def __init__(self, in_channels: int, out_channels: int, spatial: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, 2, 1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x).flatten(1))  # [N, D, 1, 1] → [N, D]


class E4EEncoder(nn.Module):
    """The e4e encoder (`Encoder4Editing`, IR-SE50 backbone): aligned face → W+ offsets from latent_avg.

    Layout (attribute names = the official state-dict names without the "encoder." prefix):
        input_layer: [conv3×3 3→base (no bias), BN, PReLU]
        body.0-23:   IR-SE units over widths base·(1, 2, 4, 8) with 3/4/14/3 units (shared with ArcFace)
        styles.0-(n_styles−1): one `_GradualStyleBlock` per W+ row (16, 32 or 64 px input, see _E4E_COARSE)
        latlayer1/2: 1×1 convs that bring the 32 px and 64 px backbone features to style_dim (FPN-style)
    Row 0 is a full code; rows 1.. are deltas added to it (e4e's "progressive" deltas, all active at inference).
    The official FFHQ model has base 64, style_dim 512, n_styles 18; the FPN sums need style_dim = 8·base.
    """

    def __init__(self, n_styles: int = 18, base: int = 64, style_dim: int = 512):
        super().__init__()
        if base < 16 or base % 16:
            raise ValueError(f"e4e's base width must be a multiple of 16 (SE blocks reduce by 16); got {base}.")
        if style_dim != 8 * base:
            raise ValueError(f"e4e needs style_dim = 8·base (the last stage's width); got {style_dim} and {base}.")
        self.n_styles, self.base, self.style_dim = n_styles, base, style_dim
        self.input_layer = nn.Sequential(nn.Conv2d(3, base, 3, 1, 1, bias=False), nn.BatchNorm2d(base),
                                         nn.PReLU(base))
        units = []
        in_channels = base
        for in_ch, depth, count in _ir50_stages(base):
            units.append(_IRSEUnit(in_ch, depth, 2))
            units += [_IRSEUnit(depth, depth, 1) for _ in range(count - 1)]
            in_channels = depth
        self.body = nn.Sequential(*units)
        self.styles = nn.ModuleList(
            _GradualStyleBlock(in_channels, style_dim, 16 if i < _E4E_COARSE else 32 if i < _E4E_MIDDLE else 64)
            for i in range(n_styles))
        self.latlayer1 = nn.Conv2d(4 * base, style_dim, 1, 1, 0)
        self.latlayer2 = nn.Conv2d(2 * base, style_dim, 1, 1, 0)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """img [N, 3, 256, 256] in [-1, 1] → codes [N, n_styles, style_dim] (add latent_avg for w_plus)."""
        x = self.input_layer(img)
        feats = {}
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in (6, 20, 23):  # the ends of the 128-, 256- and 512-wide stages: 64, 32 and 16 px
                feats[i] = x
        c1, c2, c3 = feats[6], feats[20], feats[23]
        w0 = self.styles[0](c3)  # [N, D]
        rows = [w0]
        features = c3
        for i in range(1, self.n_styles):
            if i == _E4E_COARSE:
                features = _upsample_add(c3, self.latlayer1(c2))  # 32 px
            elif i == _E4E_MIDDLE:
                features = _upsample_add(features, self.latlayer2(c1))  # 64 px
            rows.append(w0 + self.styles[i](features))
        return torch.stack(rows, dim=1)  # [N, n_styles, D]


def _ir50_stages(base: int) -> tuple[tuple[int, int, int], ...]:
    """The IR-50 stages with widths scaled from the official 64 to `base` (base = 64 is the official network)."""
    return tuple((in_ch * base // 64, depth * base // 64, count) for in_ch, depth, count in _IR50_STAGES)


def _upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bilinear (align_corners=True, as upstream's FPN) upsampling of x to y's size, plus y."""
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y


class E4EInverter(nn.Module):
    """An e4e encoder plus its latent_avg: `encode(img)` gives w_plus in one forward pass (no optimisation)."""

    def __init__(self, encoder: E4EEncoder, latent_avg: torch.Tensor):
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.register_buffer("latent_avg", latent_avg.detach().float().clone())  # [n_styles, D] or [D]

    @torch.no_grad()
    def encode(self, img: torch.Tensor) -> torch.Tensor:
        """img [N, 3, H, W] in [-1, 1] (FFHQ-aligned) → w_plus [N, n_styles, D].

        The input is resized (antialiased) to 256 × 256 as e4e's test transform does.
        """
        if not isinstance(img, torch.Tensor) or img.ndim != 4 or img.shape[1] != 3:
            shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise ValueError(f"encode expects img [N, 3, H, W] float in [-1, 1]; got {shape}.")
        weight = self.encoder.input_layer[0].weight
        x = img.to(device=weight.device, dtype=weight.dtype)
        if x.shape[-2:] != (E4E_INPUT, E4E_INPUT):
            x = F.interpolate(x, size=(E4E_INPUT, E4E_INPUT), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > E4E_INPUT)
        codes = self.encoder(x)
        return codes + self.latent_avg.reshape(1, -1, codes.shape[-1])  # [D] or [L, D] broadcasts over rows


def load_e4e(path: str | os.PathLike[str], generator: Generator | None = None,
             device: str | torch.device = "cpu") -> E4EInverter:
    """Load the official e4e checkpoint (or one in its format), safely (`torch.load(weights_only=True)`).

    Sizes (n_styles, widths) are read from the tensors; keys and shapes must then match exactly.

    Args:
        path: e.g. e4e_ffhq_encode.pt (~1.2 GB; only the encoder.* part is used: our generator decodes).
        generator: used for latent_avg when the file has none, and to check n_styles / style_dim against it.

    Returns:
        E4EInverter in eval mode on `device`.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError (a ValueError): not an e4e checkpoint; the message names what is missing or different.
    """
    ckpt = load_checkpoint(Path(path), required_keys=("state_dict",), expected=_E4E_EXPECTED)
    state = {k[len("encoder."):]: v for k, v in ckpt["state_dict"].items()
             if isinstance(k, str) and k.startswith("encoder.")}
    if "input_layer.0.weight" not in state or "styles.0.linear.weight" not in state:
        raise CheckpointError(f"{path} is not {_E4E_EXPECTED}: no encoder.input_layer / encoder.styles tensors; "
                              f"found {preview_keys(ckpt['state_dict'])}.")
    base = int(state["input_layer.0.weight"].shape[0])
    style_dim = int(state["styles.0.linear.weight"].shape[0])
    n_styles = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("styles."))
    if generator is not None and (n_styles, style_dim) != (generator.n_latent, generator.style_dim):
        raise CheckpointError(f"{path} encodes {n_styles} × {style_dim} latents, but the generator takes "
                              f"{generator.n_latent} × {generator.style_dim}.")
    try:
        encoder = E4EEncoder(n_styles, base, style_dim)
    except ValueError as exc:
        raise CheckpointError(f"{path} is not {_E4E_EXPECTED}: {exc}") from None
    expected = encoder.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{path} is not {_E4E_EXPECTED}: missing {missing[:4]}, unexpected {unexpected[:4]}, "
                              f"wrong shape {wrong[:4]} (of {len(expected)} encoder tensors).")
    full = {k: state.get(k, expected[k]) for k in expected}  # absent BatchNorm counters keep their defaults
    full = {k: v.float() if v.is_floating_point() else v for k, v in full.items()}  # fp16 copies → fp32
    encoder.load_state_dict(full, strict=True)
    latent_avg = ckpt.get("latent_avg")
    if latent_avg is None:
        if generator is None:
            raise CheckpointError(f"{path} has no latent_avg; pass the generator to use its latent_avg.")
        latent_avg = generator.latent_avg
    if not isinstance(latent_avg, torch.Tensor) or latent_avg.shape[-1] != style_dim or \
            latent_avg.numel() not in (style_dim, n_styles * style_dim):
        raise CheckpointError(f"{path}: latent_avg must be [{style_dim}] or [{n_styles}, {style_dim}], got "
                              f"{getattr(latent_avg, 'shape', type(latent_avg).__name__)}.")
    return E4EInverter(encoder, latent_avg.reshape(-1, style_dim).squeeze(0)).to(device)
