"""Identity models behind one interface: ArcFace IR-SE50 (real faces) and the embedded domain's identity network.

Every engine that wants "keep the same person" uses `IdentityModel`: `embed(img)` gives unit vectors and
`loss(img_a, img_b)` gives 1 - cosine per sample, with `img_b` treated as the fixed reference (detached), as
StyleCLIP's ID loss does.

Two implementations:
- `ArcFaceIRSE50`: the IR-SE50 ArcFace backbone that StyleCLIP, pSp and e4e use for their ID loss, with the
  official image preparation (pool to 256, crop rows 35:223 / cols 32:220, pool to 112). Its `state_dict()`
  uses the key names of the official `model_ir_se50.pth` (input_layer.*, body.0-23.*, output_layer.*; 397
  entries), so that file loads strictly through `load_arcface`.
- `styleclip.toyfaces.identity_net.ToyfacesIdentity`: for the embedded toyfaces domain, where no
  face-recognition network exists. Trained contrastively on renders (`python -m
  styleclip.toyfaces.train_identity`) to embed what makes a toy face the same person (skin tone, eye colour,
  nose, face width) and to ignore what edits change (hair, glasses, hat, expression, background, ...). It is
  not the attribute classifier, which only measures.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import registry
from .checkpoints import CheckpointError, load_checkpoint, preview_keys

__all__ = [
    "ArcFaceIRSE50",
    "IdentityModel",
    "arcface_prepare",
    "identity_for_bundle",
    "load_arcface",
    "load_toyfaces_identity",
]

# ---------------------------------------------------------------------------------------------- interface


class IdentityModel(nn.Module):
    """An identity embedding network, frozen and in eval mode.

    Subclasses implement `features(img) -> [N, D]` (differentiable w.r.t. img, not necessarily normalised) and
    set `embed_dim` and `kind`.
    """

    embed_dim: int = 0
    kind: str = "identity"

    def features(self, img: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def embed(self, img: torch.Tensor) -> torch.Tensor:
        """Identity embedding.

        Args:
            img: [N, 3, H, W] float in [-1, 1] (generator output; any square size).

        Returns:
            [N, D] float32, L2-normalised; differentiable w.r.t. `img` (the network's weights are frozen).
        """
        _check_img(img)
        return F.normalize(self.features(img).float(), dim=-1)

    def loss_to(self, img: torch.Tensor, ref_embedding: torch.Tensor) -> torch.Tensor:
        """1 - cos(embed(img), ref_embedding) per sample.

        Args:
            img: [N, 3, H, W] float in [-1, 1].
            ref_embedding: [N, D] or [D] unit vectors (e.g. `embed(img_0)` computed once); not differentiated.

        Returns:
            [N] float32 in [0, 2].
        """
        ref = ref_embedding.detach().to(img.device)
        return 1.0 - (self.embed(img) * ref).sum(dim=-1)

    def loss(self, img_a: torch.Tensor, img_b: torch.Tensor) -> torch.Tensor:
        """1 - cos(embed(img_a), embed(img_b)) per sample; `img_b` is the reference and gets no gradient.

        Args:
            img_a, img_b: [N, 3, H, W] float in [-1, 1] (the two may differ in size).

        Returns:
            [N] float32 in [0, 2]; 0 for identical images. (StyleCLIP's ID loss is the batch mean of this.)
        """
        with torch.no_grad():
            ref = self.embed(img_b)
        return self.loss_to(img_a, ref)

    def train(self, mode: bool = True) -> IdentityModel:
        # Always eval: BatchNorm must use its running statistics and Dropout must be off for a loss network,
        # even if an enclosing module is switched to training mode.
        return super().train(False)


def _check_img(img: torch.Tensor) -> None:
    if not isinstance(img, torch.Tensor) or img.ndim != 4 or img.shape[1] != 3:
        shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
        raise ValueError(f"identity models expect img [N, 3, H, W] float in [-1, 1]; got {shape}.")


# ------------------------------------------------------------------------------------------- ArcFace IR-SE50

# (in_channels, depth, units) per stage of the 50-layer IR network: 3 + 4 + 14 + 3 = 24 units, each two 3x3
# convs (48), plus the stem conv and the final linear = 50 weight layers. Stage starts have stride 2.
_IR50_STAGES = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))
_SE_REDUCTION = 16
ARCFACE_INPUT = 112
ARCFACE_DIM = 512
ARCFACE_ENTRIES = 397  # state_dict entries of the official file, num_batches_tracked included
# The official ID loss crops this window (rows, cols) out of the image pooled to 256x256: the face region of
# an FFHQ-aligned portrait.
_POOL_SIZE = 256
_CROP_ROWS = (35, 223)
_CROP_COLS = (32, 220)


class _SqueezeExcite(nn.Module):
    """Channel attention: x * sigmoid(fc2(relu(fc1(mean over H, W)))); fc1/fc2 are bias-free 1x1 convs."""

    def __init__(self, channels: int, reduction: int = _SE_REDUCTION):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True)))))  # [N, C, 1, 1]
        return x * gate


class _Subsample(nn.Module):
    """The identity shortcut of a unit whose width does not change: every `stride`-th pixel.

    The official network writes this as a 1x1 max-pool with that stride, which is the same operation; it has
    no parameters, so the name does not matter for loading.
    """

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.stride == 1 else x[:, :, :: self.stride, :: self.stride]


class _IRSEUnit(nn.Module):
    """Pre-activation residual unit with squeeze-excitation ("bottleneck_IR_SE").

    res_layer = [BN(in), conv3x3(in→depth, stride 1), PReLU(depth), conv3x3(depth→depth, stride), BN(depth),
    SE] (indices 0-5: the official key names depend on them); shortcut_layer = conv1x1 + BN when the width
    changes, else subsampling.
    """

    def __init__(self, in_channels: int, depth: int, stride: int):
        super().__init__()
        # Registered before res_layer: state_dict order then matches the official file's.
        if in_channels == depth:
            self.shortcut_layer: nn.Module = _Subsample(stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            _SqueezeExcite(depth),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def arcface_prepare(img: torch.Tensor) -> torch.Tensor:
    """The official ID loss's image preparation: [N, 3, H, W] in [-1, 1] → [N, 3, 112, 112].

    Adaptive average pooling to 256x256 (skipped when the height is already 256, as upstream checks only the
    height), the crop rows 35:223 / cols 32:220 (188x188), then adaptive average pooling to 112x112. No extra
    normalisation: the network was used on [-1, 1] input. Images smaller than 256 are upsampled by the
    adaptive pool (pixel repetition), so small previews still give an embedding.
    """
    x = img
    if x.shape[2] != _POOL_SIZE:
        x = F.adaptive_avg_pool2d(x, (_POOL_SIZE, _POOL_SIZE))
    x = x[:, :, _CROP_ROWS[0] : _CROP_ROWS[1], _CROP_COLS[0] : _CROP_COLS[1]]  # [N, 3, 188, 188]
    return F.adaptive_avg_pool2d(x, (ARCFACE_INPUT, ARCFACE_INPUT))


class ArcFaceIRSE50(IdentityModel):
    """ArcFace IR-SE50 (input 112, 50 layers, mode ir_se), as StyleCLIP/pSp/e4e build it for the ID loss.

    Layout (attribute names = the official state-dict prefixes):
        input_layer: [conv3x3 3→64 (no bias), BN(64), PReLU(64)]
        body.0-23:   `_IRSEUnit`s over the stages 64/128/256/512 with 3/4/14/3 units (stride 2 at each stage
                     start, so 112 → 7 pixels)
        output_layer: [BN2d(512), Dropout(0.6), Flatten, Linear(512·7·7 → 512), BN1d(512)]
    The output is L2-normalised (512-d). Weights are random until `load_arcface` fills them.
    """

    embed_dim = ARCFACE_DIM
    kind = "arcface-ir-se50"

    def __init__(self, drop_ratio: float = 0.6):
        super().__init__()
        # Attribute order = the official file's key order: input_layer, output_layer, body.
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        final = ARCFACE_INPUT // 2 ** len(_IR50_STAGES)  # 7
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512),
            nn.Dropout(drop_ratio),
            nn.Flatten(),
            nn.Linear(512 * final * final, ARCFACE_DIM),
            nn.BatchNorm1d(ARCFACE_DIM),
        )
        units = []
        for in_channels, depth, count in _IR50_STAGES:
            units.append(_IRSEUnit(in_channels, depth, 2))
            units += [_IRSEUnit(depth, depth, 1) for _ in range(count - 1)]
        self.body = nn.Sequential(*units)
        self.requires_grad_(False)
        self.eval()

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        """The network on prepared input: x [N, 3, 112, 112] → [N, 512] L2-normalised."""
        h = self.body(self.input_layer(x))  # [N, 512, 7, 7]
        return F.normalize(self.output_layer(h), dim=-1)

    def features(self, img: torch.Tensor) -> torch.Tensor:
        """img [N, 3, H, W] in [-1, 1] → [N, 512] (prepared with `arcface_prepare`)."""
        param = self.input_layer[0].weight
        return self.backbone(arcface_prepare(img.to(device=param.device, dtype=param.dtype)))


_EXPECTED_ARCFACE = (
    "ArcFace IR-SE50 weights (the official model_ir_se50.pth: a state dict with 397 entries named "
    "input_layer.*, body.0-23.*, output_layer.*)"
)
# Prefixes other code adds when it saves the network inside a wrapper (DataParallel, StyleCLIP's IDLoss).
_WRAPPER_PREFIXES = ("module.", "facenet.")


def _unwrap_state_dict(obj: dict[str, Any]) -> dict[str, Any]:
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), dict) and not any(k.startswith("input_layer.") for k in obj):
            obj = obj[key]
            break
    for prefix in _WRAPPER_PREFIXES:
        if obj and all(isinstance(k, str) and k.startswith(prefix) for k in obj):
            obj = {k[len(prefix) :]: v for k, v in obj.items()}
    return obj


def _arcface_hint(found: dict[str, Any]) -> str:
    """A guess at what a wrong file is, for the error message."""
    keys = [k for k in found if isinstance(k, str)]
    if any(k.startswith(("encoder.", "decoder.")) for k in keys):
        return " It looks like a pSp/e4e checkpoint (encoder.*/decoder.*), not the ArcFace file."
    if any(k.startswith(("g_ema", "style.", "convs.", "to_rgbs.")) for k in keys):
        return " It looks like a StyleGAN2 generator, not the ArcFace file."
    if any(k.startswith("body.") for k in keys) and not any(".res_layer.5." in k for k in keys):
        return " It has no squeeze-excitation weights (res_layer.5.*): an IR-50 without SE, not IR-SE50."
    linear = found.get("output_layer.3.weight")
    if isinstance(linear, torch.Tensor) and tuple(linear.shape) == (512, 512 * 14 * 14):
        return " Its output layer is for 224 px input; the StyleCLIP ID loss uses the 112 px model."
    bodies = {k.split(".")[1] for k in keys if k.startswith("body.") and k.count(".") > 1}
    if bodies and len(bodies) != 24:
        return f" It has {len(bodies)} residual units; IR-SE50 has 24 (IR-SE100/152 have more)."
    return ""


def load_arcface(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> ArcFaceIRSE50:
    """Load the official `model_ir_se50.pth` (or a file in its format) with strict key and shape checks.

    Read with `torch.load(weights_only=True)`. Accepted: the plain state dict (as published), or one wrapped
    in {"state_dict": ...} or prefixed by "module."/"facenet.". BatchNorm `num_batches_tracked` counters may
    be absent (files written by old PyTorch versions lack them; they do not affect inference).

    Returns:
        ArcFaceIRSE50 in eval mode, frozen, on `device`.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError (a ValueError): not a torch file, or the keys/shapes differ; the message names the
            expected and the found keys/shapes.
    """
    path = Path(path)
    obj = load_checkpoint(path, expected=_EXPECTED_ARCFACE)
    state = _unwrap_state_dict(obj)
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(
            f"{path} is not {_EXPECTED_ARCFACE}; found a dict that is not name → tensor: "
            f"{preview_keys(state)}."
        )
    model = ArcFaceIRSE50()
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s) {_preview(unexpected)}")
        raise CheckpointError(
            f"{path} is not {_EXPECTED_ARCFACE}: {'; '.join(parts)}. Expected {len(expected)} entries "
            f"{preview_keys(expected, 4)}; found {len(state)} {preview_keys(state, 4)}.{_arcface_hint(state)}"
        )
    wrong = [(k, tuple(expected[k].shape), tuple(v.shape)) for k, v in state.items()
             if tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        shown = ", ".join(f"{k}: expected {e}, found {f}" for k, e, f in wrong[:4])
        more = f" (and {len(wrong) - 4} more)" if len(wrong) > 4 else ""
        raise CheckpointError(
            f"{path} is not {_EXPECTED_ARCFACE}: {len(wrong)} tensor(s) have the wrong shape: {shown}{more}."
            f"{_arcface_hint(state)}"
        )
    full = {k: (state[k] if k in state else expected[k]) for k in expected}  # fills absent counters
    full = {k: v.float() if v.is_floating_point() else v for k, v in full.items()}  # fp16 copies → fp32
    model.load_state_dict(full, strict=True)
    return model.to(device).eval()


def _preview(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}]"


# ------------------------------------------------------------------------------------------ toyfaces identity


def load_toyfaces_identity(path: str | os.PathLike[str] | None = None,
                           device: str | torch.device = "cpu") -> IdentityModel:
    """The embedded toyfaces domain's identity network (default assets/toyfaces/identity.pt).

    Raises:
        FileNotFoundError: it has not been trained/shipped yet (the message says how to make it).
        CheckpointError: the file is not that network.
    """
    from ..toyfaces.identity_net import load_identity  # noqa: PLC0415 - the toy domain is optional here

    return load_identity(path, device=device)


# Domains without a downloadable face-recognition network, and the in-repo network that stands in for one. The bundles in model_zoo
# name real identity networks through the registry (`ModelBundle.identity`); these are found by bundle name.
_DOMAIN_NETWORKS: dict[str, Callable[..., IdentityModel]] = {"toyfaces": load_toyfaces_identity}
_CACHE: dict[tuple[str, str], IdentityModel] = {}
_CACHE_LOCK = threading.Lock()


def identity_for_bundle(name: str, device: str | torch.device = "cpu") -> IdentityModel | None:
    """The identity model that goes with a model bundle ("ffhq" → ArcFace, "toyfaces" → its identity network).

    Loaded once per process and device, and shared. Returns None for a bundle with neither.

    Raises:
        ValueError: unknown bundle; registry.ModelNotFoundError / FileNotFoundError: its file is missing
            (the message says where to put it); CheckpointError: the file is not the expected one.
    """
    # Imported here: model_zoo pulls in the generator code, which plain ArcFace users do not need.
    from .model_zoo import get_bundle  # noqa: PLC0415

    bundle = get_bundle(name)
    key = (bundle.name, str(torch.device(device)))
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        if bundle.identity is not None:
            spec = registry.get(bundle.identity)
            if spec.kind != "identity":
                raise ValueError(f"{bundle.identity!r} is a {spec.kind} model, not an identity network.")
            model: IdentityModel | None = load_arcface(registry.resolve(bundle.identity), device=device)
        elif bundle.name in _DOMAIN_NETWORKS:
            model = _DOMAIN_NETWORKS[bundle.name](device=device)
        else:
            return None
        _CACHE[key] = model
        return model
