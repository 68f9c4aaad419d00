"""CLIP loss terms shared by the engines that optimise against a text (mapper training, latent optimization).

The directional term is StyleGAN-NADA's: the change of the image embedding should point along the change of
the text embedding, 1 − cos(CLIP(img_edit) − CLIP(img_source), CLIP(target) − CLIP(neutral)). The plain CLIP
loss, 1 − cos(CLIP(img), CLIP(target)), rewards any route toward the target, including changes of attributes
the text never named; the directional term does not.
"""

from __future__ import annotations

import torch

from ..models.clip_model import ClipModel

__all__ = ["directional_loss", "text_change_direction"]


def text_change_direction(clip_model: ClipModel, neutral: str, target: str) -> torch.Tensor:
    """[1, E] unit vector CLIP(target) − CLIP(neutral): the change the directional loss asks the image to make.

    Raises:
        ValueError: the two texts embed (almost) alike, so there is no direction to follow.
    """
    diff = clip_model.encode_text([target]) - clip_model.encode_text([neutral])
    norm = diff.norm()
    if float(norm) < 1e-6:
        raise ValueError(f"CLIP sees no difference between {neutral!r} and {target!r}; the directional loss needs "
                         "a neutral text that differs from the prompt.")
    return diff / norm


def directional_loss(emb_edit: torch.Tensor, emb_source: torch.Tensor, text_change: torch.Tensor,
                     min_norm: float = 0.1) -> torch.Tensor:
    """emb_edit, emb_source [N, E] image embeddings, text_change [1, E] unit → [N] 1 − cos(edit − source, change).

    The image change's norm is floored at `min_norm`: an optimization starts at the source, where the change is
    0 and the gradient of a cosine divides by ~0 (Adam would then carry that spike in its second moment for
    hundreds of steps). Below the floor the term is linear in the change and also asks for more of it along the
    text; above it (the mappers change the embedding by ~1 from their first step) it is the plain cosine.
    """
    change = emb_edit - emb_source
    norm = change.norm(dim=-1).clamp_min(min_norm)
    return 1 - (change * text_change.to(change)).sum(dim=-1) / norm
