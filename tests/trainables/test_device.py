"""The one numerics policy: bf16 autocast and channels_last, decided per (amp, device)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.device import device_policy, resolve_device


@pytest.mark.parametrize(
    ("amp", "device", "bf16"),
    [
        ("auto", "cpu", False),  # auto: fp32 on the CPU
        ("auto", "cuda", True),  # ... and bf16 on CUDA
        ("bf16", "cpu", True),
        ("bf16", "cuda", True),
        ("fp32", "cpu", False),
        ("fp32", "cuda", False),
    ],
)
def test_policy_pairs_bf16_with_channels_last(amp, device, bf16):
    policy = device_policy(amp, device)
    assert policy.device == torch.device(device)
    assert policy.autocast_dtype == (torch.bfloat16 if bf16 else None)
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    assert policy.memory_format == fmt
    assert policy.label == ("bf16 + channels_last" if bf16 else "fp32")


def test_unknown_amp_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"unknown amp 'fp16'; expected one of \['auto', 'bf16'"):
        device_policy("fp16", "cpu")


def test_bf16_policy_autocasts_and_lays_out_batches_and_models():
    policy = device_policy("bf16", "cpu")
    conv = policy.model(nn.Conv2d(1, 4, 3))
    x = policy.batch(torch.rand(2, 1, 8, 8))
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    with policy.autocast():
        assert conv(x).dtype == torch.bfloat16  # autocast is on
    fp32 = device_policy("fp32", "cpu")
    with fp32.autocast():
        assert nn.Conv2d(1, 4, 3)(torch.rand(2, 1, 8, 8)).dtype == torch.float32


def test_resolve_device_defaults_to_what_the_machine_has():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device().type == expected
    assert resolve_device("cpu") == torch.device("cpu")
