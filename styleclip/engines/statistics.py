"""Per-model statistics for global directions: S mean/std and the channel relevance matrix (fs3).

Files under precomputed/<model>/: `stats.npz` (mean, std over the flat s vector), `fs3.npy` ([C, D] unit
rows, one per conv channel in S order) and `manifest.json` (the generator's and CLIP's sha256, method,
sample counts). The official StyleCLIP files (`fs3.npy` with 6048 or 5376 rows, the `S_mean_std` pickle)
load too; the pickle goes through an unpickler that only builds numpy arrays and lists.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..models.generator import Generator

__all__ = ["GlobalStatistics", "StatisticsError", "WhitenedRelevance", "load_statistics",
           "load_official_s_mean_std", "conv_channel_index"]


class StatisticsError(ValueError):
    """Precomputed statistics are missing, malformed or belong to other model files."""


def conv_channel_index(generator: Generator) -> torch.Tensor:
    """[C] positions of the conv (non-ToRGB) channels in the flat s vector, in S order."""
    return torch.cat([torch.arange(layer.offset, layer.offset + layer.dim) for layer in generator.conv_layers])


@dataclass
class GlobalStatistics:
    """S statistics and the relevance matrix of one generator + CLIP pair.

    Attributes:
        mean, std: [s_dim] per-channel mean and (population) std of s over sampled latents.
        fs3: [R, D] unit rows, R ≤ C conv channels; rows beyond R (official 5376-row files) get relevance 0.
        conv_index: [C] positions of the conv channels in the flat s vector.
        manifest: provenance (hashes of the generator and CLIP files, method, counts).
    """

    mean: torch.Tensor
    std: torch.Tensor
    fs3: torch.Tensor
    conv_index: torch.Tensor
    manifest: dict = field(default_factory=dict)

    @property
    def std_conv(self) -> torch.Tensor:
        return self.std[self.conv_index]

    def relevance_of(self, dt: torch.Tensor) -> torch.Tensor:
        """dt: [D] unit text direction → [C] relevance (cosine) of each conv channel."""
        r = torch.zeros(self.conv_index.numel())
        r[: self.fs3.shape[0]] = self.fs3 @ dt.to(self.fs3)
        return r

    def check_compatible(self, generator: Generator, clip_model) -> None:
        if self.mean.numel() != generator.s_dim:
            raise StatisticsError(f"statistics are for an S space of {self.mean.numel()} dims, "
                                  f"but the generator has {generator.s_dim}")
        if self.fs3.shape[1] != clip_model.embed_dim:
            raise StatisticsError(f"the relevance matrix has {self.fs3.shape[1]}-dim rows, "
                                  f"but the CLIP model embeds in {clip_model.embed_dim} dims")

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        _atomic(directory / "stats.npz", lambda p: np.savez(p, mean=self.mean.numpy(), std=self.std.numpy()))
        _atomic(directory / "fs3.npy", lambda p: np.save(p, self.fs3.numpy().astype(np.float32)))
        _atomic(directory / "manifest.json", lambda p: p.write_text(json.dumps(self.manifest, indent=2)))


class WhitenedRelevance:
    """Relevance as a cosine in a whitened CLIP metric, a departure from the official plain cosine (opt-in per model).

    The rows of fs3 share a few axes of CLIP's image space: nearly every channel moves the embedding along them,
    whatever else it changes. The plain cosine fs3 · Δt therefore ranks channels by how far they move along those
    shared axes, and a text direction with a component there (most have one) selects hundreds of channels that
    change the face in general rather than the named attribute. Here both sides are mapped through
    W = (Σ + shrinkage·mean(eig Σ)·I)^(−1/2), Σ the second moment of the rows, before the cosine: shared axes count
    less, none is deleted (deleting the top two principal axes helped some edits and ruined others,
    BENCHMARKS.md). As shrinkage grows, W tends to a multiple of I and the relevance to the official one.
    """

    def __init__(self, stats: GlobalStatistics, shrinkage: float):
        if not (shrinkage > 0 and np.isfinite(shrinkage)):
            raise ValueError(f"relevance shrinkage must be a finite number > 0, got {shrinkage}")
        rows = stats.fs3.double()                      # [R, D]
        second = rows.T @ rows / rows.shape[0]         # [D, D]
        evals, evecs = torch.linalg.eigh(second)
        evals = evals.clamp_min(0)
        scale = (evals + shrinkage * evals.mean()).rsqrt()
        transform = (evecs * scale) @ evecs.T          # [D, D] symmetric
        white = rows @ transform
        self.shrinkage = float(shrinkage)
        self.transform = transform.float()
        self.rows = (white / white.norm(dim=1, keepdim=True).clamp_min(1e-12)).float()  # [R, D] unit
        self.num_channels = stats.conv_index.numel()

    def __call__(self, dt: torch.Tensor) -> torch.Tensor:
        """dt: [D] unit text direction → [C] relevance, the cosine of W·row and W·dt (0 beyond the matrix's rows)."""
        v = self.transform @ dt.to(self.transform)
        r = torch.zeros(self.num_channels)
        r[: self.rows.shape[0]] = self.rows @ (v / v.norm().clamp_min(1e-12))
        return r


def _atomic(path: Path, write) -> None:
    """Writes through a temporary name so an interrupted write never leaves a truncated file behind."""
    tmp = path.with_name(path.name + ".tmp" + path.suffix)
    write(tmp)
    tmp.replace(path)


def _allowed_fs3_rows(generator: Generator) -> set[int]:
    """Row counts that cover a prefix of the conv layers (6048 all, 5376 up to 128 px for FFHQ-1024)."""
    total, allowed = 0, set()
    for layer in generator.conv_layers:
        total += layer.dim
        allowed.add(total)
    return allowed


def _check_fs3(fs3: np.ndarray, generator: Generator, source: str) -> torch.Tensor:
    if fs3.ndim != 2:
        raise StatisticsError(f"{source}: expected a 2-D relevance matrix, found shape {fs3.shape}")
    allowed = _allowed_fs3_rows(generator)
    if fs3.shape[0] not in allowed:
        raise StatisticsError(
            f"{source}: {fs3.shape[0]} rows do not match this generator's conv channels "
            f"(expected one of {sorted(allowed)[-3:]}, all {max(allowed)} for every conv layer)")
    if not np.isfinite(fs3).all():
        raise StatisticsError(f"{source}: contains NaN or inf")
    return torch.from_numpy(np.ascontiguousarray(fs3, dtype=np.float32))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Builds numpy arrays, dtypes and plain containers; refuses every other global."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: only numpy arrays and lists are allowed")


def load_official_s_mean_std(path: Path, generator: Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The official `S_mean_std` pickle ([means (26 arrays), stds (26 arrays)]) → flat mean, std [s_dim]."""
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as exc:
        raise StatisticsError(f"{path}: not an S_mean_std file ({exc})") from None
    dims = [layer.dim for layer in generator.style_layers]
    if not (isinstance(obj, (list, tuple)) and len(obj) == 2 and all(isinstance(x, (list, tuple)) for x in obj)):
        raise StatisticsError(f"{path}: expected [means, stds], two lists of {len(dims)} arrays")
    flat = []
    for part, name in zip(obj, ("means", "stds")):
        got = [int(np.asarray(a).size) for a in part]
        if got != dims:
            raise StatisticsError(f"{path}: {name} have sizes {got}, expected {dims} for this generator")
        flat.append(torch.from_numpy(np.concatenate([np.asarray(a, dtype=np.float32).reshape(-1) for a in part])))
    return flat[0], flat[1]


def load_statistics(directory: Path, generator: Generator, generator_sha256: str | None = None,
                    clip_sha256: str | None = None) -> GlobalStatistics:
    """Loads precomputed/<model>/ (our format with manifest, or the official fs3.npy + S_mean_std).

    Raises:
        StatisticsError: files missing (the message says how to compute them), malformed, or computed for
            other model files (hash mismatch).
    """
    directory = Path(directory)
    conv_index = conv_channel_index(generator)
    manifest_path = directory / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        for role, have in (("generator", generator_sha256), ("clip", clip_sha256)):
            want = manifest.get(f"{role}_sha256")
            if have and want and have != want:
                raise StatisticsError(
                    f"{directory} was computed for another {role} file (sha256 {want[:12]}…, the loaded one is "
                    f"{have[:12]}…). Recompute with: python -m styleclip precompute --model {directory.name}")
        try:
            with np.load(directory / "stats.npz") as npz:
                mean, std = torch.from_numpy(npz["mean"]).float(), torch.from_numpy(npz["std"]).float()
            fs3 = np.load(directory / "fs3.npy", allow_pickle=False)
        except (OSError, KeyError, ValueError) as exc:
            raise StatisticsError(f"{directory}: incomplete or corrupt statistics ({exc}). Recompute with: "
                                  f"python -m styleclip precompute --model {directory.name}") from None
    elif (directory / "fs3.npy").is_file() and (directory / "S_mean_std").is_file():
        mean, std = load_official_s_mean_std(directory / "S_mean_std", generator)
        fs3 = np.load(directory / "fs3.npy", allow_pickle=False)
        manifest = {"source": "official StyleCLIP files (fs3.npy, S_mean_std)"}
    else:
        raise StatisticsError(
            f"No precomputed statistics in {directory}. Compute them with: "
            f"python -m styleclip precompute --model {directory.name} (or place the official fs3.npy and "
            f"S_mean_std there).")
    if mean.numel() != generator.s_dim or std.numel() != generator.s_dim:
        raise StatisticsError(f"{directory}: statistics have {mean.numel()} channels, generator has {generator.s_dim}")
    return GlobalStatistics(mean, std, _check_fs3(fs3, generator, str(directory / "fs3.npy")), conv_index, manifest)
