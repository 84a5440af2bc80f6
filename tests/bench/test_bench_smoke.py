"""Every benchmark script runs end to end at --size tiny and prints its ratio lines.

The figures at this size mean nothing; what is protected is that each script still runs against
the current trainables/ and search/ code and reports what bench/RESULTS.md is built from.
"""

from __future__ import annotations

import csv
import json
import math
import re
import tempfile

import pytest
import ray

from bench import (
    asha_vs_random,
    compile_batch,
    decode_once,
    dicom_listing,
    overhead,
    pipeline,
    sweep_utilization,
)

RATIO_LINE = re.compile(r"^RATIO (\S+) = (\S+)", re.MULTILINE)

pytestmark = pytest.mark.slow


def ratios(text: str) -> dict[str, float]:
    return {name: float(value) for name, value in RATIO_LINE.findall(text)}


@pytest.fixture(scope="module")
def ray_once():
    """One local Ray for the three sweep benchmarks (they reuse a running Ray)."""
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    ray.init(
        num_cpus=2,
        object_store_memory=100 * 2**20,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=temp_dir,
    )
    yield
    ray.shutdown()


def test_pipeline_compares_fast_path_with_floor_and_seed_loader(capsys, tmp_path):
    out = tmp_path / "pipeline.json"
    assert pipeline.main(["--size", "tiny", "--workers", "1", "--json", str(out)]) == 0
    found = ratios(capsys.readouterr().out)
    # The three ratios RESULTS.md reports for each model, all measured (positive, finite).
    for name in ("fast_over_floor", "seed_over_floor", "fast_over_seed"):
        value = found[f"pipeline.simple_cnn_10m.{name}"]
        assert 0 < value < math.inf
    # The JSON record carries the machine and the command for RESULTS.md.
    record = json.loads(out.read_text())
    assert record["machine"]["device"] == "cpu" and "--size tiny" in record["command"]


def test_decode_once_counts_one_pil_open_per_file_over_concurrent_loads(capsys):
    assert decode_once.main(["--size", "tiny"]) == 0
    found = ratios(capsys.readouterr().out)
    # Goal 2 itself: two loads racing on a fresh cache open each file exactly once.
    assert found["decode_once.image_opens_per_file"] == 1.0
    assert found["decode_once.decoded_per_file"] == 1.0


def test_dicom_listing_compares_the_index_and_decoding_with_header_reads(capsys):
    assert dicom_listing.main(["--size", "tiny"]) == 0
    found = ratios(capsys.readouterr().out)
    assert 0 < found["dicom_listing.warm_over_cold_listing"] < math.inf
    assert 0 < found["dicom_listing.headers_over_decoding"] < math.inf


def test_compile_batch_reports_time_to_accuracy_of_the_larger_batch(capsys):
    # torch.compile itself takes minutes on this CPU; the compile comparison runs at --size small.
    assert compile_batch.main(["--size", "tiny", "--skip", "compile"]) == 0
    found = ratios(capsys.readouterr().out)
    assert found["compile_batch.batch.throughput_ratio"] > 0
    assert "compile_batch.batch.time_to_accuracy_speedup" in found


def test_sweep_utilization_reports_the_useful_training_fraction(capsys, ray_once):
    # One placement only (each sweep starts its own trial processes, the slow part here).
    assert sweep_utilization.main(["--size", "tiny", "--arms", "packed"]) == 0
    found = ratios(capsys.readouterr().out)
    # A share of the sweep's wall time spent at the compute floor, which is measured as the
    # whole device's best rate: positive and at most the whole device (1.0), give or take the
    # timing noise of one-step measurements.
    assert 0 < found["sweep_utilization.packed.useful_fraction"] < 1.5
    assert "sweep_utilization.one_per_device.useful_fraction" not in found


def test_overhead_measures_latency_checkpoint_share_and_wandb(capsys, ray_once):
    assert overhead.main(["--size", "tiny"]) == 0
    found = ratios(capsys.readouterr().out)
    assert found["overhead.first_batch_latency_s"] > 0
    # One line per model and checkpoint setting, with or without a checkpoint each epoch.
    for size in ("small", "large"):
        assert f"overhead.{size}.checkpoint_and_report_share" in found
        assert f"overhead.{size}.report_only_share" in found
    assert "overhead.wandb_seconds_per_trial" in found


def test_asha_vs_random_writes_both_curves(capsys, ray_once, tmp_path):
    assert asha_vs_random.main(["--size", "tiny", "--out", str(tmp_path)]) == 0
    found = ratios(capsys.readouterr().out)
    assert "asha_vs_random.epochs_to_match_over_random_epochs" in found
    # Both arms' curves are in the CSV, best-so-far never gets worse (metric is maximised).
    with open(tmp_path / "asha_vs_random.csv") as fh:
        rows = list(csv.DictReader(fh))
    for arm in ("ASHA + TPE", "random, full budget"):
        best = [float(r["best_so_far"]) for r in rows if r["arm"] == arm]
        assert best and best == sorted(best)
    assert (tmp_path / "asha_vs_random.png").stat().st_size > 0
