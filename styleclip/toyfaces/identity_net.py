"""The embedded domain's identity network: "the same face apart from the edited attribute".

ArcFace plays this role for real faces: StyleCLIP's identity loss keeps the person while an edit changes hair,
expression or glasses. A toy face has no learned identity to borrow, so this network is trained for it
(`train_identity.py`), contrastively on renderer triplets: a face and the same face with at most one other
attribute changed and a new pose and light are positives; the face with one of its identity attributes (skin
tone, eye colour, nose, face width: `IDENTITY_ATTRIBUTES`) changed is a hard negative; other faces are
negatives. Its cosine therefore ignores pose and light, tolerates one changed attribute, and falls with every
further change, most with an identity attribute. It is a separate network from the attribute classifier,
which stays a measuring instrument only.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..models.checkpoints import CheckpointError
from ..models.identity import IdentityModel
from .classifier import INPUT_SIZE, conv_block

__all__ = ["DEFAULT_PATH", "IDENTITY_ATTRIBUTES", "ToyfacesIdentity", "load_identity", "save_identity"]

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "assets" / "toyfaces" / "identity.pt"
IDENTITY_ATTRIBUTES = ("skin_tone", "eye_color", "nose", "face_width")


class ToyfacesIdentity(IdentityModel):
    """Small strided CNN (64 px input) → identity features [N, embed_dim]; `embed` gives unit vectors.

    Args:
        channels: widths of the four stride-2 stages (64 → 32 → 16 → 8 → 4 pixels).
        hidden: width of the layer before the embedding.
        embed_dim: embedding size.
    """

    kind = "toyfaces-identity"

    def __init__(self, channels: tuple[int, ...] = (32, 64, 96, 128), hidden: int = 128, embed_dim: int = 64):
        super().__init__()
        self.config = {"channels": list(channels), "hidden": hidden, "embed_dim": embed_dim,
                       "input_size": INPUT_SIZE}
        self.embed_dim = embed_dim
        c = list(channels)
        layers: list[nn.Module] = [conv_block(3, c[0], 2), conv_block(c[0], c[0], 1)]
        for c_in, c_out in zip(c[:-1], c[1:], strict=True):
            layers += [conv_block(c_in, c_out, 2), conv_block(c_out, c_out, 1)]
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(2 * c[-1], hidden), nn.SiLU(), nn.Linear(hidden, embed_dim))

    def features(self, img: torch.Tensor) -> torch.Tensor:
        """img [N, 3, H, W] float in [-1, 1] (resized to 64 px when H, W differ) → [N, embed_dim]."""
        if img.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            img = F.interpolate(img, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True,
                                align_corners=False)
        h = self.trunk(img.to(next(self.parameters()).dtype))
        return self.head(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1))


def save_identity(model: ToyfacesIdentity, path: str | os.PathLike[str], meta: dict | None = None) -> None:
    """Writes {"config", "state_dict" (fp16), "meta"} for `load_identity`, atomically."""
    state = {k: (v.half() if v.is_floating_point() else v).cpu() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"config": model.config, "state_dict": state, "meta": meta or {}}, tmp)
    tmp.replace(path)


def load_identity(path: str | os.PathLike[str] | None = None,
                  device: str | torch.device = "cpu") -> ToyfacesIdentity:
    """Loads the identity network (default assets/toyfaces/identity.pt), frozen and in eval mode.

    Raises:
        FileNotFoundError: no such file (the message says how to train one).
        CheckpointError: the file is not an identity network of this layout.
    """
    path = Path(path) if path is not None else DEFAULT_PATH
    if not path.is_file():
        raise FileNotFoundError(f"no toyfaces identity network at {path}; train one with "
                                "`python -m styleclip.toyfaces.train_identity`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        cfg = ckpt["config"]
        model = ToyfacesIdentity(tuple(cfg["channels"]), int(cfg["hidden"]), int(cfg["embed_dim"]))
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in ckpt["state_dict"].items()})
    except (KeyError, TypeError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"{path} is not a toyfaces identity network ({exc.__class__.__name__}: "
                              f"{str(exc).splitlines()[0][:200]})") from None
    return model.requires_grad_(False).to(device).eval()
