"""Conversions between generator tensors (`img`: float [-1, 1], NCHW) and pictures (`image`: uint8 HWC)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def img_to_images(img: torch.Tensor) -> list[np.ndarray]:
    """img: [N, 3, H, W] float in about [-1, 1] → N uint8 [H, W, 3] arrays.

    pixel = round((x + 1) * 127.5) clamped to 0..255, the convention of the upstream render scripts.
    """
    x = ((img.detach().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return [a for a in x.permute(0, 2, 3, 1).cpu().numpy()]


def img_to_image(img: torch.Tensor) -> np.ndarray:
    """img: [1, 3, H, W] or [3, H, W] → one uint8 [H, W, 3] array."""
    return img_to_images(img if img.ndim == 4 else img[None])[0]


def images_to_img(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images [N, H, W, 3] (or one [H, W, 3]) → img float32 [N, 3, H, W] in [-1, 1]."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.dim() == 3:
        x = x[None]
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()


def image_to_img(image: np.ndarray | Image.Image, size: int | None = None) -> torch.Tensor:
    """uint8 [H, W, 3] (or a PIL image) → img [1, 3, H, W] float in [-1, 1], resized to `size` if given."""
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    pil = pil.convert("RGB")
    if size is not None and pil.size != (size, size):
        pil = pil.resize((size, size), Image.LANCZOS)
    arr = torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy())
    return arr.permute(2, 0, 1)[None].float() / 127.5 - 1


def save_image(image: np.ndarray, path) -> None:
    """Writes a uint8 [H, W, 3] array as PNG (or whatever the suffix says)."""
    Image.fromarray(image).save(path)
