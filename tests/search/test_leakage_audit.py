"""The leakage audit runs in the pre-flight, once per data setting, and the end of a sweep
reads what it kept in the experiment (leakage.json) instead of auditing again."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainables"))

from image_folders import make_folder  # noqa: E402

import trainables.leakage as leakage  # noqa: E402
from search.preflight import audit_leakage  # noqa: E402
from search.summary import data_leakage  # noqa: E402
from trainables.config import TrialConfig  # noqa: E402
from trainables.experiment import ExperimentRecord  # noqa: E402


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_TUNE_CACHE", str(tmp_path / "cache"))


def test_the_preflight_audits_each_data_setting_once_and_records_a_failure(tmp_path, cache):
    root = str(make_folder(tmp_path / "d"))
    lines: list[str] = []
    configs = [
        TrialConfig(data=root, image_size=32),
        TrialConfig(data=root, image_size=64),  # same data, other size: the same audit
        TrialConfig(data=str(tmp_path / "missing"), image_size=32),
    ]
    audits = audit_leakage(configs, lines.append)
    assert len(audits) == 2
    assert audits[0]["near_duplicate_count"] == 0 and audits[0]["pairs_checked"] > 0
    # A data setting that cannot be audited is recorded with its error, not raised.
    assert "error" in audits[1] and audits[1]["settings"]["data"].endswith("missing")
    assert any(line.startswith("leakage: 0 patients in two splits") for line in lines)
    assert any(line.startswith("leakage: not checked") for line in lines)


def test_the_summary_reads_the_kept_audit_and_never_recomputes(tmp_path, monkeypatch):
    data = str(tmp_path / "not-here")  # loading it would fail: the summary must not try
    cfg = TrialConfig(data=data)
    audit = {
        "settings": leakage.audit_settings(cfg),
        "patients_in_two_splits": [],
        "near_duplicate_count": 3,
        "pairs_checked": 12,
    }
    (tmp_path / leakage.LEAKAGE_FILE).write_text(leakage.leakage_file_text([audit]))

    def no_audit(*args, **kwargs):
        raise AssertionError("the summary audited the data again")

    monkeypatch.setattr(leakage, "leakage_for_config", no_audit)
    record = ExperimentRecord(
        name="x", metric="val_loss", mode="min", path=str(tmp_path), overrides={"data": data}
    )
    assert data_leakage({"best": None}, record) == audit
    # The best trial trained on another split: no audit of it was kept, which is said.
    other = {"best": {"config": {"data": data, "split_seed": 7}}}
    assert "holds no audit of this data setting" in data_leakage(other, record)["error"]
    (tmp_path / leakage.LEAKAGE_FILE).unlink()
    assert "holds no audit" in data_leakage({"best": None}, record)["error"]


def test_ctrl_c_in_the_preflight_audit_is_not_recorded_as_a_failure(monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    # A failed audit is recorded and the sweep goes on; Ctrl-C must end the command instead.
    monkeypatch.setattr("search.preflight.leakage_for_config", interrupted)
    with pytest.raises(KeyboardInterrupt):
        audit_leakage([TrialConfig(data="phantom:small")], lambda line: None)


def test_the_sigint_handler_from_before_fit_is_put_back():
    import signal

    from search import signals

    def tunes_own(signum, frame):  # stands in for the handler Tuner.fit leaves installed
        pass

    # After a sweep ends on its own, Ctrl-C must raise again in the summary and the export.
    # (Start from Python's own handler: an earlier in-process sweep of the suite may have left
    # Tune's installed, which is the very thing this protects against in the product.)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with signals.sigint_handler_restored():
            signal.signal(signal.SIGINT, tunes_own)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
