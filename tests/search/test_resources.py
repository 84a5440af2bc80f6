"""Trial resources (search.resources): GPU fractions sized from peak memory, CPU-only requests."""

from __future__ import annotations

from search.resources import gpu_fraction, peak_bytes, resource_request


def test_gpu_fraction_is_a_quarter_multiple_sized_from_peak_memory() -> None:
    card = 80 * 2**30  # bytes, an H100
    small = gpu_fraction("simple_cnn_10m", 32, 256, card)
    big = gpu_fraction("densenet121", 256, 256, card)
    # Small models share a card four ways; a big batch gets more; never above one card.
    assert small == 0.25
    assert 0.25 < big <= 1.0 and (big * 4).is_integer()
    assert gpu_fraction("resnet50", 4096, 256, card) == 1.0
    # Memory grows with batch and image area.
    assert peak_bytes("resnet50", 64, 256) > peak_bytes("resnet50", 32, 256)
    assert peak_bytes("resnet50", 32, 256) > peak_bytes("resnet50", 32, 128)


def test_trial_resources_ask_no_gpu_on_cpu_machines() -> None:
    config = {"model": "resnet50", "batch_size": 32, "image_size": 256}
    assert resource_request(config, 1.0, 0.0, None) == {"CPU": 1.0}
    assert resource_request(config, 2.0, None, None) == {"CPU": 2.0}
    assert resource_request(config, 1.0, None, 80 * 2**30)["GPU"] == 0.25
    assert resource_request(config, 1.0, 0.5, 80 * 2**30)["GPU"] == 0.5  # an explicit flag wins
