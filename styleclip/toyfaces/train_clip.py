"""Train the embedded small CLIP contrastively on fresh renders and their generated captions.

The model is the clip package's own `CLIP` class in a small configuration (64 px ViT), tokenised with clip's
tokenizer, so every engine treats it like ViT-B/32. Part of the captions are wrapped in CLIP's ImageNet prompt
templates ("a photo of a {}.") because global directions average text embeddings over those templates.
Seeded and resumable:

    python -m styleclip.toyfaces.train_clip --steps 3000        # resumes from runs/ if present
    python -m styleclip.toyfaces.train_clip --device cuda --workers 6 --batch 256 --minutes 8

Without runs/ (a fresh clone) it continues from the shipped assets/toyfaces/clip.pt; `--restart` starts over.
A continuation aimed at attributes the model does not see yet (its own schedule, the text tower locked, contrast
groups of those attributes only; BENCHMARKS.md, "Inside contrast groups"):

    python -m styleclip.toyfaces.train_clip --init assets/toyfaces/clip.pt --state runs/clip_locked/state.pt \
        --export runs/clip_locked/clip.pt --new-schedule --warmup 50 --freeze-text \
        --group-attrs mouth,facial_hair,age,lipstick --group-frac 0.75 --batch 48 --lr 5e-4 --minutes 60

Swapped captions instead of contrast groups (each face chooses among K captions of itself that differ in one
attribute's value); keep the learning rate at 1e-4 or below, where this tower does not collapse (BENCHMARKS.md):

    python -m styleclip.toyfaces.train_clip --init assets/toyfaces/clip.pt --state runs/clip_hardneg/state.pt \
        --export runs/clip_hardneg/clip.pt --new-schedule --warmup 50 --freeze-text --negatives 4 \
        --negative-attrs mouth,facial_hair,earrings,lipstick,blush,nose,age,hair_style,glasses --batch 48 --lr 1e-4

Attribute heads (`--attr-heads W`): a linear head per attribute on the image embedding, trained on the renderer's
labels, gives the image tower a gradient towards every attribute on every face; with the text tower trainable, the
swapped captions then teach the text tower the same words (BENCHMARKS.md, "Attribute heads"):

    python -m styleclip.toyfaces.train_clip --init assets/toyfaces/clip.pt --state runs/clip_heads/state.pt \
        --export runs/clip_heads/clip.pt --new-schedule --warmup 50 --negatives 4 \
        --negative-attrs mouth,facial_hair,earrings,lipstick,blush,nose,age,hair_style,glasses --attr-heads 10 \
        --batch 48 --lr 2e-4 --minutes 65 --workers 1

Adversarial consistency (`--adv-weight W`): the image embedding of each render (and of `--adv-generated N`
generator pictures) must hold still under the worst pixel perturbation of size `--adv-eps`, so that a CLIP loss
descended through the generator pays for content, not for invisible shifts (BENCHMARKS.md, "A CLIP that a small
perturbation cannot move"); add `--adv-weight 4` to the command above.

Counterfactual directions (`--direction-weight W`, with `--negatives`): `--counterfactuals` faces per batch are
re-rendered with the value of their first swapped caption (or, with `--direction-attrs`, with another value of
one of those attributes), and the change of their image embedding must point along the change between the two
captions' text embeddings, which is what global directions assume of a text pair (`direction_loss`;
`benchmarks/bench_clip_text_image_agreement.py` measures it on the benchmark edits).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from pathlib import Path

import clip
import numpy as np
import torch
import torch.nn.functional as F

from ..imaging import images_to_img
from ..models.clip_model import IMAGENET_TEMPLATES, build_small_clip, clip_config
from . import captions
from .attributes import ATTRIBUTES, attribute
from .budget import StepBudget
from .prefetch import batches
from .renderer import NUM_PARAMS, labels_of, observable, params_from_normal, render_batch, set_attribute

REPO = Path(__file__).resolve().parents[2]
DEFAULT_STATE = REPO / "runs" / "toyfaces_clip" / "state.pt"
DEFAULT_EXPORT = REPO / "assets" / "toyfaces" / "clip.pt"
MODEL_KWARGS = dict(embed_dim=256, image_resolution=64, vision_layers=4, vision_width=256, vision_patch_size=8,
                    transformer_width=128, transformer_heads=2, transformer_layers=4)
# The same text tower with the package's ModifiedResNet image tower (RN50's design, 4 stages of 2 blocks, base
# width 32), for comparisons: at 64 px it costs about half the ViT's step on a CPU, yet it did not learn the small
# parts of a face (mouth, earrings, lipstick) either (BENCHMARKS.md, "Is it the ViT's 8-px patches?").
RESNET_KWARGS = {**MODEL_KWARGS, "vision_layers": (2, 2, 2, 2), "vision_width": 32, "vision_patch_size": None}
VISION_TOWERS = {"vit": MODEL_KWARGS, "resnet": RESNET_KWARGS}
DISCRETE = tuple(a for a in ATTRIBUTES if a.kind == "discrete")
_PREFIXES = sorted((p for p in captions._PREFIXES if p), key=len, reverse=True)


def caption_body(text: str) -> str:
    """'a photo of a smiling person with blond hair' → 'smiling person with blond hair'."""
    for prefix in _PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix):]
            break
    for article in ("a ", "an "):
        if text.startswith(article):
            return text[len(article):]
    return text


def make_caption(params, rng: np.random.Generator, template_prob: float, mention=None) -> str:
    text = captions.caption(params, rng, mention=mention)
    if rng.random() < template_prob:
        return IMAGENET_TEMPLATES[rng.integers(len(IMAGENET_TEMPLATES))].format(caption_body(text))
    return text


def augment(img: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Small shifts, blur and noise, so the model also reads the generator's slightly soft images."""
    n = img.shape[0]
    dx, dy = rng.integers(-2, 3, size=2)
    img = torch.roll(img, shifts=(int(dy), int(dx)), dims=(2, 3))
    if rng.random() < 0.5:
        k = torch.tensor([1.0, 2.0, 1.0])
        k = (k[:, None] * k[None, :] / 16).expand(3, 1, 3, 3)
        img = F.conv2d(F.pad(img, (1, 1, 1, 1), mode="replicate"), k, groups=3)
    noise = torch.from_numpy(rng.standard_normal(img.shape).astype(np.float32))
    return img + noise * torch.from_numpy(rng.uniform(0, 0.04, size=(n, 1, 1, 1)).astype(np.float32))


def contrast_group(rng: np.random.Generator, size: int,
                   attrs: tuple[str, ...] = ()) -> tuple[list, list[tuple[str, ...]]]:
    """`size` faces identical except for one discrete attribute, each captioned with that attribute first.

    Random batches rarely hold two faces that only a small attribute (earrings, lipstick, the mouth) tells
    apart, so contrastive learning alone leaves such attributes unlearnt; a group makes them the only clue.
    `attrs` limits the varied attribute to those names (empty: any discrete attribute).
    Returns (params list, mention tuples) for captions.caption.
    """
    discrete = [a for a in ATTRIBUTES if a.kind == "discrete" and (not attrs or a.name in attrs)]
    attr = discrete[rng.integers(len(discrete))]
    base = params_from_normal(rng.standard_normal(NUM_PARAMS))
    if attr.name in ("eyes", "eye_color"):
        base = set_attribute(set_attribute(base, "glasses", "none"), "eyes", "open")  # keep the eyes visible
    values = rng.permutation(len(attr.values))[:size]
    params = [set_attribute(base, attr.name, int(v)) for v in values]
    others = [a.name for a in ATTRIBUTES if a.name != attr.name]
    mentions = []
    for _ in params:
        extra = rng.choice(len(others), size=int(min(3, rng.poisson(1.0))), replace=False)
        mentions.append((attr.name, *(others[i] for i in extra)))
    return params, mentions


def hard_negative_captions(params, rng: np.random.Generator, template_prob: float, num: int,
                           attrs: tuple[str, ...] = ()) -> tuple[list[str], str | None, list[int]]:
    """Captions of one face that differ only in one attribute's value: its own caption and up to `num` - 1
    with another value of that attribute put in (as NegCLIP's swapped captions, but value by value).

    The image alone decides which caption is right, so the image tower is pushed to read that attribute on every
    face, not only in the rare batches that hold two faces told apart by it. `attrs` limits the attribute to
    those names (empty: any discrete one the face shows).

    Returns:
        (captions, the attribute, its value indices): caption k describes the face with value k; the first is the
        face's own. A face that shows none of `attrs` gets one ordinary caption, None and [].
    """
    shown = captions._describable(captions.values_of(params))
    names = [a.name for a in ATTRIBUTES
             if a.kind == "discrete" and a.name in shown and (not attrs or a.name in attrs)]
    if not names:
        return [make_caption(params, rng, template_prob)], None, []
    attr = attribute(names[int(rng.integers(len(names)))])
    true_value = attr.index(shown[attr.name])
    others = [v for v in range(len(attr.values)) if v != true_value]
    values = [true_value, *(int(v) for v in rng.permutation(others)[: max(0, num - 1)])]
    extra = [a.name for a in ATTRIBUTES if a.name != attr.name]
    mention = (attr.name, *(extra[i] for i in rng.choice(len(extra), size=int(min(3, rng.poisson(1.0))),
                                                          replace=False)))
    state = rng.bit_generator.state
    texts = []
    for v in values:
        rng.bit_generator.state = state  # the same draws: the captions differ in the attribute's words only
        texts.append(make_caption(set_attribute(params, attr.name, v), rng, template_prob, mention))
    return texts, attr.name, values


def batch_at(seed: int, step: int, batch: int, template_prob: float, group_frac: float = 0.0,
             group_size: int = 4, group_attrs: tuple[str, ...] = (), negatives: int = 0,
             negative_attrs: tuple[str, ...] = (), labels: bool = False, counterfactuals: int = 0,
             direction_attrs: tuple[str, ...] = ()) -> tuple[torch.Tensor, ...]:
    """The training batch of `step`: augmented img [B, 3, 64, 64] and tokens [B, 77]. A `group_frac` share of
    the batch comes in contrast groups (see contrast_group; `group_attrs` picks their attributes), the rest are
    independent random faces. With `negatives` > 1, each face's caption comes from hard_negative_captions and
    a third tensor holds all its captions, [B, negatives, 77], the true one first (faces whose attribute has
    fewer values repeat their true caption, which the loss masks out). With `counterfactuals` C > 0 (and
    `negatives` > 1), three tensors follow (see direction_loss): twin img [C', 3, 64, 64], the face each
    twin comes from [C'] long, and the caption pair of each (face, twin) [C', 2, 77]. With `labels`, two more
    tensors close the tuple: the renderer's value indices [B, A] of the A discrete attributes (DISCRETE order)
    and whether each can be seen, [B, A] bool (see AttributeHeads)."""
    if negatives > 1:
        out = _negative_batch(seed, step, batch, template_prob, negatives, negative_attrs, counterfactuals,
                              direction_attrs)
    else:
        out = _caption_batch(seed, step, batch, template_prob, group_frac, group_size, group_attrs)
    params, tensors = out[0], out[1:]
    return (*tensors, *label_tensors(params)) if labels else tensors


def label_tensors(params: list) -> tuple[torch.Tensor, torch.Tensor]:
    """The discrete labels [B, A] (long) and their visibility [B, A] (bool) of a list of face params."""
    values = [labels_of(p) for p in params]
    seen = [observable(p) for p in params]
    return (torch.tensor([[v[a.name] for a in DISCRETE] for v in values], dtype=torch.long),
            torch.tensor([[o[a.name] for a in DISCRETE] for o in seen], dtype=torch.bool))


def _caption_batch(seed: int, step: int, batch: int, template_prob: float, group_frac: float, group_size: int,
                   group_attrs: tuple[str, ...]) -> tuple:
    rng = np.random.default_rng([seed, step])
    params: list = []
    mentions: list = []
    while len(params) < int(batch * group_frac):
        group, group_mentions = contrast_group(rng, min(group_size, int(batch * group_frac) - len(params)),
                                               group_attrs)
        params += group
        mentions += group_mentions
    while len(params) < batch:
        params.append(params_from_normal(rng.standard_normal(NUM_PARAMS)))
        mentions.append(None)
    img = images_to_img(render_batch(params, 64))
    texts = [make_caption(p, rng, template_prob, mention) for p, mention in zip(params, mentions)]
    return params, augment(img, rng), clip.tokenize(texts, truncate=True)


def _negative_batch(seed: int, step: int, batch: int, template_prob: float, negatives: int,
                    attrs: tuple[str, ...], counterfactuals: int = 0,
                    direction_attrs: tuple[str, ...] = ()) -> tuple:
    rng = np.random.default_rng([seed, step, 1])
    params = [params_from_normal(rng.standard_normal(NUM_PARAMS)) for _ in range(batch)]
    swaps = [hard_negative_captions(p, rng, template_prob, negatives, attrs) for p in params]
    padded = [texts + [texts[0]] * (negatives - len(texts)) for texts, _, _ in swaps]
    all_tokens = clip.tokenize([t for texts in padded for t in texts], truncate=True).view(batch, negatives, -1)
    img = images_to_img(render_batch(params, 64))
    state = rng.bit_generator.state
    out = (params, augment(img, rng), all_tokens[:, 0], all_tokens)
    if counterfactuals > 0:
        if direction_attrs:
            # Pairs of their own, on a stream of their own: the batch above stays what it is without them.
            pair_rng = np.random.default_rng([seed, step, 2])
            swaps = [hard_negative_captions(p, pair_rng, template_prob, 2, direction_attrs) for p in params]
        twin_of = [i for i, (texts, _, _) in enumerate(swaps) if len(texts) > 1][:counterfactuals]
        twin_img = images_to_img(render_batch(
            [set_attribute(params[i], swaps[i][1], swaps[i][2][1]) for i in twin_of], 64))
        pairs = clip.tokenize([t for i in twin_of for t in swaps[i][0][:2]], truncate=True)
        rng.bit_generator.state = state  # the batch's own shift and blur, so only the attribute tells them apart
        out += (augment(twin_img, rng), torch.tensor(twin_of, dtype=torch.long), pairs.view(len(twin_of), 2, -1))
    return out


class AttributeHeads(torch.nn.Module):
    """One linear softmax head per discrete attribute on the image embedding (before its normalisation).

    Contrastive batches rarely hinge on a beard or a smile, so the image tower gets almost no gradient towards
    the small parts of a face; the renderer knows every face's attributes, and a head per attribute turns that
    into a gradient on every face for every attribute (BENCHMARKS.md, "Attribute heads"). The heads are a
    training device only: the export carries them beside the CLIP's state_dict ("attribute_heads", about
    80 kB, so that a continuation from a fresh clone keeps them), and no CLIP loader reads them.
    """

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.heads = torch.nn.ModuleList(torch.nn.Linear(embed_dim, a.num_values) for a in DISCRETE)

    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        """features [B, D] -> one logits tensor [B, n_values] per attribute, in DISCRETE order."""
        return [head(features) for head in self.heads]

    def loss(self, features: torch.Tensor, labels: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Mean over attributes of the cross-entropy on the faces where the attribute can be seen: features
        [B, D], labels [B, A] long, visible [B, A] bool."""
        losses = [F.cross_entropy(logits[visible[:, i]], labels[visible[:, i], i])
                  for i, logits in enumerate(self(features)) if visible[:, i].any()]
        return torch.stack(losses).mean()

    @torch.no_grad()
    def accuracy(self, features: torch.Tensor, labels: torch.Tensor, visible: torch.Tensor) -> dict[str, float]:
        """Per attribute, the share of visible faces whose label the head reads."""
        return {a.name: float((logits.argmax(-1) == labels[:, i])[visible[:, i]].float().mean())
                for i, (a, logits) in enumerate(zip(DISCRETE, self(features))) if visible[:, i].any()}


def hard_negative_loss(image_features: torch.Tensor, negative_features: torch.Tensor, tokens: torch.Tensor,
                       scale: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each face over its own captions: image_features [B, D] and negative_features [B, K, D]
    (unit vectors), tokens [B, K, 77] of those captions (column 0 the true one; repeats of it are padding)."""
    logits = scale * torch.einsum("bd,bkd->bk", image_features, negative_features)
    padding = (tokens[:, 1:] == tokens[:, :1]).all(dim=-1)
    logits[:, 1:] = logits[:, 1:].masked_fill(padding, float("-inf"))
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


def direction_loss(image_features: torch.Tensor, twin_features: torch.Tensor, twin_of: torch.Tensor,
                   pair_features: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(image change, text change) over counterfactual pairs: image_features [B, D] and
    twin_features [C, D] (unit vectors; twin c is face twin_of[c] with one attribute changed), pair_features
    [C, 2, D] (unit; the caption of the face, then the same caption with the twin's value).

    Why: global directions turn a text change ("face" -> "face with a beard") into an image direction through
    per-channel image directions; InfoNCE only asks each caption to sit nearest its own image, so the text change
    of a beard pointed where its image change does not (cosine 0.57 with the step-16,025 CLIP; for the hat 0.39).
    This term asks the two changes to point the same way, the StyleGAN-NADA directional loss used as a training
    signal. Measured (BENCHMARKS.md, "Counterfactual directions in CLIP training"): it raises that agreement
    (0.58 -> 0.67), yet global directions lose with it; the shipped CLIP was trained without it.
    """
    image_change = twin_features - image_features[twin_of]
    text_change = pair_features[:, 1] - pair_features[:, 0]
    return (1 - F.cosine_similarity(image_change, text_change, dim=-1)).mean()


def lr_at(step: int, total: int, base: float, warmup: int = 300, origin: int = 0) -> float:
    """Linear warm-up then cosine decay to 0 at `total`, both counted from the schedule's `origin` step (0, or
    where a continuation with its own schedule began)."""
    step, total = step - origin, total - origin
    if step < warmup:
        return base * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * 0.5 * (1 + math.cos(math.pi * t))


_CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
_CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def encode_text_cut(model, tokens: torch.Tensor) -> torch.Tensor:
    """model.encode_text on the context cut to the batch's longest prompt: the text transformer is causal and
    reads the end token, so positions after it never matter. Differentiable, unlike the wrapper's cached path."""
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    x = model.token_embedding(tokens) + model.positional_embedding[:length]
    mask = torch.full((length, length), float("-inf"), device=tokens.device).triu_(1)
    x = x.permute(1, 0, 2)  # [L, N, width]
    for block in model.transformer.resblocks:
        h = block.ln_1(x)
        x = x + block.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        x = x + block.mlp(block.ln_2(x))
    x = model.ln_final(x.permute(1, 0, 2))
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection


def image_features_of(model, img: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Image embeddings [B, D] of img [B, 3, 64, 64] in [-1, 1], with CLIP's input normalisation; unit vectors
    unless `normalize` is False."""
    x = ((img + 1) / 2 - _CLIP_MEAN.to(img.device)) / _CLIP_STD.to(img.device)
    features = model.encode_image(x)
    return F.normalize(features, dim=-1) if normalize else features


def contrastive_loss(model, img: torch.Tensor, tokens: torch.Tensor, negative_tokens: torch.Tensor | None = None,
                     negative_weight: float = 1.0, heads: AttributeHeads | None = None,
                     labels: torch.Tensor | None = None, visible: torch.Tensor | None = None,
                     heads_weight: float = 1.0, twin_img: torch.Tensor | None = None,
                     twin_of: torch.Tensor | None = None, twin_tokens: torch.Tensor | None = None,
                     direction_weight: float = 1.0) -> torch.Tensor:
    """Symmetric InfoNCE over the batch, plus `negative_weight` × hard_negative_loss when negative_tokens
    [B, K, 77] are given, plus `heads_weight` × the attribute heads' loss when `heads` (with labels and visible,
    [B, A]) are given, plus `direction_weight` × direction_loss when counterfactual twin_img [C, 3, 64, 64],
    twin_of [C] and their caption pairs twin_tokens [C, 2, 77] are given. The swapped captions' text features
    carry gradient when the text tower is trainable, so the text tower learns to tell the swapped words apart
    too."""
    raw = image_features_of(model, img, normalize=False)
    image_features = F.normalize(raw, dim=-1)
    text_trainable = model.token_embedding.weight.requires_grad
    if negative_tokens is not None:
        b, k, length = negative_tokens.shape
        with torch.set_grad_enabled(text_trainable and torch.is_grad_enabled()):
            negative_features = F.normalize(encode_text_cut(model, negative_tokens.reshape(b * k, length)),
                                            dim=-1).view(b, k, -1)
    if negative_tokens is not None and text_trainable:
        text_features = negative_features[:, 0]  # the true captions: one text pass serves both terms
    else:
        text_features = F.normalize(encode_text_cut(model, tokens), dim=-1)
    scale = model.logit_scale.exp()
    logits = scale * image_features @ text_features.t()
    targets = torch.arange(img.shape[0], device=img.device)
    loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2
    if negative_tokens is not None:
        loss = loss + negative_weight * hard_negative_loss(image_features, negative_features, negative_tokens, scale)
    if heads is not None:
        loss = loss + heads_weight * heads.loss(raw, labels, visible)
    if twin_img is not None and len(twin_img) > 0:
        twin_features = image_features_of(model, twin_img)
        c, _, length = twin_tokens.shape
        with torch.set_grad_enabled(text_trainable and torch.is_grad_enabled()):
            pair_features = F.normalize(encode_text_cut(model, twin_tokens.reshape(2 * c, length)), dim=-1)
        loss = loss + direction_weight * direction_loss(image_features, twin_features, twin_of,
                                                        pair_features.view(c, 2, -1))
    return loss


def signed_gradient_delta(model, img: torch.Tensor, eps: float, steps: int, score,
                          delta: torch.Tensor) -> torch.Tensor:
    """The perturbation [B, 3, H, W], |delta| <= eps per pixel (img's [-1, 1] units), that `steps` signed-gradient
    steps from `delta` find to raise score(unit image embeddings [B, D]) (a scalar). Gradients reach delta only
    (the model's parameters get none)."""
    for _ in range(steps):
        delta.requires_grad_(True)
        (grad,) = torch.autograd.grad(score(image_features_of(model, img + delta)), delta)
        delta = (delta.detach() + 0.75 * eps * grad.sign()).clamp(-eps, eps)
    return delta


def adversarial_delta(model, img: torch.Tensor, eps: float, steps: int, generator: torch.Generator | None = None,
                      target: torch.Tensor | None = None) -> torch.Tensor:
    """The perturbation [B, 3, H, W], |delta| <= eps per pixel, that `steps` signed-gradient steps from a random
    start find to move the unit image embedding of img [B, 3, H, W] furthest from its own (`target` [B, D],
    computed here when not given)."""
    if target is None:
        with torch.no_grad():
            target = image_features_of(model, img)
    start = (torch.rand(img.shape, generator=generator, device=img.device) * 2 - 1) * eps
    return signed_gradient_delta(model, img, eps, steps, lambda f: (f - target).pow(2).sum(-1).mean(), start)


def adversarial_consistency(model, img: torch.Tensor, eps: float, steps: int,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean squared distance between the unit image embeddings of img [B, 3, H, W] and of img + adversarial_delta;
    the clean embedding is the fixed target, so the term trains the image tower to hold its embedding.

    Why: a perturbation of 0.03 moved the step-13,924 CLIP's embedding to cosine about 0.7 with its own, so an
    optimizer that descends a CLIP loss through a generator finds colour and lighting shifts before the edit
    (BENCHMARKS.md, "Optimization: the objective's minimum is not the edit"); robust image towers have gradients
    that follow the picture's content.
    """
    with torch.no_grad():
        target = image_features_of(model, img)
    delta = adversarial_delta(model, img, eps, steps, generator, target)
    return (image_features_of(model, img + delta) - target).pow(2).sum(-1).mean()


def generated_batch(generator, n: int, jitter: float, resolution: int,
                    rng: torch.Generator | None = None) -> torch.Tensor:
    """img [n, 3, resolution, resolution] from random z through `generator`, each W+ row moved by `jitter` times
    w's per-dimension spread (so the pictures also cover the off-distribution latents an optimizer reaches).
    No labels are needed: the adversarial term only asks the embedding to hold still."""
    with torch.no_grad():
        device = generator.latent_avg.device
        z = torch.randn(n, generator.config.style_dim, generator=rng, device=device)
        w_plus = generator.z_to_w_plus(z)
        spread = w_plus[:, 0].std(0)
        w_plus = w_plus + jitter * spread * torch.randn(w_plus.shape, generator=rng, device=device)
        img = generator.synthesis_w_plus(w_plus).clamp(-1, 1)
    return at_resolution(img, resolution)


def at_resolution(img: torch.Tensor, resolution: int) -> torch.Tensor:
    """img [N, 3, H, W] resized (antialiased bilinear) to [N, 3, resolution, resolution] when it is another size."""
    if img.shape[-1] == resolution:
        return img
    return F.interpolate(img, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)


def make_optimizer(model, lr: float, heads: AttributeHeads | None = None) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    named = [*model.named_parameters(), *((f"heads.{n}", p) for n, p in (heads.named_parameters() if heads else ()))]
    for name, p in named:
        # No decay on embeddings, norms, biases: untrained token rows must stay exactly as initialised.
        (no_decay if p.ndim < 2 or "embedding" in name or name in ("logit_scale",) else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.98), eps=1e-6)


def train(args: argparse.Namespace) -> None:
    group_attrs = tuple(a for a in args.group_attrs.split(",") if a)
    negative_attrs = tuple(a for a in args.negative_attrs.split(",") if a)
    direction_attrs = tuple(a for a in args.direction_attrs.split(",") if a)
    twin_count = args.counterfactuals if args.direction_weight > 0 else 0
    if twin_count and args.negatives < 2:
        raise SystemExit("--direction-weight needs --negatives 2 or more: the swapped caption names the twin's value")
    for option, names in (("--group-attrs", group_attrs), ("--negative-attrs", negative_attrs),
                          ("--direction-attrs", direction_attrs)):
        unknown = sorted(set(names) - {a.name for a in ATTRIBUTES if a.kind == "discrete"})
        if unknown:
            raise SystemExit(f"{option}: unknown discrete attributes {unknown}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    state_path = Path(args.state)
    warm_path = Path(args.init or args.export)
    state = warm = None
    if state_path.is_file() and not args.restart:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    elif warm_path.is_file() and not args.restart:
        # A fresh clone has no runs/: continue from the shipped fp16 weights; the optimizer moments restart.
        warm = torch.load(warm_path, map_location="cpu", weights_only=True)
    # A resumed or warm-started run keeps its own architecture (older states carry no config: the ViT).
    source = state or warm
    kwargs = dict(source.get("config", MODEL_KWARGS)) if source is not None else dict(VISION_TOWERS[args.vision])
    kwargs.pop("context_length", None), kwargs.pop("vocab_size", None)
    model = build_small_clip(**kwargs, seed=args.seed).train().requires_grad_(True)
    if args.freeze_text:
        # A locked text tower keeps the words of an attribute the image tower does not see yet apart; trained
        # together, the text tower learns to ignore those words instead (the image tower then gets no gradient
        # towards them), which is how contrast groups alone left mouths and beards unlearnt.
        for name, param in model.named_parameters():
            if not name.startswith("visual."):
                param.requires_grad_(False)
    heads = AttributeHeads(model.text_projection.shape[1]).train() if args.attr_heads > 0 else None
    if state is not None and (heads is None) != ("heads" not in state):
        raise SystemExit(f"{state_path} was trained {'with' if 'heads' in state else 'without'} --attr-heads; "
                         "resume it the same way, or give a new --state")
    opt = make_optimizer(model, args.lr, heads)
    step, history, origin = 0, [], 0
    if state is not None:
        model.load_state_dict(state["model"])
        if heads is not None:
            heads.load_state_dict(state["heads"])
        opt.load_state_dict(state["opt"])
        step, history = int(state["step"]), list(state["history"])
        origin = int(state.get("schedule_origin", 0))
    elif warm is not None:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in warm["state_dict"].items()})
        step = int(warm.get("train_step", 0))
        if heads is not None and "attribute_heads" in warm:
            heads.load_state_dict(warm["attribute_heads"])  # a fresh clone continues with the trained heads
        print(json.dumps({"warm_start": str(warm_path), "step": step}), flush=True)
        # A continuation from weights whose cosine has already decayed needs its own schedule to learn anything.
        origin = step if args.new_schedule else 0
    adv_generator = None
    if args.adv_weight > 0 and args.adv_generated > 0:
        from ..models.model_zoo import load_generator_spec

        adv_generator = load_generator_spec(args.adv_generator, device)
    # The workers fork here, before CUDA starts.
    stream = batches(functools.partial(batch_at, args.seed, batch=args.batch, template_prob=args.template_prob,
                                       group_frac=args.group_frac, group_attrs=group_attrs,
                                       negatives=args.negatives, negative_attrs=negative_attrs,
                                       labels=heads is not None, counterfactuals=twin_count,
                                       direction_attrs=direction_attrs), step, args.workers)
    model.to(device)
    if heads is not None:
        heads.to(device)
    opt.load_state_dict(opt.state_dict())  # moves the moments onto the parameters' device

    def save():
        state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = state_path.with_suffix(".tmp")
        extra = {"heads": heads.state_dict()} if heads is not None else {}
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "history": history,
                    "config": clip_config(model), "schedule_origin": origin, **extra}, tmp)
        tmp.replace(state_path)
        export = Path(args.export)
        export.parent.mkdir(parents=True, exist_ok=True)
        half = {k: v.half().cpu() if v.is_floating_point() else v.cpu() for k, v in model.state_dict().items()}
        torch.save({"state_dict": half, "config": clip_config(model), "train_step": step, **(
            {"attribute_heads": heads.state_dict()} if heads is not None else {})}, export.with_suffix(".tmp"))
        export.with_suffix(".tmp").replace(export)

    t_start, last_save, start_step, running = time.time(), time.time(), step, None
    budget = StepBudget(args.steps, args.minutes, start_step)
    total = budget.total
    if total <= step:
        raise SystemExit(f"nothing to train: the run is at step {step} and --steps {args.steps} counts from step 0 "
                         f"(give e.g. --steps {step + 1000}, or --minutes)")
    while step < total:
        total = budget.update(step)
        img, tokens, *rest = (t.to(device) for t in next(stream))
        labels = dict(zip(("labels", "visible"), rest[-2:])) if heads is not None else {}
        rest = rest[:-2] if heads is not None else rest
        negative_tokens, twins = rest[:1], {}
        if twin_count:
            twins = {"twin_img": rest[1], "twin_of": rest[2], "twin_tokens": rest[3],
                     "direction_weight": args.direction_weight}
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, args.lr, args.warmup, origin)
        loss = contrastive_loss(model, img, tokens, *negative_tokens, negative_weight=args.negative_weight,
                                heads=heads, heads_weight=args.attr_heads, **labels, **twins)
        if args.adv_weight > 0:
            # Seeded by the step, so a resumed run draws the same random starts.
            start = torch.Generator(device=img.device).manual_seed(args.seed * 1_000_003 + step)
            adv_img = img
            if adv_generator is not None:
                fakes = generated_batch(adv_generator, args.adv_generated, args.adv_jitter, img.shape[-1], start)
                adv_img = torch.cat([img, fakes])
            loss = loss + args.adv_weight * adversarial_consistency(model, adv_img, args.adv_eps, args.adv_steps,
                                                                    start)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([q for group in opt.param_groups for q in group["params"]], 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % args.log_every == 0:
            rate = (step - start_step) / (time.time() - t_start)
            history.append([step, round(running, 4)])
            print(json.dumps({"step": step, "loss": round(running, 4), "logit_scale": round(
                model.logit_scale.exp().item(), 2), "steps_per_s": round(rate, 3),
                "eta_min": round((total - step) / max(rate, 1e-9) / 60, 1)}), flush=True)
        if time.time() - last_save > args.save_minutes * 60 or step >= total:
            save()
            last_save = time.time()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--minutes", type=float, default=0.0,
                   help="time budget: sets --steps to what fits, from the rate after 60 steps (0 = use --steps)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--vision", choices=sorted(VISION_TOWERS), default="vit",
                   help="image tower of a new run (a resumed run keeps its own)")
    p.add_argument("--workers", type=int, default=0, help="processes rendering batches ahead (0: inline)")
    p.add_argument("--init", default="", help="export to continue from when there is no state (default: --export)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--template-prob", type=float, default=0.4)
    p.add_argument("--group-frac", type=float, default=0.5,
                   help="share of each batch in contrast groups (faces differing in one attribute)")
    p.add_argument("--group-attrs", default="",
                   help="comma-separated discrete attributes that contrast groups vary (default: all)")
    p.add_argument("--negatives", type=int, default=0,
                   help="captions per face with one attribute's value swapped, the true one included (0: off; "
                        "replaces contrast groups; with the text tower trainable its words learn to differ too)")
    p.add_argument("--negative-attrs", default="",
                   help="comma-separated discrete attributes the swapped captions vary (default: all)")
    p.add_argument("--negative-weight", type=float, default=1.0, help="weight of the swapped-caption loss")
    p.add_argument("--attr-heads", type=float, default=0.0,
                   help="weight of per-attribute heads on the image embedding, trained on the renderer's labels "
                        "(0: off; the export keeps them beside the CLIP's weights, which loaders ignore)")
    p.add_argument("--direction-weight", type=float, default=0.0,
                   help="weight of the counterfactual direction term: the image change of a face re-rendered with "
                        "one attribute swapped must point along its captions' text change (needs --negatives)")
    p.add_argument("--counterfactuals", type=int, default=16, help="faces per batch re-rendered for that term")
    p.add_argument("--direction-attrs", default="",
                   help="attributes the twins change, comma-separated (default: each face's first swapped caption's)")
    p.add_argument("--adv-weight", type=float, default=0.0,
                   help="weight of the adversarial consistency term: the image embedding of a render must stay "
                        "where it is under the worst perturbation of size --adv-eps (0: off)")
    p.add_argument("--adv-eps", type=float, default=0.03, help="largest perturbation per pixel, in [-1, 1] units")
    p.add_argument("--adv-steps", type=int, default=2, help="signed-gradient steps that find the perturbation")
    p.add_argument("--adv-generated", type=int, default=0,
                   help="generator images per step that the adversarial term holds still too (no labels needed)")
    p.add_argument("--adv-generator", default="toyfaces", help="generator of --adv-generated (bundle name or path)")
    p.add_argument("--adv-jitter", type=float, default=0.5,
                   help="random move of each W+ row of those images, in units of w's per-dimension spread")
    p.add_argument("--warmup", type=int, default=300, help="learning-rate warm-up steps")
    p.add_argument("--new-schedule", action="store_true",
                   help="a warm start (from --init/--export) begins its own warm-up and cosine at its first step")
    p.add_argument("--freeze-text", action="store_true",
                   help="train the image tower only (text tower and logit scale locked); like the batch options, "
                        "give it again when resuming")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--state", default=str(DEFAULT_STATE))
    p.add_argument("--export", default=str(DEFAULT_EXPORT))
    p.add_argument("--save-minutes", type=float, default=5.0)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--restart", action="store_true")
    train(p.parse_args(argv))


if __name__ == "__main__":
    main()
