"""The sweep's command line: bad flags and bad space files are refused before any trial starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from search.resources import gpu_fraction, peak_bytes, resource_request
from search.run import CPU_PROFILE, FULL_PROFILE, build_parser, choose_profile
from search.tracking import resolve_mode, scrub

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "spaces" / "smoke.py")

BAD_FLAGS = {
    "--num-samples": ("0", "[1, 100000]"),
    "--max-concurrent": ("-2", "[1, 10000]"),
    "--gpus-per-trial": ("9", "[0, 8]"),
    "--cpus-per-trial": ("0", "[0.25, 256]"),
    "--time-budget": ("nan", "[1, 1e8]"),
    "--seed": ("x", "an integer in [0, 2**31-1]"),
    "--grace-period": ("0", "[1, 100000]"),
    "--reduction-factor": ("1", "[2, 100]"),
    "--wandb-mode": ("sometimes", "online"),
    "--profile": ("gpu", "auto"),
    "--name": ("../escape", "not a valid name"),
    "--data": ("phantom:huge", "phantom:small"),
}


@pytest.mark.parametrize("flag", sorted(BAD_FLAGS))
def test_bad_flag_is_refused_with_the_flag_and_valid_range(flag: str, capsys) -> None:
    value, valid = BAD_FLAGS[flag]
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--space", SMOKE, flag, value])
    err = capsys.readouterr().err
    # argparse's usage error: exit status 2, naming the flag and the valid values.
    assert exit_.value.code == 2
    assert flag in err and valid in err


def test_missing_data_folder_is_refused(capsys, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--space", SMOKE, "--data", str(tmp_path / "none")])
    assert "does not exist" in capsys.readouterr().err


def test_help_lists_every_flag_of_the_sweep() -> None:
    text = build_parser().format_help()
    flags = [
        "--space",
        "--data",
        "--num-samples",
        "--max-concurrent",
        "--gpus-per-trial",
        "--cpus-per-trial",
        "--address",
        "--storage",
        "--name",
        "--resume",
        "--time-budget",
        "--seed",
        "--wandb-project",
        "--wandb-mode",
        "--export",
        "--profile",
        "--grace-period",
        "--reduction-factor",
    ]
    assert [f for f in flags if f not in text] == []


def test_profile_is_cpu_without_a_gpu_unless_full_is_forced() -> None:
    assert choose_profile("auto", 0)[0] is CPU_PROFILE
    assert choose_profile("auto", 1)[0] is FULL_PROFILE
    assert choose_profile("full", 0)[0] is FULL_PROFILE  # the flag forces the full sweep
    assert FULL_PROFILE.image_size == 256 and FULL_PROFILE.data == "phantom:full"


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


def test_wandb_mode_defaults_to_offline_without_an_api_key(monkeypatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert resolve_mode(None) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert resolve_mode(None) == "online"
    assert resolve_mode("disabled") == "disabled"
    # The key never reaches a file the sweep writes, under any field name.
    assert scrub({"note": "k" * 40, "wandb_api_key": "x", "seed": 1}) == {"seed": 1}


@pytest.mark.slow
def test_cli_refuses_a_bad_space_file_before_any_trial(tmp_path: Path) -> None:
    space = tmp_path / "typo.py"
    space.write_text(
        'METRIC = "val_acc"\nMODE = "max"\nMAX_EPOCHS = 2\n'
        "def define(trial):\n    trial.suggest_float('learnrate', 1e-4, 1e-2)\n"
    )
    storage = tmp_path / "runs"
    env = {**os.environ, "WANDB_MODE": "offline", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "search.run",
            "--space",
            str(space),
            "--storage",
            str(storage),
            "--name",
            "bad",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Usage error naming the file and the unknown name; the first line announces the profile.
    assert proc.returncode == 2
    assert str(space) in proc.stderr and "'learnrate'" in proc.stderr
    assert proc.stdout.splitlines()[0].startswith("profile: cpu")
    # Nothing ran: no experiment directory, no Ray session.
    assert not (storage / "bad").exists()
    assert "Started a local Ray instance" not in proc.stderr
