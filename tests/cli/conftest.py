"""Fixtures of the command-line tests: ``home``, a scratch home and data home with no
DTP_LEDGER or DTP_PASSPHRASE."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tmp_path`` as HOME and data home; DTP_LEDGER and DTP_PASSPHRASE unset."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("DTP_LEDGER", raising=False)
    monkeypatch.delenv("DTP_PASSPHRASE", raising=False)
    return tmp_path
