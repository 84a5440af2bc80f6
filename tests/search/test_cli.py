"""The sweep's command line (search.cli): bad flags and bad space files are refused before any
trial starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from search.cli import CPU_PROFILE, FULL_PROFILE, build_parser, choose_profile

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
