"""bench/audit_scale.py runs end to end at small sizes: every method's count agrees (the script
refuses otherwise), the all-alike case keeps a capped list, and the growth exponents print."""

from __future__ import annotations

import re

import pytest

from bench import audit_scale

pytestmark = pytest.mark.slow


def test_audit_scale_runs_every_method_and_the_counts_agree(capsys):
    argv = ["--sizes", "1000", "2000", "--exhaustive-max", "1000", "--alike-max", "1000"]
    assert audit_scale.main(argv) == 0
    out = capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if re.match(r"\| [\d,]+ \|", line)]
    assert len(rows) == 5  # index, exhaustive, previous, alike at 1000; index at 2000
    alike = [r for r in rows if r[1].strip() == "alike"]
    # Nearly every pair matches, and the kept list stays at the cap.
    number = lambda cell: int(cell.replace(",", ""))  # noqa: E731
    assert alike and all(number(r[6]) == 200 and number(r[5]) > 0.9 * number(r[8]) for r in alike)
    assert "growth exponent index" in out and "growth exponent alike" in out
