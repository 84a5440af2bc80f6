"""The pre-flight's data memory: decoded size, per-trial RAM and GPU, and the refusal of a sweep
whose data cannot fit the node (one line naming the numbers and the flags)."""

from __future__ import annotations

from dataclasses import replace

from search.data_memory import (
    LOAD_BYTES_PER_IMAGE,
    PREFETCH_BATCHES,
    TRIAL_BYTES_PER_IMAGE,
    data_memory,
)
from trainables.config import TrialConfig

GIB = 2**30
CFG = TrialConfig(model="resnet50", batch_size=64, image_size=256)
NIH = {"train": 89_696, "val": 22_424}  # 112,120 images


def plan(configs=(CFG,), images=NIH, **kw):
    args = dict(max_concurrent=8, num_samples=20, cpus_per_trial=1, gpus=1, card_bytes=80 * GIB)
    return data_memory(list(configs), images, **{**args, "ram_bytes": 256 * GIB, **kw})


def test_decoded_size_and_per_trial_bytes_follow_the_formula():
    m = plan()
    assert m.decoded_bytes == 112_120 * 256 * 256  # 7.35 GB, once per node
    per_image = TRIAL_BYTES_PER_IMAGE + LOAD_BYTES_PER_IMAGE  # labels + the start's listing
    assert m.trial_ram_bytes == PREFETCH_BATCHES * 64 * 256 * 256 + 112_120 * per_image
    assert m.on_card and m.trial_gpu_bytes == 89_696 * 256 * 256  # the train split on the card
    assert m.need_gpu() == 8 * m.trial_gpu_bytes
    line = m.format()
    assert "112,120 images at 256 px decode to 7.35 GB, mapped once per node" in line
    assert "8 concurrent" in line and m.refusal() == ""
    # The largest image and batch the space can choose decide.
    bigger = plan(configs=(CFG, replace(CFG, image_size=512, batch_size=16)))
    assert bigger.decoded_bytes == 4 * m.decoded_bytes and bigger.batch_size == 64


def test_a_sweep_that_cannot_fit_the_node_is_refused_naming_numbers_and_flags():
    # 8 trials x 5.9 GB of NIH at 256 px on the card = 47 GB > one 40 GB card.
    gpu = plan(card_bytes=40 * GIB).refusal()
    assert "does not fit this node's GPUs: 8 trials x" in gpu
    assert "--stream-data" in gpu and "--max-concurrent 7" in gpu and "image_size" in gpu
    # Streamed, the same sweep needs two batches a trial on the card, and fits.
    streamed = plan(configs=(replace(CFG, data_on_device="stream"),), card_bytes=40 * GIB)
    assert not streamed.on_card and streamed.trial_gpu_bytes == 2 * 64 * 256 * 256
    assert streamed.refusal() == ""
    # RAM: the decoded copy alone exceeds a 6 GiB node.
    ram = plan(ram_bytes=6 * GIB, gpus=0).refusal()
    assert "does not fit this node's memory: 7.35 GB decoded (112,120 images at 256 px)" in ram
    assert "image_size" in ram
    # With room for the copy and some trials, it names how many fit:
    # (8.59 - 7.35) GB / (8.4 MB of batches + 112,120 x 2,176 B = 0.252 GB) = 4.9.
    assert (
        "--max-concurrent (at most 4 fit)" in plan(ram_bytes=8 * GIB, max_concurrent=16).refusal()
    )
    # Without --max-concurrent the CPUs (and GPU eighths) bound the concurrency.
    assert plan(max_concurrent=None, gpus=0).concurrent >= 1
