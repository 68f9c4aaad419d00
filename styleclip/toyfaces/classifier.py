"""Attribute classifier for toyfaces images (a measuring instrument for edits, never used to make them)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from styleclip.imaging import images_to_img
from styleclip.toyfaces.attributes import ATTRIBUTES

__all__ = [
    "AttributeClassifier",
    "load_classifier",
    "save_classifier",
    "conv_block",
    "to_img",
    "DEFAULT_PATH",
    "INPUT_SIZE",
]

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "assets" / "toyfaces" / "classifier.pt"
INPUT_SIZE = 64


to_img = images_to_img  # uint8 image(s) [N, H, W, 3] or [H, W, 3] -> img float32 [N, 3, H, W] in [-1, 1]


def conv_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.SiLU())


class AttributeClassifier(nn.Module):
    """Small strided CNN: one softmax head per discrete attribute, one sigmoid regression per continuous one.

    Args:
        attributes: (name, kind, num_values) per head; defaults to the schema in attributes.ATTRIBUTES.
        channels: widths of the four stride-2 stages (64 -> 32 -> 16 -> 8 -> 4 pixels).
        hidden: width of the shared layer before the heads.
    """

    def __init__(
        self,
        attributes: list[tuple[str, str, int]] | None = None,
        channels: tuple[int, ...] = (32, 64, 128, 192),
        hidden: int = 256,
    ) -> None:
        super().__init__()
        if attributes is None:
            attributes = [(a.name, a.kind, a.num_values) for a in ATTRIBUTES]
        self.config = {
            "attributes": [list(a) for a in attributes],
            "channels": list(channels),
            "hidden": hidden,
            "input_size": INPUT_SIZE,
        }
        self.attributes = [(str(n), str(k), int(v)) for n, k, v in attributes]
        c = list(channels)
        layers: list[nn.Module] = [conv_block(3, c[0], 2), conv_block(c[0], c[0], 1)]
        for c_in, c_out in zip(c[:-1], c[1:], strict=True):
            layers += [conv_block(c_in, c_out, 2), conv_block(c_out, c_out, 1)]
        self.features = nn.Sequential(*layers[:-1])  # the last stage ends on its strided conv (4x4 map)
        self.trunk = nn.Sequential(nn.Linear(2 * c[-1], hidden), nn.SiLU())
        self.heads = nn.ModuleDict(
            {name: nn.Linear(hidden, n if kind == "discrete" else 1) for name, kind, n in self.attributes}
        )

    def _shared(self, img: torch.Tensor) -> torch.Tensor:
        """img float [N, 3, 64, 64] in [-1, 1] -> the shared representation every head reads, [N, hidden]."""
        h = self.features(img)
        h = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)  # [N, 2C]
        return self.trunk(h)

    def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        """img float [N, 3, 64, 64] in [-1, 1] -> name -> logits [N, n_values] (continuous: raw [N])."""
        h = self._shared(img)
        out = {}
        for name, kind, _ in self.attributes:
            y = self.heads[name](h)
            out[name] = y if kind == "discrete" else y[:, 0]
        return out

    @torch.inference_mode()
    def predict(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predictions for img float [N, 3, H, W] in [-1, 1] (resized to 64x64 when H, W differ).

        Returns:
            name -> probabilities [N, n_values] for discrete attributes (order of Attribute.values),
            name -> value in [0, 1] [N] for continuous ones.
        """
        img = self._prepare(img)
        was_training = self.training
        self.eval()
        raw = self(img)
        self.train(was_training)
        return {
            name: raw[name].softmax(dim=1) if kind == "discrete" else raw[name].sigmoid()
            for name, kind, _ in self.attributes
        }

    @torch.inference_mode()
    def embed(self, img: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features (the trunk output all heads read), e.g. for a Frechet distance.

        Args:
            img: float [N, 3, H, W] in [-1, 1] (resized to 64x64 when H, W differ, as in predict).

        Returns:
            [N, hidden] float (hidden = config["hidden"], 256 by default), computed in eval mode.
        """
        img = self._prepare(img)
        was_training = self.training
        self.eval()
        h = self._shared(img)
        self.train(was_training)
        return h

    def _prepare(self, img: torch.Tensor) -> torch.Tensor:
        """Checks img [N, 3, H, W], moves it to the weights' device/dtype and resizes it to 64x64."""
        if img.dim() != 4 or img.shape[1] != 3:
            raise ValueError(f"img must be [N, 3, H, W], got {tuple(img.shape)}")
        param = next(self.parameters())
        img = img.to(device=param.device, dtype=param.dtype)
        if img.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            img = F.interpolate(
                img, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True, align_corners=False
            )
        return img


def save_classifier(
    model: AttributeClassifier, path: str | Path, half: bool = True, meta: dict | None = None
) -> None:
    """Writes {"config", "state_dict", "meta"} (fp16 weights by default) for load_classifier."""
    state = {
        k: (v.half() if half and v.is_floating_point() else v).cpu() for k, v in model.state_dict().items()
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": model.config, "state_dict": state, "meta": meta or {}}, path)


def load_classifier(
    path: str | Path | None = None, device: str | torch.device = "cpu"
) -> AttributeClassifier:
    """Loads a classifier written by save_classifier, in eval mode (default: assets/toyfaces/classifier.pt).

    Raises:
        FileNotFoundError: no such file; train one with `python -m styleclip.toyfaces.train_classifier`.
    """
    path = Path(path) if path is not None else DEFAULT_PATH
    if not path.exists():
        raise FileNotFoundError(
            f"no classifier at {path}; train one with `python -m styleclip.toyfaces.train_classifier`"
        )
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    cfg = ckpt["config"]
    model = AttributeClassifier([tuple(a) for a in cfg["attributes"]], tuple(cfg["channels"]), cfg["hidden"])
    model.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    )
    return model.to(device).eval()
