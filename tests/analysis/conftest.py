"""One small real sweep per test session (spaces/smoke.py through `python -m search.run`), and
one report built from it, shared by the analysis tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SWEEP_TIMEOUT = 420  # seconds; the sweep takes ~40 s on 2 idle cores


@pytest.fixture(scope="session")
def smoke_experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """STORAGE/smoke: 4 trials of the 10M SimpleCNN at 32 px, 3 epochs, ASHA, exported bundle.

    Run as a subprocess so Ray starts and stops with it (nothing left running in pytest).
    """
    storage = tmp_path_factory.mktemp("sweeps")
    cmd = [
        sys.executable, "-m", "search.run", "--space", "spaces/smoke.py", "--name", "smoke",
        "--storage", str(storage), "--wandb-mode", "disabled", "--num-samples", "4",
        "--max-concurrent", "2",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=SWEEP_TIMEOUT
    )
    if proc.returncode != 0:
        pytest.fail(f"smoke sweep failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                    f"{proc.stderr[-4000:]}")  # fmt: skip
    return storage / "smoke"


@pytest.fixture(scope="session")
def smoke_report(smoke_experiment: Path, tmp_path_factory: pytest.TempPathFactory):
    """(experiment, document, tables, out dir) of `python -m analysis.report` on the sweep."""
    from analysis.report import run_report

    out = tmp_path_factory.mktemp("report")
    with one_torch_thread():
        exp, doc, tables = run_report(smoke_experiment, out, top_k=2, device="cpu")
    return exp, doc, tables, out


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Tiny 32 px batches run faster on one thread, and much faster when the cores are shared
    with other test processes; the previous setting is restored for other tests."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def single_thread() -> Iterator[None]:
    """`one_torch_thread` for the length of one test."""
    with one_torch_thread():
        yield
