"""bench/gpu_check.sh on a machine without a GPU: the --dry-run listing and its caps, bad
arguments, a real run of a part (the GPU-only tests, all skipped here), and the summary and
part-status logic on part files written here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import gpu_check as gc
from search import gpu_memory as gm
from trainables.config import TrialConfig

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.sh"
GIB = 2**30
PARTS = ["install", "setup", "pipeline", "memory", "gputests", "sweep_one", "sweep_packed"]


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "PY": sys.executable, **(env or {})}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full, cwd=REPO
    )


def test_dry_run_lists_every_part_with_its_cap_and_fits_eight_minutes(tmp_path: Path) -> None:
    done = run_script("--dry-run", env={"OUT": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    caps = dict(re.findall(r"^(\w+)\s+(\d+)  ", done.stdout, flags=re.M))
    assert list(caps) == [*PARTS, "total"]
    assert sum(int(caps[p]) for p in PARTS) == int(caps["total"]) <= 480
    assert all(int(caps[p]) > 0 for p in PARTS)
    assert f"output folder {tmp_path}" in done.stdout  # $OUT is the one output folder
    assert f"--json {tmp_path}/pipeline.json" in done.stdout
    assert "--size full --models simple_cnn,simple_cnn_10m,resnet50_seed" in done.stdout
    some = run_script("--dry-run", "--parts", "sweep_one,sweep_packed")
    assert re.search(r"^total\s+195 ", some.stdout, flags=re.M), some.stdout


def test_bad_arguments_are_refused_in_one_line() -> None:
    for args, text in ((("--parts", "setup,bogus"), "unknown part 'bogus'"), (("--x",), "--x")):
        done = run_script(*args)
        assert done.returncode == 2 and text in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_real_run_of_the_gpu_tests_part_writes_its_file_and_the_summary(tmp_path) -> None:
    done = run_script("--parts", "gputests", env={"OUT": str(tmp_path)})
    part = json.loads((tmp_path / "gputests.json").read_text())
    assert part["cap_s"] == 50 and part["wall_s"] <= 50
    if not torch.cuda.is_available():  # every gpu test skipped, and the part still passes
        assert part["skipped"] >= 2 and part["failed"] == 0 and part["status"] == "ok"
        assert done.returncode == 0, done.stdout[-2000:]
    summary = (tmp_path / "summary.md").read_text()
    assert "| gputests | GPU-only tests |" in summary
    assert (tmp_path / "gpu_check.log").is_file()
    assert len(list(tmp_path.iterdir())) <= 8  # at most 8 files come back from a device call


def write(out: Path, part: str, payload: dict) -> None:
    (out / f"{part}.json").write_text(json.dumps({"part": part, **payload}))


def test_summary_compares_every_figure_with_its_goal(tmp_path: Path) -> None:
    write(
        tmp_path, "setup", {"status": "ok", "env": {"card": "NVIDIA H200", "card_bytes": 141 * GIB}}
    )
    ratios = {
        "simple_cnn.fast_over_floor": {"value": 0.91},
        "resnet50_seed.fast_over_floor": {"value": 0.80},
    }
    (tmp_path / "pipeline.json").write_text(json.dumps({"bench": "pipeline", "ratios": ratios}))
    write(tmp_path, "sweep_one", {"status": "ok", "useful_fraction": 0.41, "oom": 0})
    write(tmp_path, "sweep_packed", {"status": "failed", "useful_fraction": 0.83, "oom": 1})
    gc.cmd_summary(tmp_path)
    rows = (tmp_path / "summary.md").read_text().splitlines()
    assert "| pipeline | simple_cnn.fast_over_floor | 0.910 | >= 0.85 | met |" in rows
    assert "| pipeline | resnet50_seed.fast_over_floor | 0.800 | >= 0.85 | NOT met |" in rows
    assert "| sweep_packed | useful GPU time fraction | 0.830 | >= 0.80 | met |" in rows
    assert "| sweep_packed | out-of-memory failures | 1 | == 0 | NOT met |" in rows
    assert "| sweep_one | out-of-memory failures | 0 | == 0 | met |" in rows
    assert any(r.startswith("| setup | card | NVIDIA H200 (141.0 GiB") for r in rows)


def test_mark_keeps_figures_written_before_a_timeout(tmp_path: Path) -> None:
    write(tmp_path, "sweep_one", {"status": "running", "floor_images_per_s": {"resnet18": 5000.0}})
    gc.cmd_mark(tmp_path, "sweep_one", rc=124, wall=110.0, cap=110.0)
    part = json.loads((tmp_path / "sweep_one.json").read_text())
    assert part["status"] == "timeout after 110 s (cap)"
    assert part["floor_images_per_s"] == {"resnet18": 5000.0} and part["part"] == "sweep_one"
    gc.cmd_mark(tmp_path, "memory", rc=1, wall=3.0, cap=75.0)  # died before writing anything
    assert json.loads((tmp_path / "memory.json").read_text())["status"] == (
        "failed (exit 1): no figures written"
    )
    write(tmp_path, "pipeline", {"bench": "pipeline", "ratios": {}})
    gc.cmd_mark(tmp_path, "pipeline", rc=0, wall=30.0, cap=45.0)
    assert json.loads((tmp_path / "pipeline.json").read_text())["status"] == "ok"


def test_memory_row_checks_the_figures_independently() -> None:
    cfg = TrialConfig(model="resnet18", batch_size=32, image_size=256)
    key = gm.key_for(cfg, "NVIDIA H200", 141 * GIB)
    m = gm.Measurement(
        key, 4 * GIB, 3 * GIB, GIB // 2, "measured", step_s=0.01, eval_s=0.5, save_s=0.3
    )
    row = gc.memory_row(m, epoch_images=6000)
    assert row["need_gib"] == pytest.approx(4 + 0.4 + 0.5)
    assert row["share"] == 0.125  # 4.9 of 141 GiB
    epoch_s = 6000 / 32 * 0.01 + 0.5  # 2.375 s
    assert row["epoch_s"] == pytest.approx(epoch_s)
    # spaces/transfer.py: ASHA rungs 2 and 6 of 12 epochs and the last are always saved, 0.9 s
    # of 28.5 s (3.2%) already; every 7th (the 2% rule alone) would add a fourth: so none.
    assert row["checkpoint_every"] == 12 and row["saved_epochs"] == [2, 6, 12]
    assert row["checkpoint_cost"] == pytest.approx(3 * 0.3 / (12 * epoch_s))
    assert row["lost_epochs_worst"] == 6 and row["lost_s_worst"] == pytest.approx(6 * epoch_s)


@pytest.mark.slow
def test_the_sweep_part_rehearses_on_the_cpu(tmp_path: Path) -> None:
    """The Ray part of the check, as the card runs it, on phantom:small at 32 px (CPU arms)."""
    command = [sys.executable, "-m", "bench.gpu_check", "sweep", "--out", str(tmp_path)]
    command += ["--arm", "packed", "--trials", "1", "--epochs", "1", "--data", "phantom:small"]
    command += ["--image-size", "32", "--max-train-batches", "1"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    part = json.loads((tmp_path / "sweep_packed.json").read_text())
    assert part["status"] == "ok" and part["oom"] == 0 and part["trials"] == 1
    assert part["images_trained"] == 32  # one step of batch 32
    assert 0 < part["useful_fraction"] <= 1 and part["useful_s"] < part["sweep_wall_s"]


def test_the_setup_part_records_the_machine_and_the_data(tmp_path: Path) -> None:
    """The setup part as the card runs it, on phantom:small at 32 px (no card: no card fields)."""
    assert gc.cmd_setup(tmp_path, "phantom:small", 32) == 0
    part = json.loads((tmp_path / "setup.json").read_text())
    assert part["status"] == "ok" and part["train_images"] > 0
    assert part["env"]["torch"] == torch.__version__
    assert ("card" in part["env"]) == torch.cuda.is_available()
    assert part["phantom_s"] >= 0 and part["decode_s"] >= 0
