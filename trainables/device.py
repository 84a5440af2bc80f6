"""How a model runs on a device: which device, the numerics policy and the evaluation batch.

`device_policy(amp, device)` is the one place that decides bf16 autocast and channels_last;
training, evaluation, prediction and the benchmarks all ask it, so they measure and serve the
numerics a trial was validated with.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from trainables.vocab import AMP_MODES

EVAL_BATCH = 128  # images per forward pass in evaluation, TTA and prediction (no gradients)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`device`, or CUDA when it is available and the CPU otherwise."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass(frozen=True)
class DevicePolicy:
    """Numerics of one (amp setting, device): autocast dtype and memory format."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    """torch.bfloat16 under autocast, None for plain fp32."""
    memory_format: torch.memory_format
    """torch.channels_last with bf16 (the fast layout for tensor-core convolutions), else
    torch.contiguous_format."""

    @property
    def label(self) -> str:
        return "bf16 + channels_last" if self.autocast_dtype is not None else "fp32"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def model(self, model: nn.Module) -> nn.Module:
        """`model` in this policy's memory format (in place, as `nn.Module.to` is)."""
        return model.to(memory_format=self.memory_format)

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """An input batch (B, C, H, W) in this policy's memory format."""
        return x.contiguous(memory_format=self.memory_format)


def device_policy(amp: str, device: str | torch.device) -> DevicePolicy:
    """'bf16' is bf16 autocast + channels_last anywhere, 'fp32' is neither, and 'auto' is bf16 on
    CUDA and fp32 on the CPU (`TrialConfig.amp`)."""
    if amp not in AMP_MODES:
        raise ValueError(f"unknown amp {amp!r}; expected one of {sorted(AMP_MODES)}")
    device = torch.device(device)
    bf16 = amp == "bf16" or (amp == "auto" and device.type == "cuda")
    if bf16:
        return DevicePolicy(device, torch.bfloat16, torch.channels_last)
    return DevicePolicy(device, None, torch.contiguous_format)
