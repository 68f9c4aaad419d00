"""Model names → files: what each weights file is, where to look for it, its checksum, and safe loading."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

# Re-exported (see __all__): callers can `from styleclip.models.registry import load_checkpoint`.
from styleclip.models.checkpoints import CheckpointError, load_checkpoint

__all__ = [
    "CheckpointError",
    "ChecksumError",
    "ModelFile",
    "ModelNotFoundError",
    "MODELS_ENV",
    "assets_dir",
    "get",
    "is_known",
    "list_known",
    "load_checkpoint",
    "models_dir",
    "register",
    "resolve",
    "sha256_file",
    "verify_sha256",
]

log = logging.getLogger(__name__)

MODELS_ENV = "STYLECLIP_MODELS"
# styleclip/models/registry.py → the repository root. Module-level so tests can point it at a tmp dir.
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ModelFile:
    """One weights file the app knows about.

    Attributes:
        name: registry key, e.g. "ViT-B/32".
        filename: the file's name in the models folder, e.g. "ViT-B-32.pt".
        kind: "generator" | "clip" | "identity" | "encoder" | ... (free text, for listings and checks).
        size_bytes: exact size, or None where no public source states it.
        sha256: lowercase hex digest, or None where no public source states it (never guessed).
        hf_repo: a Hugging Face model repo that hosts the file, or None.
        hf_filename: path of the file inside `hf_repo` (defaults to `filename`).
        description: one line for listings and error messages.
        asset_path: for files shipped with the repo, the path under `<repo>/assets/`.
    """

    name: str
    filename: str
    kind: str
    size_bytes: int | None = None
    sha256: str | None = None
    hf_repo: str | None = None
    hf_filename: str | None = None
    description: str = ""
    asset_path: str | None = None


class ModelNotFoundError(FileNotFoundError):
    """A known model's file is not on disk and could not be downloaded; the message says where to put it."""


class ChecksumError(ValueError):
    """A file's SHA-256 differs from the registry's."""


# Facts and their sources (checked 2026; see the report in the commit that added this file):
# - ViT-B/32: the sha256 is the hex path segment of OpenAI's download URL in clip/clip.py `_MODELS` (installed
#   clip-anytorch 2.6.0); 353,976,522 bytes is stated by several independent public repos that pin the file.
#   No Hugging Face repo is known to host this exact TorchScript file, so hf_repo is None.
# - stylegan2-ffhq-config-f.pt: rosinality's conversion of NVIDIA's config-f FFHQ weights; public code
#   (JoJoGAN's notebook) downloads it with hf_hub_download from akhaliq/jojogan-stylegan2-ffhq-config-f.
#   Size and sha256: no public source found → None.
# - model_ir_se50.pth (TreB1eN / pSp ArcFace IR-SE50): the original is a Google Drive link in the StyleCLIP
#   README; public code downloads a copy from the HF repo Fubei/splatviz_inversion_checkpoints (a third-party
#   mirror). Size and sha256: no public source found → None.
# - e4e_ffhq_encode.pt: the original is a Google Drive link in omertov/encoder4editing; public code downloads
#   a copy from the HF repo AIRI-Institute/HairFastGAN (pretrained_models/encoder4editing/). About 1.2 GB, but
#   the exact size and the sha256 were not found → None.
_KNOWN: dict[str, ModelFile] = {}
_LOCK = threading.Lock()


def register(spec: ModelFile, *, replace: bool = False) -> ModelFile:
    """Add a model file to the registry (e.g. the embedded "toyfaces" models under assets/toyfaces/).

    Raises:
        ValueError: the name is taken by a different spec and `replace` is False.
    """
    if not spec.name or not spec.filename:
        raise ValueError(f"A ModelFile needs a name and a filename; got {spec!r}.")
    if spec.sha256 is not None and (
        len(spec.sha256) != 64 or any(c not in "0123456789abcdef" for c in spec.sha256)
    ):
        raise ValueError(f"sha256 for {spec.name!r} must be 64 lowercase hex digits; got {spec.sha256!r}.")
    with _LOCK:
        old = _KNOWN.get(spec.name)
        if old is not None and old != spec and not replace:
            raise ValueError(f"Model name {spec.name!r} is already registered as {old!r}; pass replace=True.")
        _KNOWN[spec.name] = spec
    return spec


for _spec in (
    ModelFile(
        name="stylegan2-ffhq-1024",
        filename="stylegan2-ffhq-config-f.pt",
        kind="generator",
        hf_repo="akhaliq/jojogan-stylegan2-ffhq-config-f",
        hf_filename="stylegan2-ffhq-config-f.pt",
        description="StyleGAN2 config-f FFHQ 1024x1024 generator, rosinality format {'g_ema', 'latent_avg'}",
    ),
    ModelFile(
        name="ViT-B/32",
        filename="ViT-B-32.pt",
        kind="clip",
        size_bytes=353_976_522,
        sha256="40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
        description="OpenAI CLIP ViT-B/32 (TorchScript archive, as downloaded by clip.load)",
    ),
    ModelFile(
        name="arcface-ir-se50",
        filename="model_ir_se50.pth",
        kind="identity",
        hf_repo="Fubei/splatviz_inversion_checkpoints",
        hf_filename="model_ir_se50.pth",
        description="ArcFace IR-SE50 face-recognition backbone (TreB1eN/pSp), used for the identity loss",
    ),
    ModelFile(
        name="e4e-ffhq",
        filename="e4e_ffhq_encode.pt",
        kind="encoder",
        hf_repo="AIRI-Institute/HairFastGAN",
        hf_filename="pretrained_models/encoder4editing/e4e_ffhq_encode.pt",
        description="encoder4editing FFHQ encoder (photo → W+), about 1.2 GB",
    ),
):
    register(_spec)


def list_known() -> list[ModelFile]:
    """Every registered model file, in registration order."""
    with _LOCK:
        return list(_KNOWN.values())


def is_known(name: str) -> bool:
    """True if `name` is a registered model name (or the filename of one)."""
    return _lookup(name) is not None


def _lookup(name: str) -> ModelFile | None:
    with _LOCK:
        if name in _KNOWN:
            return _KNOWN[name]
        # A filename ("ViT-B-32.pt") is accepted as an alias: it is what users see in the models folder.
        for spec in _KNOWN.values():
            if spec.filename == name:
                return spec
    return None


def get(name: str) -> ModelFile:
    """The spec registered under `name` (or whose filename is `name`).

    Raises:
        ValueError: unknown name; the message lists the known ones.
    """
    spec = _lookup(name)
    if spec is None:
        known = ", ".join(repr(s.name) for s in list_known())
        raise ValueError(f"Unknown model name {name!r}. Known models: {known}.")
    return spec


def models_dir() -> Path:
    """Where weights files go: `$STYLECLIP_MODELS` if set, else `<repo>/models/`."""
    env = os.environ.get(MODELS_ENV, "").strip()
    return Path(env).expanduser() if env else REPO_ROOT / "models"


def assets_dir() -> Path:
    """`<repo>/assets/`: small weights shipped with the repository (the embedded domain)."""
    return REPO_ROOT / "assets"


def _hub_offline() -> bool:
    # Read at call time (huggingface_hub reads HF_HUB_OFFLINE once, at import).
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


_REACHABLE: dict[str, tuple[float, bool]] = {}


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe of the hub, cached for a minute.

    Without it an offline machine spends ~25 s in huggingface_hub's retry loop before we can show the
    "put the file here" message.
    """
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme != "http" else 80)
    now = time.monotonic()
    cached = _REACHABLE.get(endpoint)
    if cached is not None and now - cached[0] < 60:
        return cached[1]
    try:
        with socket.create_connection((host, port), timeout=timeout):
            ok = True
    except OSError:
        ok = False
    _REACHABLE[endpoint] = (now, ok)
    return ok


def _from_hub(spec: ModelFile) -> tuple[Path | None, str]:
    """Try the Hugging Face hub; returns (path or None, a note for the not-found message)."""
    if spec.hf_repo is None:
        return None, "no Hugging Face mirror is known"
    import huggingface_hub  # noqa: PLC0415 - heavy import, only needed on this path

    hf_filename = spec.hf_filename or spec.filename
    if _hub_offline():
        # Offline mode: a cache lookup only, never a network call.
        cached = huggingface_hub.try_to_load_from_cache(spec.hf_repo, hf_filename)
        if isinstance(cached, str) and Path(cached).is_file():
            return Path(cached), ""
        return (
            None,
            f"HF_HUB_OFFLINE is set and {spec.hf_repo}/{hf_filename} is not in the Hugging Face cache",
        )
    if not _hub_reachable():
        return None, "the Hugging Face hub is not reachable (offline?)"
    log.info("Downloading %s from Hugging Face repo %s (%s)", spec.filename, spec.hf_repo, hf_filename)
    try:
        path = huggingface_hub.hf_hub_download(repo_id=spec.hf_repo, filename=hf_filename)
    except (OSError, ValueError, RuntimeError) as exc:
        # HfHubHTTPError, connection errors and LocalEntryNotFoundError are all OSError subclasses.
        return None, f"download from {spec.hf_repo} failed ({type(exc).__name__}: {str(exc)[:200]})"
    return Path(path), ""


def _check(spec: ModelFile, path: Path, verify: bool) -> Path:
    if spec.size_bytes is not None:
        size = path.stat().st_size
        if size != spec.size_bytes:
            raise ChecksumError(
                f"{path} has {size:,} bytes but {spec.name} ({spec.filename}) should have "
                f"{spec.size_bytes:,}; "
                "the file is incomplete or a different file. Delete it and download it again."
            )
    if verify and spec.sha256 is not None:
        verify_sha256(path, spec.sha256)
    return path


def resolve(name: str, *, allow_download: bool = True, verify: bool = True) -> Path:
    """The local path of a known model file, downloading it from the hub if needed and possible.

    Search order:
      1. `$STYLECLIP_MODELS/<filename>` if the env var is set, else `<repo>/models/<filename>`;
      2. `<repo>/assets/<asset_path>` for files shipped with the repo;
      3. the Hugging Face hub (`hf_hub_download`) when the spec names a repo, `allow_download` is True,
         HF_HUB_OFFLINE is not set (then only the local HF cache is consulted) and the hub answers;
      4. otherwise `ModelNotFoundError`, naming the file, its size and where to put it.

    Args:
        name: a registered name ("ViT-B/32") or a registered filename ("ViT-B-32.pt").
        allow_download: False never touches the network.
        verify: check the sha256 where the registry knows it (cached per path, mtime and size).

    Raises:
        ValueError: unknown name.
        ModelNotFoundError: the file is nowhere to be found.
        ChecksumError: the file found has the wrong size or sha256.
    """
    spec = get(name)
    folder = models_dir()
    searched = [folder / spec.filename]
    if spec.asset_path:
        searched.append(assets_dir() / spec.asset_path)
    for candidate in searched:
        if candidate.is_file():
            return _check(spec, candidate, verify)

    note = "downloads disabled" if not allow_download else ""
    if allow_download:
        path, note = _from_hub(spec)
        if path is not None:
            return _check(spec, path, verify)

    size = f"{spec.size_bytes:,} bytes" if spec.size_bytes is not None else "size not published"
    where = "\n".join(f"  - {p}" for p in searched)
    source = (
        f" It is also on Hugging Face: {spec.hf_repo} ({spec.hf_filename or spec.filename})."
        if spec.hf_repo
        else ""
    )
    raise ModelNotFoundError(
        f"Model file {spec.filename!r} for {spec.name!r} ({spec.description or spec.kind}; {size}) "
        "was not found.\n"
        f"Put it at {folder / spec.filename} (the models folder), or set {MODELS_ENV} to a folder that "
        f"contains it.{source}\nSearched:\n{where}" + (f"\nHub: {note}." if note else "")
    )


# sha256 cache keyed by (resolved path, mtime_ns, size): hashing a 350 MB file takes seconds, and the app
# resolves the same files at every start-up.
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Lowercase hex SHA-256 of a file, streamed in 1 MiB chunks and cached by (path, mtime, size)."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    digest = _SHA_CACHE.get(key)
    if digest is None:
        h = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(chunk_size):
                h.update(chunk)
        digest = h.hexdigest()
        _SHA_CACHE[key] = digest
    return digest


def verify_sha256(path: str | os.PathLike[str], expected: str) -> str:
    """Check a file against an expected SHA-256.

    Returns:
        The digest (equal to `expected`).

    Raises:
        ChecksumError: the digest differs; the message gives both.
    """
    actual = sha256_file(path)
    if actual != expected.strip().lower():
        raise ChecksumError(
            f"{path} failed its checksum: sha256 is {actual}, expected {expected}. The file is corrupt, "
            "incomplete or a different file; delete it and download it again."
        )
    return actual
