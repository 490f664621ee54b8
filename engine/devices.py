"""Which torch device a job runs on: the user's word (``cpu``, ``cuda``, ``cuda:1``, ``auto``), checked once."""

from __future__ import annotations

import torch

from engine.errors import QtuiError


class DeviceError(QtuiError):
    """A device was named that this machine or this torch build does not have."""


def available() -> list[str]:
    """Device names a user can pick here (``cuda`` only with a GPU torch can use)."""
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def default() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve(name: str | torch.device | None, purpose: str = "this job") -> torch.device:
    """``None`` / ``auto``: CUDA when present, else the CPU. A CUDA device that is not there is a
    :class:`DeviceError` saying so, never a silent fall-back to the CPU."""
    if isinstance(name, torch.device):
        name = str(name)
    text = (name or "auto").strip().lower()
    if text == "auto":
        return default()
    try:
        device = torch.device(text)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r} for {purpose} (use cpu, cuda, cuda:N or auto)") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise DeviceError(f"device {name!r} is not supported for {purpose} (use cpu, cuda, cuda:N or auto)")
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        raise DeviceError(
            f"{purpose} on {name!r} was asked for, but torch {torch.__version__} ({build}) sees no CUDA GPU;"
            " use --device cpu"
        )
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"{name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
