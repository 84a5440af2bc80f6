"""Measured GPU memory: fraction and cap arithmetic, cache keys, lookups, the space's shapes,
the OOM message and retry, the measured steps on the CPU, and (on a card only, marked `gpu`) the
measurement and the enforced cap."""

from __future__ import annotations

import gc
import json
import math
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from search import gpu_memory as gm
from search import resources
from search.gpu_memory.probe import _train_and_save
from search.resources import gpu_fraction, resource_request, sized_share
from trainables.config import TrialConfig

REPO = Path(__file__).resolve().parents[2]
GIB = 2**30
CARD = 80 * GIB  # bytes, an H100
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CXR_TUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / gm.CACHE_FILE


def entry(model="resnet50", reserved=3 * GIB, context=GIB // 2, card="H100", card_bytes=CARD, **k):
    cfg = TrialConfig(model=model, **k)
    return gm.Measurement(
        gm.key_for(cfg, card, card_bytes), reserved, reserved, context, "measured"
    )


def test_share_and_cap_arithmetic() -> None:
    # 3 GiB reserved: margin max(0.3 GiB, 0.25 GiB) = 0.3 GiB; + 0.5 GiB context = 3.8 GiB.
    m = entry(reserved=3 * GIB, context=GIB // 2)
    assert gm.need_bytes(m) == int(3 * GIB + 0.3 * GIB + 0.5 * GIB)
    assert gm.share_for(gm.need_bytes(m), CARD) == 0.125  # 3.8 / 80 = 0.0475 -> one eighth
    # cap = (0.125 * 80 - 0.5) / 80 = 9.5 / 80
    assert gm.allocator_cap(0.125, GIB // 2, CARD) == pytest.approx(9.5 / 80)
    # 30 GiB: 30 + 3 + 0.5 = 33.5 GiB = 0.419 of the card -> 0.5
    assert gm.share_for(gm.need_bytes(entry(reserved=30 * GIB)), CARD) == 0.5
    # A small peak still gets the 256 MiB margin; an exact multiple is not rounded up.
    assert gm.margin_bytes(100 * 2**20) == 256 * 2**20
    assert gm.share_for(10 * GIB, CARD) == 0.125 and gm.share_for(10 * GIB + 1, CARD) == 0.25
    assert gm.share_for(0, CARD) == gm.SHARE_STEP
    with pytest.raises(ValueError, match="share must be in"):
        gm.allocator_cap(0.0, 0, CARD)
    with pytest.raises(ValueError, match="leaves nothing"):
        gm.allocator_cap(0.125, 11 * GIB, CARD)
    with pytest.raises(ValueError, match="card_bytes"):
        gm.share_for(GIB, 0)


def test_cache_keys_hold_every_field_that_changes_the_peak() -> None:
    cfg = TrialConfig(model="resnet50", frozen_depth=5, unfrozen_blocks=1)
    base = gm.key_for(cfg, "H100", CARD)
    assert gm.key_for(cfg.to_dict(), "H100", CARD) == base  # Ray's dict and the config agree
    assert gm.key_for(replace(cfg, amp="bf16"), "H100", CARD) == base  # auto is bf16 on CUDA
    variants = [
        gm.key_for(replace(cfg, amp="fp32"), "H100", CARD),
        gm.key_for(replace(cfg, batch_size=64), "H100", CARD),
        gm.key_for(replace(cfg, image_size=128), "H100", CARD),
        gm.key_for(replace(cfg, frozen_depth=4), "H100", CARD),
        gm.key_for(replace(cfg, unfrozen_blocks=0), "H100", CARD),
        gm.key_for(replace(cfg, compile=True), "H100", CARD),
        gm.key_for(replace(cfg, model="resnet18"), "H100", CARD),
        gm.key_for(cfg, "H200", CARD),
        gm.key_for(cfg, "H100", CARD + 1),
    ]
    ids = {k.id() for k in variants} | {base.id()}
    assert len(ids) == len(variants) + 1
    # Things that do not change memory are not in the key.
    assert gm.key_for(replace(cfg, lr=1e-2, seed=3, balance="original"), "H100", CARD) == base


def test_table_round_trip_merges_writers_and_refuses_a_corrupt_file(cache: Path) -> None:
    a, b = gm.MemoryTable.load(), gm.MemoryTable.load()  # two processes, both empty
    a.record(entry(model="resnet50"))
    b.record(entry(model="resnet18"))  # b never saw a's entry; the file keeps both
    again = gm.MemoryTable.load()
    assert {m.key.model for m in again.entries.values()} == {"resnet50", "resnet18"}
    body = json.loads(cache.read_text())
    assert body["version"] == gm.FORMAT_VERSION
    stored = next(iter(body["entries"].values()))
    assert stored["need_bytes"] == gm.need_bytes(gm.Measurement.from_dict(stored))
    cache.write_text("{not json")
    with pytest.raises(ValueError, match=str(cache)):
        gm.MemoryTable.load()


def test_lookup_exact_then_upper_bound_then_estimate() -> None:
    full = entry(model="resnet50", reserved=8 * GIB, batch_size=64)
    table = gm.MemoryTable({full.key.id(): full})
    seed = TrialConfig(model="resnet50", frozen_depth=5, unfrozen_blocks=1, batch_size=32)
    m, how = table.lookup(gm.key_for(seed, "H100", CARD))
    assert (m, how) == (full, "upper bound")  # nothing frozen at a larger batch bounds it
    assert table.lookup(gm.key_for(replace(seed, batch_size=128), "H100", CARD)) == (
        None,
        "estimate",
    )  # a larger batch than measured is not bounded
    assert table.lookup(gm.key_for(seed, None, CARD))[1] == "upper bound"  # any card name
    assert table.lookup(gm.key_for(seed, "H100", 40 * GIB)) == (None, "estimate")
    exact = gm.key_for(TrialConfig(model="resnet50", batch_size=64), None, CARD)
    assert table.lookup(exact) == (full, "measured")


def test_resource_request_packs_from_the_measured_table(cache: Path) -> None:
    config = {"model": "resnet50", "batch_size": 32, "image_size": 256}
    # Nothing measured: the estimate, as before (a quarter of an 80 GiB card).
    assert sized_share(config, CARD) == (0.25, "estimate")
    assert resource_request(config, 1.0, None, CARD)["GPU"] == gpu_fraction(
        "resnet50", 32, 256, CARD
    )
    gm.MemoryTable.load().record(entry(model="resnet50", reserved=3 * GIB))
    assert sized_share(config, CARD) == (0.125, "measured")
    assert resource_request(config, 1.0, None, CARD) == {"CPU": 1.0, "GPU": 0.125}
    assert resource_request(config, 1.0, 0.5, CARD) == {"CPU": 1.0, "GPU": 0.5}  # flag wins
    big = entry(model="resnet50", reserved=100 * GIB)
    assert sized_share(config, CARD, gm.MemoryTable({big.key.id(): big}))[0] == 1.0


def test_oom_message_grows_the_need_and_the_retry_share() -> None:
    text = (
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 "
        "GiB of which 1.50 GiB is free."
    )
    assert gm.requested_bytes(text) == 2 * GIB
    assert gm.requested_bytes("Tried to allocate 512.00 MiB") == 512 * 2**20
    assert gm.requested_bytes("something else") == 0
    old = entry(reserved=3 * GIB)
    grown = gm.grown_measurement(old.key, old, observed=8 * GIB, context=old.context_bytes)
    assert grown.reserved_bytes == int(8 * GIB * gm.OOM_GROWTH) and grown.source == "oom"
    message = gm.oom_message(old.key, 0.125, 0.118, old, grown)
    assert message.startswith("out of GPU memory at share 0.125 (measured need 3.8 GiB")
    need = 10 * GIB + 1 * GIB + GIB // 2  # 10 GiB grown + 10% margin + context
    assert f"[{gm.NEED_TAG}={need}]" in message
    expected = math.ceil(need / CARD * 8) / 8  # 11.5 / 80 -> 0.25
    assert gm.retry_share("Traceback...\n" + message, 0.125, CARD) == expected == 0.25
    assert gm.retry_share("ValueError: lr must be in (0, 10]", 0.125, CARD) is None
    huge = gm.grown_measurement(old.key, old, observed=90 * GIB, context=old.context_bytes)
    refused = gm.oom_message(old.key, 0.5, 0.49, old, huge)
    assert "does not fit a whole card" in refused and "refused" in refused
    assert gm.retry_share(refused, 0.5, CARD) == 1.0


def test_retry_callback_asks_for_the_larger_share_before_the_retry(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    from ray.tune.execution.placement_groups import PlacementGroupFactory

    old = entry(reserved=3 * GIB)
    grown = gm.grown_measurement(old.key, old, 8 * GIB, old.context_bytes)
    error = tmp_path / "error.txt"
    error.write_text("Failure # 1\n" + gm.oom_message(old.key, 0.125, 0.118, old, grown))
    updates = []
    # Ray's Trial as the callback sees it in on_trial_recover (PENDING again; a real Trial needs
    # a running Ray session, so this one carries only what the callback reads and calls).
    trial = SimpleNamespace(
        trial_id="t1",
        error_file=str(error),
        placement_group_factory=PlacementGroupFactory([{"CPU": 1.0, "GPU": 0.125}]),
        update_resources=updates.append,
    )
    callback = gm.oom_retry_callback(1.0, CARD)
    callback.on_trial_recover(iteration=1, trials=[trial], trial=trial)
    assert updates == [{"CPU": 1.0, "GPU": 0.25}]
    error.write_text("Failure # 1\nValueError: not memory")
    callback.on_trial_recover(iteration=2, trials=[trial], trial=trial)
    assert len(updates) == 1  # other errors retry at the same share


def write_space(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "space.py"
    path.write_text(
        'METRIC = "val_acc"\nMODE = "max"\nMAX_EPOCHS = 2\n\ndef define(trial):\n' + body
    )
    return path


def test_space_configs_find_every_model_frozen_setting_and_the_largest_batch(tmp_path) -> None:
    from search.space import load_space

    path = write_space(
        tmp_path,
        '    model = trial.suggest_categorical("model", ["simple_cnn_10m", "resnet18"])\n'
        '    trial.suggest_categorical("batch_size", [16, 64, 32])\n'
        '    trial.suggest_float("lr", 1e-4, 1e-2, log=True)\n'
        '    trial.suggest_categorical("augment", ["none", "seed"])\n'
        '    if model == "resnet18":\n'
        '        depth = trial.suggest_int("frozen_depth", 0, 2)\n'
        "        if depth:\n"
        '            trial.suggest_int("unfrozen_blocks", 0, 1)\n'
        "    return {}\n",
    )
    space = load_space(path, defaults={"image_size": 128}, overrides={"data": "phantom:full"})
    configs = gm.space_configs(space.define)
    frozen = {(c.frozen_depth, c.unfrozen_blocks) for c in configs if c.model == "resnet18"}
    assert frozen == {(0, 0), (1, 0), (1, 1), (2, 0), (2, 1)}
    assert {c.model for c in configs} == {"simple_cnn_10m", "resnet18"}
    shapes = gm.worst_case_configs(configs)
    assert len(shapes) == 1 + 5
    assert all(c.batch_size == 64 and c.image_size == 128 for c in shapes)  # the largest
    assert all(c.augment == "seed" and c.data == "phantom:full" for c in shapes)
    # The least frozen shape of each model comes first: it bounds the others.
    assert [c.frozen_depth for c in shapes[:2]] == [0, 0]


def test_transfer_space_has_35_shapes() -> None:
    from search.space import load_space

    space = load_space(REPO / "spaces" / "transfer.py", defaults={"image_size": 256})
    shapes = gm.worst_case_configs(gm.space_configs(space.define))
    # 2 SimpleCNNs + 3 torchvision backbones x (unfrozen + 5 depths x 2 unfrozen_blocks)
    assert len(shapes) == 2 + 3 * 11


def test_hook_and_record_say_which_figures_were_used(cache: Path) -> None:
    from search.space import load_space

    space = load_space(REPO / "spaces" / "transfer.py", defaults={"image_size": 256})
    assert resources.measure_before_packing(space.define, 0)["source"] == "estimate"
    table = gm.MemoryTable.load()
    table.record(entry(model="resnet18", card="H100", image_size=256))
    shapes = [TrialConfig(model="resnet18"), TrialConfig(model="resnet50")]
    record = resources.memory_record(table, shapes, "H100", CARD)
    assert [r["source"] for r in record["shapes"]] == ["measured", "estimate"]
    assert record["source"] == "mixed" and record["card"] == "H100"
    assert record["shapes"][1]["share"] == gpu_fraction("resnet50", 32, 256, CARD)


def test_measure_cli_refuses_bad_input_in_one_line() -> None:
    run = [sys.executable, "-m", "search.gpu_memory", "--config"]
    bad = subprocess.run([*run, "{nope"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --config")
    assert "Traceback" not in bad.stderr
    unknown = subprocess.run([*run, '{"modle": 1}'], capture_output=True, text=True, cwd=REPO)
    assert unknown.returncode == 2 and "unknown TrialConfig keys" in unknown.stderr
    if not torch.cuda.is_available():
        none = subprocess.run([*run, "{}"], capture_output=True, text=True, cwd=REPO)
        assert none.returncode == 2 and "no CUDA device" in none.stderr


# --- on a card only (bench/gpu_check.sh runs these there) --------------------------------------


@gpu
@needs_cuda
def test_measurement_on_the_card_is_recorded_with_the_card(tmp_path: Path) -> None:
    # phantom:full at 256 px: bench/gpu_check.sh's setup part has decoded it already.
    cfg = TrialConfig(model="simple_cnn_10m", image_size=256, batch_size=16, data="phantom:full")
    table = gm.MemoryTable.load(tmp_path / gm.CACHE_FILE)
    m = gm.measure(cfg, table=table)
    props = torch.cuda.get_device_properties(0)
    assert m.source == "measured" and m.key.card == props.name
    assert m.key.card_bytes == props.total_memory
    assert 0 < m.allocated_bytes <= m.reserved_bytes < props.total_memory
    assert m.step_s > 0 and m.save_s > 0 and m.checkpoint_bytes > 0
    assert gm.MemoryTable.load(table.path).exact(m.key) == m


@gpu
@needs_cuda
def test_a_trial_over_its_share_fails_alone_with_a_clear_error(tmp_path: Path) -> None:
    from trainables.train import train

    cfg = TrialConfig(
        model="resnet18", image_size=256, batch_size=64, data="phantom:full", max_train_batches=2
    )
    cfg = replace(cfg, epochs=1)
    table = gm.MemoryTable.load(tmp_path / gm.CACHE_FILE)
    m = gm.measure(cfg, table=table)
    total = m.key.card_bytes
    share = (m.context_bytes + 0.3 * m.reserved_bytes) / total  # a third of what it needs
    with pytest.raises(gm.GpuMemoryError, match=r"out of GPU memory at share") as err:
        with gm.capped(cfg, share, table):
            train(cfg, lambda *_: None, device="cuda")
    message = str(err.value)
    del err  # its traceback holds the failed run's tensors
    gc.collect()
    grown = gm.MemoryTable.load(table.path).exact(m.key)
    assert grown.source == "oom" and grown.reserved_bytes >= m.reserved_bytes
    assert gm.retry_share(message, share, total) >= gm.share_for(gm.need_bytes(m), total)
    # Its measured share runs the same trial under the cap without running out.
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fair = gm.share_for(gm.need_bytes(m), total)
    with gm.capped(cfg, fair, table):
        train(cfg, lambda *_: None, device="cuda")
    cap = gm.allocator_cap(fair, m.context_bytes, total)
    assert torch.cuda.max_memory_reserved() <= cap * total


def test_the_measured_steps_and_save_run_the_product_training_path_on_cpu() -> None:
    from trainables.data import load_for_config
    from trainables.train import CHECKPOINT_FILE, build_training, make_generators, save_checkpoint

    cfg = TrialConfig(model="simple_cnn_10m", image_size=32, batch_size=8)
    data = load_for_config(cfg)
    timings = _train_and_save(cfg, data, torch.device("cpu"), steps=2)
    assert timings["step_s"] > 0 and timings["eval_s"] > 0 and timings["save_s"] > 0
    # The checkpoint it timed is the trial's own format: same size as one saved here after a
    # step (weights + both Adam moments).
    model, optimizer = build_training(cfg, len(data.classes), torch.device("cpu"))
    samplers = make_generators(cfg, torch.device("cpu"))
    loss = model(torch.randn(2, 1, 32, 32)).sum()
    loss.backward()
    optimizer.step()
    ref = save_checkpoint(Path(tempfile.mkdtemp()), cfg, data, model, optimizer, samplers, 1, [])
    assert ref.name == CHECKPOINT_FILE
    assert abs(timings["checkpoint_bytes"] - ref.stat().st_size) < 0.01 * ref.stat().st_size


def test_measurements_are_keyed_by_the_datasets_size_and_the_estimate_has_a_data_term(cache):
    cfg = TrialConfig(model="resnet50", batch_size=32, image_size=256)
    phantom = gm.key_for(cfg, "H100", CARD, train_images=304)
    nih = gm.key_for(cfg, "H100", CARD, train_images=89_000)
    assert phantom.data_bytes == 304 * 256 * 256 and nih.data_bytes == 89_000 * 256 * 256
    assert phantom != nih and phantom.id() != nih.id()
    table = gm.MemoryTable(
        {phantom.id(): gm.Measurement(phantom, 3 * GIB, 3 * GIB, GIB, "measured")}
    )
    # A figure measured on the phantom is never reused as exact, nor as a bound, for a larger set.
    assert table.lookup(nih) == (None, "estimate")
    assert table.lookup(gm.key_for(cfg, "H100", CARD, train_images=100))[1] == "upper bound"
    # The share adds the train split when it stays on the card: 89k x 64 KiB = 5.4 GiB.
    m = table.entries[phantom.id()]
    model = gm.need_bytes(m)
    assert gm.with_data(model, nih.data_bytes, CARD) == model + nih.data_bytes
    assert gm.with_data(model, nih.data_bytes, CARD, "stream") == model  # streamed: model only
    assert gm.with_data(model, 100 * GIB, CARD) == model  # larger than the card: streamed
    # The fallback estimate grows with the data too (a quarter-card step here).
    small = gpu_fraction("resnet50", 32, 256, CARD)
    assert gpu_fraction("resnet50", 32, 256, CARD, data_bytes=40 * GIB) > small
    assert gpu_fraction("resnet50", 32, 256, CARD, 40 * GIB, "stream") == small
    config = {"model": "resnet50", "batch_size": 32, "image_size": 256}
    assert sized_share(config, CARD, gm.MemoryTable(), train_images=600_000)[0] > small
    # The trial's data budget is its share minus the model's measured need.
    assert gm.data_budget(0.25, model, CARD) == int(0.25 * CARD) - model


def test_the_memory_shapes_come_from_the_preflights_walk() -> None:
    # One walker: every model and frozen setting the pre-flight checks is a measured shape, and
    # every categorical batch size is walked (the largest is measured).
    from search.preflight import explore
    from search.space import load_space

    space = load_space(REPO / "spaces" / "transfer.py", defaults={"image_size": 256})
    checked, _ = explore(space.define, "transfer")
    walked = gm.space_configs(space.define)
    frozen = {(c.model, c.frozen_depth, c.unfrozen_blocks) for c in walked}
    assert {(c.model, c.frozen_depth, c.unfrozen_blocks) for c in checked} <= frozen
    assert {c.batch_size for c in walked} == {c.batch_size for c in checked}
    assert not hasattr(gm, "_Probe")  # no second probe of its own
