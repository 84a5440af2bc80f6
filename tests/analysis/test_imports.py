"""analysis/ works from files: importing it must not pull in Ray (or W&B before --wandb)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_analysis_imports_neither_ray_nor_wandb():
    code = (
        "import sys, analysis.load, analysis.tta, analysis.stats, analysis.tables, "
        "analysis.plots, analysis.report, analysis.predict, analysis.evaluate, analysis.document, "
        "analysis.prose, trainables.experiment; "
        "print(sorted(m for m in ('ray', 'wandb') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    # A report months later must not need a Ray installation that matches the sweep's.
    assert out.strip() == "[]"
