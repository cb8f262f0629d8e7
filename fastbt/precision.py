"""How the model's arithmetic runs on a device: autocast dtype and memory format (`runtime.*`).

Training (`fastbt.train.step`) and frozen-feature evaluation use the same answers, so features are
extracted the way the backbone was trained.
"""

from __future__ import annotations

import torch


def use_channels_last(setting: bool | None, device: torch.device) -> bool:
    """Channels-last by default on CUDA (tensor-core convolutions); on this kind of CPU the
    backward of channels-last convolutions measured ~7x slower than NCHW, so off there."""
    return device.type == "cuda" if setting is None else setting


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA by default; fp32 on CPU, whose bf16 is ~10x slower than fp32 here."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to `dtype` on the device; None: a disabled autocast (plain fp32)."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
