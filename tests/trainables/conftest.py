"""Fixtures of the trainables tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def cold_cache(tmp_path, monkeypatch):
    """An empty decode cache of the test's own (the data tests count decodes)."""
    monkeypatch.setenv("CXR_TUNE_CACHE", str(tmp_path / "cache"))
