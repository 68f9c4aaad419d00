"""The CLIP wrapper every engine uses: safe loading, fast cached text encoding, image encoding (loss/eval)."""

from __future__ import annotations

import os
import threading
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

with warnings.catch_warnings():
    # clip-anytorch imports pkg_resources, which warns on every start-up; nothing for users to act on.
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    import clip
    from clip.model import CLIP, ModifiedResNet, build_model
from styleclip.models import registry
from styleclip.models.checkpoints import (
    CheckpointError,
    is_torchscript_archive,
    load_checkpoint,
    preview_keys,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_TEMPLATES",
    "ClipModel",
    "build_small_clip",
    "clip_config",
]

# CLIP's image normalisation (clip/clip.py `_transform`).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# CLIP's 80 ImageNet prompt templates (openai/CLIP notebooks/Prompt_Engineering_for_ImageNet.ipynb) without
# "a photo of many {}.", in the order StyleCLIP uses (global_directions/MapTS.py `imagenet_templates`): 79.
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

_EXPECTED_CLIP = (
    "a CLIP checkpoint (an OpenAI TorchScript .pt, or a state dict with keys like visual.*, "
    "token_embedding.weight, positional_embedding, text_projection, ln_final.weight, transformer.resblocks.*)"
)
# Keys every CLIP state dict has (text side + the vision trunk of either ViT or ResNet).
_TEXT_KEYS = (
    "token_embedding.weight",
    "positional_embedding",
    "text_projection",
    "ln_final.weight",
    "transformer.resblocks.0.attn.in_proj_weight",
)
# Non-parameter entries that OpenAI's TorchScript archives carry in their state_dict (build_model drops them).
_JIT_EXTRAS = ("input_resolution", "context_length", "vocab_size")
_CONFIG_KEYS = (
    "embed_dim",
    "image_resolution",
    "vision_layers",
    "vision_width",
    "vision_patch_size",
    "context_length",
    "vocab_size",
    "transformer_width",
    "transformer_heads",
    "transformer_layers",
)


class _LRU:
    """A small thread-safe LRU dict (Gradio calls handlers from several threads)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[Any, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Any) -> torch.Tensor | None:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Any, value: torch.Tensor) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._data)


class ClipModel:
    """A `clip.model.CLIP` in eval mode, float32, frozen, with the encoders StyleCLIP needs.

    Text: `encode_text` (fast prefix-sharing forward, LRU-cached), `encode_text_templates` (template average).
    Images: `encode_image` (differentiable, for losses, takes generator output `img` in [-1, 1]) and
    `encode_image_eval` (CLIP's official PIL preprocessing, for metrics). Every embedding is L2-normalised.
    """

    def __init__(
        self,
        model: CLIP,
        *,
        source: str = "<in memory>",
        text_cache_size: int = 4096,
        template_cache_size: int = 1024,
        max_tree_nodes: int = 256,
    ) -> None:
        if not isinstance(model, CLIP):
            raise TypeError(f"ClipModel wraps a clip.model.CLIP; got {type(model).__name__}.")
        # Pinned fp32 + eval + frozen: clip.load keeps fp16 on GPU; losses need gradients w.r.t. inputs only.
        self.model = model.float().eval().requires_grad_(False)
        self.source = source
        self.max_tree_nodes = max_tree_nodes
        self._text_cache = _LRU(text_cache_size)
        self._template_cache = _LRU(template_cache_size)
        self.text_forward_calls = 0  # model forwards run by encode_text (tests and benchmarks read it)
        self._tokenizer = None
        self._preprocess = None
        self._mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)  # moved to the input's device when used
        self._std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_model(cls, model: CLIP, **kwargs: Any) -> ClipModel:
        """Wrap a CLIP built in memory (tests, the embedded small CLIP); it is set to fp32, eval, frozen."""
        return cls(model, **kwargs)

    @classmethod
    def load(
        cls, name_or_path: str | os.PathLike[str], device: str | torch.device = "cpu", **kwargs: Any
    ) -> ClipModel:
        """Load CLIP weights by registry name ("ViT-B/32") or from a local file.

        Accepted files: OpenAI's TorchScript archives (read with `torch.jit.load(...).state_dict()`), a plain
        state dict, or a dict with a "state_dict"/"model" entry and an optional "config" (the `CLIP(...)`
        arguments; without it every size is inferred by `clip.model.build_model`). Other files are read with
        `torch.load(weights_only=True)`, so nothing pickled is executed.

        Raises:
            registry.ModelNotFoundError: a known name whose file is missing (the message says where it goes).
            FileNotFoundError: a path that does not exist.
            ValueError: an unknown name; `CheckpointError` (a ValueError) for a file that is not CLIP weights.
        """
        path = _resolve_clip_path(name_or_path)
        state_dict, config = _read_clip_file(path)
        model = _build_clip(state_dict, config, path)
        return cls(model.to(device), source=str(path), **kwargs)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save as `{"state_dict", "config"}` (readable by `load`, safely, with exact fp32 values)."""
        torch.save({"state_dict": self.model.state_dict(), "config": clip_config(self.model)}, path)

    # ------------------------------------------------------------------ properties

    @property
    def device(self) -> torch.device:
        return self.model.token_embedding.weight.device

    @property
    def input_resolution(self) -> int:
        """Side of the square image the vision tower takes (224 for ViT-B/32)."""
        return int(self.model.visual.input_resolution)

    @property
    def embed_dim(self) -> int:
        """D, the joint embedding size (512 for ViT-B/32)."""
        return int(self.model.text_projection.shape[1])

    @property
    def context_length(self) -> int:
        """Maximum tokens per prompt including start/end tokens (77)."""
        return int(self.model.context_length)

    def __repr__(self) -> str:
        return (
            f"ClipModel(source={self.source!r}, embed_dim={self.embed_dim}, "
            f"input_resolution={self.input_resolution}, device={self.device})"
        )

    # ------------------------------------------------------------------ text

    def cache_info(self) -> dict[str, int]:
        """Cache statistics: text/template hits, misses and sizes, and the number of text forwards run."""
        return {
            "text_hits": self._text_cache.hits,
            "text_misses": self._text_cache.misses,
            "text_size": len(self._text_cache),
            "template_hits": self._template_cache.hits,
            "template_misses": self._template_cache.misses,
            "template_size": len(self._template_cache),
            "text_forward_calls": self.text_forward_calls,
        }

    def clear_cache(self) -> None:
        """Forget every cached text and template embedding."""
        self._text_cache.clear()
        self._template_cache.clear()

    def encode_text(self, texts: Sequence[str] | str) -> torch.Tensor:
        """Embed prompts.

        Args:
            texts: N prompts (a single string counts as N = 1). Each must be non-empty and fit in
                `context_length` tokens (77, start and end tokens included).

        Returns:
            [N, D] float32, L2-normalised, on the model's device; a new tensor (safe to modify, autograd-ok).

        Raises:
            ValueError: an empty/whitespace-only prompt, or one that is too long (the message names it).
        """
        if isinstance(texts, str):
            texts = [texts]
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"Prompt #{i} must be a str; got {type(text).__name__}.")
            if not text.strip():
                raise ValueError(f"Prompt #{i} is empty; type some text to describe the edit.")
        if not texts:
            return torch.empty(0, self.embed_dim, device=self.device)

        found: dict[str, torch.Tensor] = {}
        missing: list[str] = []
        for text in dict.fromkeys(texts):  # unique, in order
            cached = self._text_cache.get(text)
            if cached is None:
                missing.append(text)
            else:
                found[text] = cached
        if missing:
            for text, emb in zip(missing, self._encode_uncached(missing), strict=True):
                emb = emb.clone()  # own storage: a cached row must not pin its whole batch in memory
                self._text_cache.put(text, emb)
                found[text] = emb
        # Stacking outside inference_mode gives an ordinary tensor (cached ones are inference tensors, which
        # autograd refuses to save) and a copy, so callers cannot mutate the cache.
        return torch.stack([found[t] for t in texts])

    def encode_text_templates(self, text: str, templates: Sequence[str] = IMAGENET_TEMPLATES) -> torch.Tensor:
        """StyleCLIP's prompt-ensemble embedding of one text.

        Fills every template ("a photo of a {}.") with `text`, embeds each, L2-normalises each, averages and
        L2-normalises the mean (SC MapTS.py `zeroshot_classifier`). Cached per (text, templates).

        Returns:
            [D] float32, unit norm.
        """
        return self.encode_text_templates_batch([text], templates)[0]

    def encode_text_templates_batch(
        self, texts: Sequence[str], templates: Sequence[str] = IMAGENET_TEMPLATES
    ) -> torch.Tensor:
        """`encode_text_templates` for several texts in one forward (e.g. target and neutral for Δt).

        One forward lets the texts share the template prefixes ("a photo of the ..."), which is cheaper than
        one call per text.

        Returns:
            [N, D] float32, unit rows.
        """
        if isinstance(texts, str):
            texts = [texts]
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                raise ValueError(
                    "The text to fill into the templates is empty; type some text to describe the edit."
                )
        templates = tuple(templates)
        if not templates:
            raise ValueError("No templates given; pass at least one, e.g. ('{}',).")
        for template in templates:
            if "{}" not in template:
                raise ValueError(f"Template {template!r} has no '{{}}' placeholder for the text.")
        if not texts:
            return torch.empty(0, self.embed_dim, device=self.device)
        found: dict[str, torch.Tensor] = {}
        missing = []
        for text in dict.fromkeys(texts):
            cached = self._template_cache.get((text, templates))
            if cached is None:
                missing.append(text)
            else:
                found[text] = cached
        if missing:
            filled = [t.replace("{}", text) for text in missing for t in templates]
            emb = self.encode_text(filled).view(len(missing), len(templates), -1)  # [M, T, D], unit rows
            with torch.inference_mode():
                means = F.normalize(emb.mean(dim=1), dim=-1)  # [M, D]
            for text, mean in zip(missing, means, strict=True):
                mean = mean.clone()  # own storage (see encode_text)
                self._template_cache.put((text, templates), mean)
                found[text] = mean
        return torch.stack([found[t] for t in texts])  # a copy, outside inference_mode

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids from start to end token (inclusive) per prompt."""
        try:
            tokens = clip.tokenize(texts, context_length=self.context_length)  # [N, ctx]
        except RuntimeError:
            raise self._too_long_error(texts) from None
        # The end token has the largest id in the vocabulary, so argmax finds it (as CLIP's encode_text does).
        ends = tokens.argmax(dim=-1).tolist()
        rows = tokens.tolist()
        return [row[: end + 1] for row, end in zip(rows, ends, strict=True)]

    def _too_long_error(self, texts: list[str]) -> ValueError:
        if self._tokenizer is None:
            from clip.simple_tokenizer import SimpleTokenizer  # noqa: PLC0415 - loads the BPE; error path only

            self._tokenizer = SimpleTokenizer()
        for text in texts:
            n = len(self._tokenizer.encode(text)) + 2  # + start and end tokens
            if n > self.context_length:
                shown = text if len(text) <= 80 else text[:77] + "..."
                return ValueError(
                    f"Prompt {shown!r} is too long: {n} tokens, CLIP's limit is {self.context_length} "
                    f"(including start and end tokens). Shorten it."
                )
        return ValueError(
            f"A prompt is longer than CLIP's limit of {self.context_length} tokens. Shorten it."
        )

    def _encode_uncached(self, texts: list[str]) -> torch.Tensor:
        """[N, D] unit embeddings (inference tensors) for prompts not in the cache."""
        token_lists = self._tokenize(texts)
        self.text_forward_calls += 1
        with torch.inference_mode():
            return F.normalize(self._encode_token_lists(token_lists), dim=-1)

    def _encode_token_lists(self, token_lists: list[list[int]]) -> torch.Tensor:
        """CLIP's text tower on a prefix tree of the prompts. Returns [N, D], not normalised.

        CLIP's text transformer is causal: the state at position p depends only on tokens 0..p. So prompts
        that share a prefix ("a photo of the ...", or one template filled with two texts) share those states
        exactly. We run the transformer once per distinct prefix (a trie node), not once per padded token:
        nodes become one sequence whose attention mask lets each node see only its ancestors, with positional
        embeddings by depth. For the 158 prompts of a template pair that is ~900 nodes instead of 158 x 77 =
        12,166 padded tokens (or 2,370 after cutting the batch to its longest prompt).
        """
        # Sorted prompts put shared prefixes next to each other, so each chunk's trie is built incrementally.
        order = sorted(range(len(token_lists)), key=token_lists.__getitem__)
        out = torch.empty(len(token_lists), self.embed_dim, device=self.device)
        chunk: list[int] = []
        chunk_nodes = 0
        prev: list[int] = []
        for i in order:
            seq = token_lists[i]
            shared = _common_prefix(prev, seq) if chunk else 0
            new_nodes = len(seq) - shared
            # Chunks bound the [nodes, nodes] attention mask: memory and the quadratic attention cost.
            if chunk and chunk_nodes + new_nodes > self.max_tree_nodes:
                out[chunk] = self._encode_tree([token_lists[j] for j in chunk])
                chunk, chunk_nodes, new_nodes = [], 0, len(seq)
            chunk.append(i)
            chunk_nodes += new_nodes
            prev = seq
        if chunk:
            out[chunk] = self._encode_tree([token_lists[j] for j in chunk])
        return out

    def _encode_tree(self, seqs: list[list[int]]) -> torch.Tensor:
        """Encode sorted token sequences through their shared prefix tree. Returns [len(seqs), D]."""
        node_tokens: list[int] = []
        node_depths: list[int] = []
        mask_rows: list[int] = []
        mask_cols: list[int] = []
        end_nodes: list[int] = []
        path: list[int] = []  # node ids along the previous sequence
        prev: list[int] = []
        for seq in seqs:
            shared = _common_prefix(prev, seq)
            del path[shared:]
            for depth in range(shared, len(seq)):
                node = len(node_tokens)
                node_tokens.append(seq[depth])
                node_depths.append(depth)
                path.append(node)
                mask_rows.extend([node] * len(path))  # a node attends to itself and its ancestors
                mask_cols.extend(path)
            end_nodes.append(path[-1])
            prev = seq

        model = self.model
        device = self.device
        n = len(node_tokens)
        tokens = torch.tensor(node_tokens, device=device)
        depths = torch.tensor(node_depths, device=device)
        mask = torch.full((n, n), float("-inf"), device=device)
        mask[torch.tensor(mask_rows, device=device), torch.tensor(mask_cols, device=device)] = 0.0
        ends = torch.tensor(end_nodes, device=device)

        x = model.token_embedding(tokens) + model.positional_embedding[depths]  # [n, width]
        x = x.unsqueeze(1)  # [n, 1, width]: sequence-first with batch 1, the layout CLIP's blocks use (LND)
        blocks = list(model.transformer.resblocks)
        for block in blocks[:-1]:
            # Call the block's parts ourselves: it stores the 77x77 causal mask, we need the tree's mask.
            h = block.ln_1(x)
            x = x + block.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
            x = x + block.mlp(block.ln_2(x))
        if blocks:
            # Only end-token states leave the last block: keys/values need every node, queries and MLP don't.
            block = blocks[-1]
            h = block.ln_1(x)
            x = x[ends] + block.attn(h[ends], h, h, need_weights=False, attn_mask=mask[ends])[0]
            x = x + block.mlp(block.ln_2(x))
        else:
            x = x[ends]
        x = model.ln_final(x.squeeze(1))  # [N, width]
        return x @ model.text_projection  # [N, D]

    # ------------------------------------------------------------------ images

    def encode_image(self, img: torch.Tensor) -> torch.Tensor:
        """Differentiable image embedding, for CLIP losses on generator output.

        Args:
            img: [N, 3, H, W] float in [-1, 1] (values outside are not clamped: that would kill gradients).
                Non-square images are center-cropped to a square; then resized to `input_resolution` with
                bilinear interpolation (antialiased when shrinking: a 1024 px face is not aliased at 224 px).

        Returns:
            [N, D] float32, L2-normalised; gradients flow back to `img` (the CLIP weights are frozen).
        """
        if not isinstance(img, torch.Tensor) or img.ndim != 4 or img.shape[1] != 3:
            shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise ValueError(f"encode_image expects img [N, 3, H, W] float in [-1, 1]; got {shape}.")
        x = img.to(device=self.device, dtype=torch.float32)
        height, width = x.shape[-2:]
        side = min(height, width)
        if height != width:
            # Same offsets as torchvision's CenterCrop.
            top = int(round((height - side) / 2.0))
            left = int(round((width - side) / 2.0))
            x = x[..., top : top + side, left : left + side]
        n_px = self.input_resolution
        if side != n_px:
            x = F.interpolate(
                x, size=(n_px, n_px), mode="bilinear", align_corners=False, antialias=side > n_px
            )
        mean, std = self._mean.to(x.device), self._std.to(x.device)
        x = ((x + 1) * 0.5 - mean) / std  # [-1, 1] → [0, 1] → CLIP's normalisation
        return F.normalize(self.model.encode_image(x), dim=-1)

    def encode_image_eval(
        self, images: Sequence[Image.Image | np.ndarray] | Image.Image | np.ndarray, batch_size: int = 32
    ) -> torch.Tensor:
        """Image embedding with CLIP's official preprocessing, for evaluation.

        Bicubic resize of the short side to `input_resolution`, center crop, ToTensor, Normalize(CLIP mean,
        std) (clip/clip.py `_transform`). Images are converted to RGB first (the official transform converts
        after resizing; identical for RGB input).

        Args:
            images: PIL images or uint8 arrays [H, W, 3] (also [H, W], [H, W, 4]); or a single image.
            batch_size: images per forward.

        Returns:
            [N, D] float32, L2-normalised.
        """
        if isinstance(images, (Image.Image, np.ndarray)):
            images = [images]
        pils = [_to_pil(image, i) for i, image in enumerate(images)]
        if not pils:
            return torch.empty(0, self.embed_dim, device=self.device)
        preprocess = self._official_preprocess()
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(pils), batch_size):
                batch = torch.stack([preprocess(p) for p in pils[start : start + batch_size]]).to(self.device)
                chunks.append(F.normalize(self.model.encode_image(batch), dim=-1))
        return torch.cat(chunks)  # outside inference_mode: an ordinary tensor

    def _official_preprocess(self):
        if self._preprocess is None:
            from torchvision.transforms import (
                CenterCrop,
                Compose,
                InterpolationMode,
                Normalize,
                Resize,
                ToTensor,
            )

            n_px = self.input_resolution
            self._preprocess = Compose(
                [
                    Resize(n_px, interpolation=InterpolationMode.BICUBIC),
                    CenterCrop(n_px),
                    ToTensor(),
                    Normalize(CLIP_MEAN, CLIP_STD),
                ]
            )
        return self._preprocess


# ---------------------------------------------------------------------- helpers


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _to_pil(image: Image.Image | np.ndarray, index: int) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if (
            image.dtype != np.uint8
            or image.ndim not in (2, 3)
            or (image.ndim == 3 and image.shape[2] not in (1, 3, 4))
        ):
            raise ValueError(
                f"Image #{index}: expected a uint8 array [H, W, 3] (or [H, W], [H, W, 4]); "
                f"got {image.dtype} {image.shape}."
            )
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[..., 0]
        return Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    raise TypeError(
        f"Image #{index}: expected a PIL image or a uint8 numpy array; got {type(image).__name__}."
    )


def build_small_clip(
    embed_dim: int = 256,
    image_resolution: int = 64,
    vision_layers: int | tuple[int, int, int, int] = 4,
    vision_width: int = 256,
    vision_patch_size: int | None = 8,
    context_length: int = 77,
    vocab_size: int = 49408,
    transformer_width: int = 256,
    transformer_heads: int = 4,
    transformer_layers: int = 4,
    *,
    seed: int | None = None,
) -> CLIP:
    """A small, randomly initialised CLIP of the clip package's own class (used like ViT-B/32 or RN50).

    An int `vision_layers` builds a ViT image tower (patch `vision_patch_size`); a 4-tuple builds the
    package's ModifiedResNet (blocks per stage, base width `vision_width`, patch ignored), as in RN50's
    (3, 4, 6, 3) / 64. The sizes obey what `clip.model.build_model` infers from a state dict (heads = width // 64
    for the transformers, width · 32 // 64 for the ResNet's attention pool), so a saved state dict rebuilds to the
    same architecture. `vocab_size` must stay 49408 for clip's tokenizer.

    Args:
        seed: seeds the initialisation without touching the global RNG state.

    Raises:
        ValueError: sizes that build_model could not rebuild (widths not multiples of 64, heads !=
            width // 64, resolution not a multiple of the patch size, a vocabulary unlike the tokenizer's).
    """
    resnet = isinstance(vision_layers, (tuple, list))
    if resnet:
        if len(vision_layers) != 4 or min(vision_layers) < 1:
            raise ValueError(f"A ResNet tower needs 4 stage depths >= 1; got {tuple(vision_layers)}.")
        if vision_width % 2 or vision_width < 2:
            raise ValueError(f"A ResNet vision_width must be even (pool heads = width // 2); got {vision_width}.")
        if image_resolution % 32:
            raise ValueError(f"A ResNet tower downsamples 32×: image_resolution {image_resolution} is not a "
                             "multiple of 32.")
        vision_layers, vision_patch_size = tuple(int(n) for n in vision_layers), None
    elif vision_width % 64 or vision_width < 64:
        raise ValueError(
            f"vision_width must be a positive multiple of 64 (heads = width // 64); got {vision_width}."
        )
    if transformer_width % 64 or transformer_width < 64:
        raise ValueError(f"transformer_width must be a positive multiple of 64; got {transformer_width}.")
    if transformer_heads != transformer_width // 64:
        raise ValueError(
            f"transformer_heads must be transformer_width // 64 = {transformer_width // 64} (what "
            f"build_model infers from a state dict); got {transformer_heads}."
        )
    if not resnet and image_resolution % vision_patch_size:
        raise ValueError(
            f"image_resolution {image_resolution} is not a multiple of the patch {vision_patch_size}."
        )
    if vocab_size != 49408:
        raise ValueError(
            f"vocab_size must be 49408 (clip's BPE tokenizer emits ids up to 49407); got {vocab_size}."
        )
    if context_length < 3:
        raise ValueError(
            f"context_length must leave room for start, one token and end; got {context_length}."
        )
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = CLIP(
            embed_dim,
            image_resolution,
            vision_layers,
            vision_width,
            vision_patch_size,
            context_length,
            vocab_size,
            transformer_width,
            transformer_heads,
            transformer_layers,
        )
    return model.float().eval()


def clip_config(model: CLIP) -> dict[str, Any]:
    """The `CLIP(...)` keyword arguments that rebuild `model`'s architecture."""
    visual = model.visual
    if isinstance(visual, ModifiedResNet):
        vision_layers: int | tuple[int, ...] = tuple(
            len(layer) for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4)
        )
        vision_width = visual.layer1[0].conv1.in_channels
        vision_patch_size = None
    else:
        vision_layers = len(visual.transformer.resblocks)
        vision_width = visual.conv1.out_channels
        vision_patch_size = visual.conv1.kernel_size[0]
    return {
        "embed_dim": int(model.text_projection.shape[1]),
        "image_resolution": int(visual.input_resolution),
        "vision_layers": vision_layers,
        "vision_width": int(vision_width),
        "vision_patch_size": vision_patch_size,
        "context_length": int(model.context_length),
        "vocab_size": int(model.vocab_size),
        "transformer_width": int(model.transformer.width),
        "transformer_heads": int(model.transformer.resblocks[0].attn.num_heads),
        "transformer_layers": int(model.transformer.layers),
    }


def _resolve_clip_path(name_or_path: str | os.PathLike[str]) -> Path:
    if isinstance(name_or_path, str) and registry.is_known(name_or_path):
        spec = registry.get(name_or_path)
        if spec.kind != "clip":
            raise ValueError(f"{name_or_path!r} is a {spec.kind} model, not CLIP weights.")
        return registry.resolve(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise ValueError(f"{path} is a folder; pass the CLIP weights file inside it.")
    known = [s.name for s in registry.list_known() if s.kind == "clip"]
    if path.suffix:
        raise FileNotFoundError(f"CLIP weights file not found: {path}. Known CLIP names: {known}.")
    hint = ""
    if str(name_or_path) in clip.available_models():
        hint = (
            f" OpenAI's {str(name_or_path)!r} exists but is not registered here; download it and pass "
            "the file's path."
        )
    raise ValueError(
        f"Unknown CLIP model {str(name_or_path)!r}: not a known name or an existing file. "
        f"Known CLIP names: {known}.{hint}"
    )


def _jit_state_dict(path: Path) -> dict[str, torch.Tensor]:
    # TorchScript archives hold TorchScript code and tensors, not pickled Python objects: loading one runs no
    # arbitrary Python. torch.jit.load is deprecated (FutureWarning), yet the only reader for OpenAI's files.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())


def _read_torchscript(path: Path) -> dict[str, torch.Tensor]:
    try:
        return _jit_state_dict(path)
    except Exception as exc:  # noqa: BLE001 - a damaged archive can fail in many ways; report the file
        raise CheckpointError(
            f"{path} looks like a TorchScript archive but could not be read ({type(exc).__name__}); "
            f"expected {_EXPECTED_CLIP}. Is the download incomplete?"
        ) from None


def _read_clip_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state_dict, config or None) from any supported CLIP file."""
    config = None
    if is_torchscript_archive(path):
        state_dict = _read_torchscript(path)
    else:
        try:
            obj = load_checkpoint(path, expected=_EXPECTED_CLIP)
        except CheckpointError as exc:
            # A zip that torch.load rejects may still be a TorchScript archive laid out differently.
            if not zipfile.is_zipfile(path):
                raise
            try:
                state_dict = _jit_state_dict(path)
            except Exception:  # noqa: BLE001 - not TorchScript either; report the original finding
                raise exc from None
        else:
            state_dict = obj
            for wrapper in ("state_dict", "model"):
                if isinstance(obj.get(wrapper), dict):
                    state_dict = obj[wrapper]
                    config = obj.get("config")
                    break
    if config is not None and not isinstance(config, dict):
        raise CheckpointError(
            f"{path}: 'config' should be a dict of CLIP(...) arguments; found {type(config).__name__}."
        )
    if state_dict and all(isinstance(k, str) and k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}  # saved from DataParallel
    _check_clip_keys(state_dict, path)
    return state_dict, config


def _check_clip_keys(state_dict: dict[str, Any], path: Path) -> None:
    if not all(isinstance(k, str) for k in state_dict) or not all(
        isinstance(v, torch.Tensor) for v in state_dict.values()
    ):
        raise CheckpointError(f"{path} is not {_EXPECTED_CLIP}; found a dict that is not name → tensor.")
    missing = [k for k in _TEXT_KEYS if k not in state_dict]
    vit = "visual.proj" in state_dict and "visual.conv1.weight" in state_dict
    resnet = (
        "visual.layer1.0.conv1.weight" in state_dict and "visual.attnpool.positional_embedding" in state_dict
    )
    if not (vit or resnet):
        missing.append(
            "visual.conv1.weight + visual.proj (ViT) or visual.layer1.* + visual.attnpool.* (ResNet)"
        )
    if missing:
        raise CheckpointError(
            f"{path} is not {_EXPECTED_CLIP}: missing {missing}; found {len(state_dict)} keys "
            f"{preview_keys(state_dict)}."
        )


def _build_clip(state_dict: dict[str, torch.Tensor], config: dict[str, Any] | None, path: Path) -> CLIP:
    weights = {k: v.float() for k, v in state_dict.items() if k not in _JIT_EXTRAS}
    try:
        if config is not None:
            unknown = sorted(set(config) - set(_CONFIG_KEYS))
            if unknown:
                raise CheckpointError(
                    f"{path}: unknown CLIP config keys {unknown}; expected {list(_CONFIG_KEYS)}."
                )
            cfg = dict(config)
            if isinstance(cfg.get("vision_layers"), list):
                cfg["vision_layers"] = tuple(cfg["vision_layers"])
            model = CLIP(**cfg)
        else:
            model = build_model(dict(state_dict))  # a copy: build_model deletes keys from its argument
        # build_model loads the weights into fp16 modules (convert_weights), which would round fp32
        # checkpoints; reload the exact values into the fp32 model.
        model = model.float()
        model.load_state_dict(weights)
    except CheckpointError:
        raise
    except (RuntimeError, KeyError, TypeError, ValueError, AssertionError, IndexError) as exc:
        raise CheckpointError(
            f"{path}: the tensors do not form a consistent CLIP model "
            f"({type(exc).__name__}: {str(exc)[:300]})."
        ) from None
    return model.eval()
