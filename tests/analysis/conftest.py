"""A copy of the session's smoke sweep (tests/conftest.py), and one report built from it,
shared by the analysis tests."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainables.experiment import CHECKPOINT_FILE, EXPORT_DIR


@pytest.fixture(scope="session")
def smoke_experiment(smoke_sweep: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's smoke sweep (tests/smoke_sweep.py: 6 trials of the 10M SimpleCNN
    at 32 px, 3 epochs, ASHA), its bundle at NAME/export where the report records its TTA
    choice: the analysis tests change the copy, never the sweep the search tests read.
    Checkpoints are hard links (nothing rewrites one in place); every other file is copied."""
    copy = tmp_path_factory.mktemp("analysis") / "smoke"

    def link_checkpoints(src: str, dst: str) -> None:
        (os.link if Path(src).name == CHECKPOINT_FILE else shutil.copy2)(src, dst)

    shutil.copytree(smoke_sweep["exp"], copy, symlinks=True, copy_function=link_checkpoints)
    shutil.copytree(smoke_sweep["bundle"], copy / EXPORT_DIR)
    return copy


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
