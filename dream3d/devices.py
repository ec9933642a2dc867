"""Which device a run uses: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``, checked against this machine."""

from __future__ import annotations

import torch

from .configtools import ConfigError


def resolve_device(device: str, key: str = "guidance.prior.device") -> torch.device:
    """``auto`` (CUDA when there is one), ``cpu``, ``cuda`` or ``cuda:N``; a clear error for a device this
    machine lacks (torch's own is an AssertionError from deep inside the first .to())."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{key}={device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"{key}={device} but torch sees no CUDA device here (torch.cuda.is_available() is False); "
            f"use {key}=auto or cpu"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"{key}={device} but this machine has {torch.cuda.device_count()} CUDA device(s), cuda:0 ...")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"{key}={device!r}: only cpu and cuda devices are supported")
    return dev
