"""Models the app can pick: a generator with the CLIP, identity model and precomputed statistics it goes with.

A `ModelBundle` names registry entries (see registry.py); loading is cached per process so every engine and
every UI session share one generator and one CLIP.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from . import registry
from .generator import Generator
from .generator_io import load_generator

__all__ = ["ModelBundle", "DEFAULT_MODEL", "get_bundle", "list_bundles", "available_bundles",
           "load_generator_spec", "register_bundle", "precomputed_dir", "resolve_file", "builtin_names"]

DEFAULT_MODEL = "toyfaces"
PRECOMPUTED_ROOT = registry.REPO_ROOT / "precomputed"
ASSETS_ROOT = registry.REPO_ROOT / "assets"


@dataclass(frozen=True)
class ModelBundle:
    """One selectable model.

    Attributes:
        name: what the app and CLI call it ("toyfaces", "ffhq").
        generator: registry name of the generator file, or its path (people's own models, `user_models`).
        clip: registry name (or CLIP name such as "ViT-B/32") of the CLIP model, or the path of a CLIP file.
        identity: registry name of the identity model, or None.
        auto_beta_floor: channel count auto-beta keeps (20 for FFHQ in the official GUI, 100 for others).
        truncation: truncation psi used when sampling sources from seeds.
        description: one line for the model picker.
        alignment: how photos are prepared: "ffhq" (dlib landmarks + the FFHQ crop) or "center" (a domain that is
            aligned by construction: centre crop and resize).
        mapper_id_weight: the identity-loss weight mapper training uses by default when the model's identity
            network is on disk (the official 0.1 with ArcFace; each network's 1 − cos has its own scale).
        opt_l2_lambda, opt_id_lambda: latent optimization's default L2 and identity weights (the identity one
            applies when the identity network is on disk). FFHQ: the official 0.008 and the notebook's 0.005.
        opt_steps: latent optimization's default number of Adam steps (FFHQ: the notebook's 40).
        opt_dir_lambda: latent optimization's default directional CLIP loss weight (0: the official objective).
        mapper_direction_weight: the directional CLIP loss's weight in mapper training by default (0: the official
            objective), from the neutral text "face".
        relevance_shrinkage: global directions' relevance metric: None for the official cosine fs3 · Δt, a number
            for the whitened cosine with that shrinkage (engines.statistics.WhitenedRelevance).
        example_edits: (neutral, target) text pairs the app offers as starting points: pairs this model's CLIP
            reads well.
    """

    name: str
    generator: str
    clip: str
    identity: str | None = None
    auto_beta_floor: int = 20
    truncation: float = 0.7
    description: str = ""
    alignment: str = "ffhq"
    mapper_id_weight: float = 0.1
    opt_l2_lambda: float = 0.008
    opt_id_lambda: float = 0.005
    opt_steps: int = 40
    opt_dir_lambda: float = 0.0
    mapper_direction_weight: float = 0.0
    relevance_shrinkage: float | None = None
    example_edits: tuple[tuple[str, str], ...] = ()


_BUNDLES: dict[str, ModelBundle] = {}
_LOCK = threading.Lock()


def register_bundle(bundle: ModelBundle) -> ModelBundle:
    with _LOCK:
        _BUNDLES[bundle.name] = bundle
    return bundle


# The embedded default: trained in this repo on the procedural toyfaces domain, shipped under assets/toyfaces/.
registry.register(registry.ModelFile(
    name="toyfaces-generator", filename="toyfaces-generator.pt", kind="generator", asset_path="toyfaces/generator.pt",
    description="embedded 64 px StyleGAN2 distilled from the toyfaces renderer (python -m styleclip.toyfaces.train_generator)"))
registry.register(registry.ModelFile(
    name="toyfaces-clip", filename="toyfaces-clip.pt", kind="clip", asset_path="toyfaces/clip.pt",
    description="embedded small CLIP (64 px ViT) trained on toyfaces captions (python -m styleclip.toyfaces.train_clip)"))
# The identity weight of the shipped toyfaces mappers, and the optimization defaults for this model (BENCHMARKS.md,
# "Identity term in mapper training" and the edit benchmark).
MAPPER_ID_WEIGHT_TOYFACES = 0.3
# Mapper training on this model adds StyleGAN-NADA's directional loss (BENCHMARKS.md, "Directional loss in mapper
# training"): preservation of the edits it was tried on rose by 4–9 points.
MAPPER_DIRECTION_WEIGHT_TOYFACES = 3.0
# Global directions on this model rank channels in a whitened CLIP metric: 41% / 89% → 51% / 93% on the edit
# benchmark, and better on held-out seeds and edits too (BENCHMARKS.md, "Whitened relevance").
RELEVANCE_SHRINKAGE_TOYFACES = 10.0
# Latent optimization's identity weight on this model: 1.0 → 0.5 raised success from 46% to 61% (held-out seeds
# 45% → 53%) at the same preservation with CLIP step 13,924 (BENCHMARKS.md, "Edit benchmark").
OPT_ID_LAMBDA_TOYFACES = 0.5
# In the embedded CLIP's training words (toyfaces.vocabulary), and made by global directions on at least 60% of the
# faces at the app's defaults (`python benchmarks/bench_edits.py --engine global [--edit-set heldout]`, 2026-11-28).
EXAMPLE_EDITS_TOYFACES = (
    ("face", "smiling face"), ("face", "face with blond hair"), ("face", "old face"),
    ("face", "face with sunglasses"), ("face", "face with lipstick"), ("face", "face with closed eyes"),
    ("face", "face with glasses"), ("face", "face with red hair"), ("face", "face with blue eyes"),
    ("face", "face with a big nose"), ("face", "face with rosy cheeks"), ("face", "face with a moustache"),
)
# The official README's examples (global directions, FFHQ).
EXAMPLE_EDITS_FFHQ = (
    ("face", "smiling face"), ("female face", "male face"), ("face with hair", "face with blonde hair"),
    ("face with hair", "face with Hi-top fade hair"), ("face with eyes", "face with blue eyes"),
)
register_bundle(ModelBundle(
    name="toyfaces", generator="toyfaces-generator", clip="toyfaces-clip", identity=None,
    auto_beta_floor=20, truncation=1.0, alignment="center", mapper_id_weight=MAPPER_ID_WEIGHT_TOYFACES,
    mapper_direction_weight=MAPPER_DIRECTION_WEIGHT_TOYFACES,
    opt_l2_lambda=0.05, opt_id_lambda=OPT_ID_LAMBDA_TOYFACES, opt_steps=100,
    relevance_shrinkage=RELEVANCE_SHRINKAGE_TOYFACES, example_edits=EXAMPLE_EDITS_TOYFACES,
    description="Embedded default: cartoon faces rendered and learned in this repo (64 px, runs on a CPU)"))
register_bundle(ModelBundle(
    name="ffhq", generator="stylegan2-ffhq-1024", clip="ViT-B/32", identity="arcface-ir-se50",
    auto_beta_floor=20, truncation=0.7, example_edits=EXAMPLE_EDITS_FFHQ,
    description="StyleGAN2 FFHQ 1024 (rosinality format) + CLIP ViT-B/32 — bring your own weights"))


_BUILTIN = frozenset(_BUNDLES)


def builtin_names() -> frozenset[str]:
    """The models defined here (people's own models cannot take these names)."""
    return _BUILTIN


def _discover_user_models() -> None:
    from . import user_models  # imported here: it builds on this module

    user_models.discover()


def get_bundle(name: str) -> ModelBundle:
    """The bundle called `name`; "" means the default model. Unknown names raise ValueError listing the known.

    A name not defined here is looked for among people's own models (`user_models`, `<name>.model.json`)."""
    name = name or DEFAULT_MODEL
    if name not in _BUNDLES:
        _discover_user_models()
    try:
        return _BUNDLES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(_BUNDLES))} (add your own "
                         "with `python -m styleclip add-model`)") from None


def list_bundles() -> list[ModelBundle]:
    """Every model: the ones defined here and people's own (`user_models`)."""
    _discover_user_models()
    return [_BUNDLES[k] for k in sorted(_BUNDLES)]


def resolve_file(spec: str, allow_download: bool = True, verify: bool = True) -> Path:
    """A bundle's file: a registry name (`registry.resolve`), or the path of a file (people's own models)."""
    if registry.is_known(spec):
        return registry.resolve(spec, allow_download=allow_download, verify=verify)
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    raise FileNotFoundError(f"model file not found: {spec} (moved or deleted? run `python -m styleclip add-model` "
                            "again with its new path)")


def _files_present(bundle: ModelBundle) -> bool:
    try:
        resolve_file(bundle.generator, allow_download=False, verify=False)
        resolve_file(bundle.clip, allow_download=False, verify=False)
    except (FileNotFoundError, ValueError):
        return False
    return True


def available_bundles() -> list[ModelBundle]:
    """Bundles whose generator and CLIP files are on disk now (the default model first)."""
    present = [b for b in list_bundles() if _files_present(b)]
    return sorted(present, key=lambda b: (b.name != DEFAULT_MODEL, b.name))


def mappers_dir(name: str) -> Path:
    """Where a model's shipped latent mappers live: assets/mappers/<model>/*.pt."""
    return ASSETS_ROOT / "mappers" / get_bundle(name).name


def precomputed_dir(name: str) -> Path:
    """Where the per-model statistics live: precomputed/<model>/."""
    return PRECOMPUTED_ROOT / get_bundle(name).name


@functools.lru_cache(maxsize=4)
def _load_generator_cached(path: str, device: str) -> Generator:
    return load_generator(path, device)


def load_generator_spec(spec: str, device: str | torch.device = "cpu") -> Generator:
    """A checkpoint path, a bundle name ("toyfaces") or a registry file name → a shared, eval-mode Generator on
    `device` (one copy per file and device)."""
    device = str(torch.device(device))
    path = Path(spec)
    if path.suffix in (".pt", ".pth", ".ckpt") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"generator checkpoint not found: {spec}")
        return _load_generator_cached(str(path.resolve()), device)
    name = _BUNDLES[spec].generator if spec in _BUNDLES else spec
    return _load_generator_cached(str(registry.resolve(name)), device)
