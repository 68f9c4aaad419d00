"""Loading and saving generators in the rosinality checkpoint format (`{"g_ema", "latent_avg"[, "config"]}`)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

from .generator import Generator, GeneratorConfig
from .registry import CheckpointError, load_checkpoint

__all__ = ["infer_config", "load_generator", "save_generator", "GeneratorCheckpointError"]

_MAX_LISTED = 6


class GeneratorCheckpointError(CheckpointError):
    """The file is a checkpoint, but not of a generator this code can build."""


def _first_keys(keys, n: int = _MAX_LISTED) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def infer_config(state_dict: dict[str, torch.Tensor], lr_mlp: float = 0.01) -> GeneratorConfig:
    """Reads size, style dim, mapping depth and the channel table off a g_ema state dict's shapes."""
    needed = ("input.input", "conv1.conv.modulation.weight")
    missing = [k for k in needed if k not in state_dict]
    if missing:
        raise GeneratorCheckpointError(
            f"this is not a StyleGAN2 generator state dict: {', '.join(missing)} missing "
            f"(found keys such as {_first_keys(state_dict)})")
    style_dim = int(state_dict["conv1.conv.modulation.weight"].shape[1])
    n_mlp = len({m.group(1) for k in state_dict if (m := re.fullmatch(r"style\.(\d+)\.weight", k))})
    n_blocks = len({m.group(1) for k in state_dict if (m := re.fullmatch(r"to_rgbs\.(\d+)\.conv\.weight", k))})
    table = [int(state_dict["input.input"].shape[1])]
    for b in range(n_blocks):
        key = f"convs.{2 * b}.conv.weight"
        if key not in state_dict:
            raise GeneratorCheckpointError(f"generator state dict has to_rgbs.{b} but no {key}")
        table.append(int(state_dict[key].shape[1]))
    return GeneratorConfig(size=2 ** (n_blocks + 2), style_dim=style_dim, n_mlp=n_mlp, lr_mlp=lr_mlp,
                           channel_table=tuple(table))


def _check_state_dict(g: Generator, state_dict: dict[str, torch.Tensor], source: str) -> None:
    expected = g.state_dict()
    missing = set(expected) - set(state_dict)
    unexpected = set(state_dict) - set(expected)
    problems = []
    if missing:
        problems.append(f"{len(missing)} keys missing ({_first_keys(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_first_keys(unexpected)})")
    wrong = [f"{k}: expected {tuple(expected[k].shape)}, found {tuple(state_dict[k].shape)}"
             for k in sorted(set(expected) & set(state_dict)) if expected[k].shape != state_dict[k].shape]
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches ({'; '.join(wrong[:_MAX_LISTED])})")
    if problems:
        cfg = g.config
        raise GeneratorCheckpointError(
            f"{source}: does not match a StyleGAN2 generator of size {cfg.size}, style dim {cfg.style_dim}, "
            f"{cfg.n_mlp} mapping layers: " + "; ".join(problems))


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> Generator:
    """Loads `{"g_ema": state_dict, "latent_avg": [D], "config"?: dict}` strictly, in eval mode, float32.

    The architecture is inferred from the weights (our own files also carry a `config`), so the official
    `stylegan2-ffhq-config-f.pt`, its rosinality training checkpoints and the embedded model all load here.
    """
    source = str(path)
    ckpt = load_checkpoint(path, required_keys=("g_ema",))
    state_dict = ckpt["g_ema"]
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise GeneratorCheckpointError(f"{source}: 'g_ema' is not a state dict of tensors")
    if "config" in ckpt:
        try:
            config = GeneratorConfig.from_dict(ckpt["config"])
        except (TypeError, ValueError) as exc:
            raise GeneratorCheckpointError(f"{source}: invalid generator config: {exc}") from None
    else:
        config = infer_config(state_dict)
    g = Generator.from_config(config)
    _check_state_dict(g, state_dict, source)
    g.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True)
    latent_avg = ckpt.get("latent_avg")
    if latent_avg is None:
        warnings.warn(f"{source} has no latent_avg; using the mean of 4096 mapped z instead", stacklevel=2)
        latent_avg = g.mean_latent(4096)
    latent_avg = torch.as_tensor(latent_avg).float().reshape(-1)
    if latent_avg.numel() != config.style_dim:
        raise GeneratorCheckpointError(
            f"{source}: latent_avg has {latent_avg.numel()} values, expected {config.style_dim}")
    g.latent_avg.copy_(latent_avg)
    return g.to(device).eval().requires_grad_(False)


def save_generator(g: Generator, path: str | Path, half: bool = False, extra: dict | None = None) -> None:
    """Writes a rosinality-compatible checkpoint plus our `config` (fp16 weights with `half`)."""
    state_dict = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
                  for k, v in g.state_dict().items()}
    ckpt = {"g_ema": state_dict, "latent_avg": g.latent_avg.detach().cpu().clone(), "config": g.config.to_dict()}
    ckpt.update(extra or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)  # never leave a half-written checkpoint under the final name
