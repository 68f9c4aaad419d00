"""Which torch device the models run on: a GPU when one is visible, else the CPU; `STYLECLIP_DEVICE` or a
`--device` option overrides.

Every engine runs where its generator's weights are; the app, the API and the CLI choose the device once, when a
model is loaded (`Studio(device=...)`). Tensors that leave the library for the app's state or for files are
always on the CPU.
"""

from __future__ import annotations

import os

import torch

__all__ = ["DEVICE_ENV", "DeviceError", "module_device", "resolve_device"]

DEVICE_ENV = "STYLECLIP_DEVICE"
_AUTO = "auto"


class DeviceError(ValueError):
    """An unknown or unavailable device was asked for; the message says which ones exist here."""


def _available() -> list[str]:
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return names


def resolve_device(spec: str | torch.device | None = None) -> torch.device:
    """A device name → a usable `torch.device`.

    Args:
        spec: "auto" (CUDA when `torch.cuda.is_available()`, else the CPU), "cpu", "cuda" or "cuda:N", or a
            `torch.device`; None or "" → the `STYLECLIP_DEVICE` environment variable, else "auto".

    Raises:
        DeviceError: a name torch does not know, or a CUDA device this machine does not have.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    name = (spec or os.environ.get(DEVICE_ENV) or _AUTO).strip().lower()
    if name == _AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"Unknown device {name!r}; use auto, {', '.join(_available())}.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"Device {name!r} was asked for, but torch sees no CUDA GPU here "
                              f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); use cpu or auto.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"Device {name!r} does not exist: this machine has {torch.cuda.device_count()} "
                              f"CUDA device(s); use one of {', '.join(_available())}.")
    elif device.type != "cpu":
        raise DeviceError(f"Device {name!r} is not supported; use auto, {', '.join(_available())}.")
    return device


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); the CPU for a module with neither."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")
