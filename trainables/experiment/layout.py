"""Names of the experiment folder's entries whose formats other code owns: the exported bundle
(`trainables.bundle`), the Optuna journal (Optuna's JournalStorage) and the disk reserve
(`search.disk`)."""

from __future__ import annotations

from pathlib import Path

EXPORT_DIR = "export"
OPTUNA_JOURNAL = "optuna_journal.log"  # Optuna JournalStorage file (file backend)
SPACE_RESERVE_FILE = ".cxr_tune.reserve"  # search.disk's kept space, there while a sweep runs


def journal_path(local_dir: str | Path) -> Path:
    """The Optuna journal of an experiment whose local folder is `local_dir`."""
    return Path(local_dir) / OPTUNA_JOURNAL
