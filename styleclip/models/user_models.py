"""Models people add from their own files, without code: one `<name>.model.json` per model in the models folder.

`python -m styleclip add-model --name cats --generator cats.pt` checks the checkpoint (any rosinality StyleGAN2:
size, widths and depth are read off its weights) and writes `cats.model.json` beside the weights; from then on
the app's model picker, the API and every CLI command know "cats" like the built-in models, and
`python -m styleclip precompute --model cats` makes its global-direction statistics. The file is JSON (never
unpickled); a broken one is skipped with a warning, so one bad file does not take the app down.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path

from . import registry
from .checkpoints import CheckpointError
from .model_zoo import ModelBundle, builtin_names, register_bundle

__all__ = ["ALIGNMENTS", "SUFFIX", "UserModelError", "add_model", "discover", "model_file"]

log = logging.getLogger(__name__)

SUFFIX = ".model.json"
ALIGNMENTS = ("center", "ffhq")
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
_FIELDS = {"name", "generator", "clip", "truncation", "alignment", "description"}


class UserModelError(ValueError):
    """A model description that cannot be used; the message says what to change."""


def model_file(name: str) -> Path:
    """Where the description of model `name` lives: `<models folder>/<name>.model.json`."""
    return registry.models_dir() / f"{name}{SUFFIX}"


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name or ""):
        raise UserModelError(f"Model name {name!r} is not usable: use 1-40 lower-case letters, digits, '-' or '_', "
                             "starting with a letter or digit (e.g. 'cats' or 'ffhq-256').")
    if name in builtin_names():
        raise UserModelError(f"{name!r} is a built-in model; pick another name.")
    return name


def _check_clip(clip: str) -> str:
    if registry.is_known(clip):
        return clip
    path = Path(clip).expanduser()
    if path.is_file():
        return str(path.resolve())
    known = ", ".join(s.name for s in registry.list_known() if s.kind == "clip")
    raise UserModelError(f"CLIP {clip!r} is neither a known CLIP ({known}) nor an existing file.")


def _bundle(data: dict) -> ModelBundle:
    """A ModelBundle from a description's fields, each checked (UserModelError names the first wrong one)."""
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise UserModelError(f"unknown field(s) {unknown}; the fields are {sorted(_FIELDS)}")
    if not isinstance(data.get("generator"), str) or not isinstance(data.get("clip", ""), str):
        raise UserModelError("'generator' (a checkpoint path) and 'clip' must be strings")
    truncation = data.get("truncation", 0.7)
    if not isinstance(truncation, (int, float)) or not math.isfinite(truncation) or not 0 < truncation <= 1:
        raise UserModelError(f"truncation must be a number in (0, 1], got {truncation!r}")
    alignment = data.get("alignment", "center")
    if alignment not in ALIGNMENTS:
        raise UserModelError(f"alignment must be one of {list(ALIGNMENTS)}, got {alignment!r}")
    generator = Path(data["generator"]).expanduser()
    return ModelBundle(
        name=_check_name(data.get("name", "")), generator=str(generator.resolve()),
        clip=_check_clip(data.get("clip") or "ViT-B/32"), truncation=float(truncation), alignment=alignment,
        description=str(data.get("description") or f"your model: {generator.name}"))


def add_model(name: str, generator: str | os.PathLike[str], clip: str = "ViT-B/32", *, truncation: float = 0.7,
              alignment: str = "center", description: str = "") -> tuple[ModelBundle, dict]:
    """Checks a generator checkpoint and writes `<name>.model.json`, then registers the model.

    Args:
        generator: a rosinality-format StyleGAN2 checkpoint ({"g_ema", ...}); loaded once here to check it.
        clip: a known CLIP ("ViT-B/32", "toyfaces-clip") or a CLIP file.
        alignment: how uploaded photos are prepared: "center" (centre crop; any domain) or "ffhq" (face
            landmarks and the FFHQ crop, for FFHQ-aligned face models).

    Returns:
        (the bundle, {"size", "style_dim", "n_layers"} of the generator).

    Raises:
        UserModelError, CheckpointError, FileNotFoundError: with a plain message saying what to fix.
    """
    from .generator_io import load_generator  # here: discovery does not need torch models

    path = Path(generator).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"generator checkpoint not found: {path}")
    data = {"name": name, "generator": str(path.resolve()), "clip": clip, "truncation": truncation,
            "alignment": alignment, "description": description}
    bundle = _bundle(data)
    try:
        g = load_generator(path)
    except CheckpointError as exc:
        raise CheckpointError(f"{path} is not a usable StyleGAN2 generator: {exc}") from None
    shape = {"size": g.size, "style_dim": g.style_dim, "n_layers": g.n_latent}
    target = model_file(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps({k: v for k, v in data.items() if v != ""}, indent=2) + "\n")
    tmp.replace(target)
    register_bundle(bundle)
    return bundle, shape


def discover() -> list[ModelBundle]:
    """Registers every valid `*.model.json` of the models folder; a broken one is logged and skipped."""
    folder = registry.models_dir()
    found = []
    for path in sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else ():
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise UserModelError("the file must hold one JSON object")
            if data.get("name") != path.name[: -len(SUFFIX)]:
                raise UserModelError(f"its 'name' must be {path.name[: -len(SUFFIX)]!r}, as the file is named")
            bundle = _bundle(data)
        except (OSError, ValueError) as exc:  # json.JSONDecodeError and UserModelError are ValueErrors
            log.warning("skipping model description %s: %s", path, exc)
            continue
        found.append(register_bundle(bundle))
    return found
