"""Safe checkpoint reading: `torch.load(weights_only=True)` with plain, user-facing error messages."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CheckpointError",
    "describe_file",
    "is_torchscript_archive",
    "load_checkpoint",
    "preview_keys",
]

_DEFAULT_EXPECTED = "a PyTorch checkpoint (a dict of tensors saved with torch.save)"


class CheckpointError(ValueError):
    """A file exists but is not the checkpoint we expected (corrupt, foreign, unsafe, missing keys)."""


def is_torchscript_archive(path: str | os.PathLike[str]) -> bool:
    """True when `path` is a TorchScript zip archive (as the official OpenAI CLIP `.pt` files are).

    `torch.save` zips hold `<root>/data.pkl` and `<root>/data/*` only; TorchScript archives additionally carry
    `<root>/constants.pkl` and compiled sources under `<root>/code/`.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(name.endswith("/constants.pkl") or "/code/" in name for name in names)


def describe_file(path: str | os.PathLike[str]) -> str:
    """What a file looks like, in a few words for error messages ("a text file starting with ...")."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(64)
    except OSError as exc:
        return f"an unreadable file ({exc.strerror or exc})"
    if size == 0:
        return "an empty file (0 bytes)"
    if head.startswith(b"PK\x03\x04"):
        if is_torchscript_archive(path):
            return f"a TorchScript archive ({size:,} bytes)"
        if not zipfile.is_zipfile(path):
            return f"a truncated or corrupt zip archive ({size:,} bytes; an interrupted download?)"
        return f"a zip archive ({size:,} bytes)"
    if head.startswith(b"\x93NUMPY"):
        return f"a NumPy .npy array file ({size:,} bytes)"
    if head[:1] == b"\x80":
        return f"a raw Python pickle ({size:,} bytes)"
    if head.lstrip().startswith((b"<!DOCTYPE", b"<html", b"<HTML")):
        return f"an HTML page ({size:,} bytes; a download that saved an error or login page?)"
    text = None
    for cut in (
        len(head),
        len(head) - 1,
        len(head) - 2,
        len(head) - 3,
    ):  # the read may split a UTF-8 character
        try:
            text = head[:cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    if text is None or any(ord(c) < 32 and c not in "\t\n\r" for c in text):
        return f"{size:,} bytes of unrecognised binary data"
    preview = text.strip().splitlines()[0][:40] if text.strip() else ""
    return f"a text file ({size:,} bytes) starting with {preview!r}"


def _unsafe_global(message: str) -> str | None:
    # torch's weights-only unpickler names the refused import as "GLOBAL module.name".
    match = re.search(r"GLOBAL ([\w.]+)", message)
    return match.group(1) if match else None


def load_checkpoint(
    path: str | os.PathLike[str],
    required_keys: Iterable[str] | None = None,
    *,
    expected: str = _DEFAULT_EXPECTED,
) -> dict[str, Any]:
    """Load a checkpoint dict safely (never runs pickled code).

    Always `torch.load(path, map_location="cpu", weights_only=True)`: only tensors, containers and primitive
    values can come back, so a malicious or foreign pickle is refused instead of executed.

    Args:
        path: the file to read.
        required_keys: top-level keys that must be present (e.g. `("g_ema",)`).
        expected: what the caller expected, used in error messages.

    Returns:
        The top-level dict, tensors on CPU.

    Raises:
        FileNotFoundError: `path` does not exist.
        CheckpointError: anything else (not a torch file, truncated, TorchScript, disallowed pickle globals,
            not a dict, missing required keys); the message names the file, what was expected and found.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    if is_torchscript_archive(path):
        # torch.load refuses TorchScript with weights_only=True; say so plainly (callers that accept
        # TorchScript, like the CLIP loader, check this first and use torch.jit.load).
        raise CheckpointError(
            f"{path} is a TorchScript archive, not {expected}. Load it with torch.jit.load, or re-save its "
            "state_dict() with torch.save."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _unsafe_global(str(exc))
        if refused is not None:
            raise CheckpointError(
                f"{path} is not {expected}: it is a pickle that needs the Python object '{refused}', which "
                "safe loading (weights_only=True) refuses to import. If you trust the file, re-save only its "
                "tensors, e.g. torch.save({'g_ema': ckpt['g_ema']}, 'clean.pt'), and load that instead."
            ) from None
        raise CheckpointError(f"{path} is not {expected}; found {describe_file(path)}.") from None
    except Exception as exc:  # noqa: BLE001 - garbage bytes make the unpickler raise almost any type
        # Seen: RuntimeError (broken zip, "failed finding central directory"), EOFError (empty file), KeyError
        # (text read as the legacy format), IndexError (random bytes). Users need the file named, not these.
        raise CheckpointError(
            f"{path} is not {expected}; found {describe_file(path)} ({type(exc).__name__})."
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} is not {expected}; it holds a {type(obj).__name__}, not a dict.")
    if required_keys is not None:
        missing = [key for key in required_keys if key not in obj]
        if missing:
            raise CheckpointError(
                f"{path} is not {expected}: missing key(s) {missing}; found keys {preview_keys(obj)}."
            )
    return obj


def preview_keys(d: dict[str, Any], limit: int = 8) -> str:
    """The first keys of a dict as "[k1, k2, ... (N in all)]", for error messages."""
    keys = [str(k) for k in d]
    shown = ", ".join(keys[:limit])
    more = f", ... ({len(keys)} in all)" if len(keys) > limit else ""
    return f"[{shown}{more}]" if keys else "[] (an empty dict)"
