"""Fixtures for the data-layer tests: files written under tmp_path, the real-data folder, and a check
that a typed error names its file, row and column."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from armt_ts.data import DataError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def write_csv(tmp_path):
    """write_csv(text, name="data.csv") -> path of a file holding exactly ``text`` (str or bytes)."""
    def write(text: str | bytes, name: str = "data.csv") -> Path:
        path = tmp_path / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return path
    return write


@pytest.fixture
def assert_names():
    """assert_names(err, file, row, column): the error carries and states all three."""
    def check(err: DataError, file, row: int | None, column: str | None) -> None:
        msg = str(err)
        assert err.file == str(file), msg
        assert err.row == row, msg
        assert err.column == column, msg
        assert repr(str(file)) in msg, msg
        if row is not None:
            assert f"row {row}" in msg, msg
        if column is not None:
            assert repr(column) in msg, msg
        assert "expected" in msg, msg
    return check


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder: $ARMT_TS_DATA, else <repo>/../shared/data; skips when absent."""
    env = os.environ.get("ARMT_TS_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set ARMT_TS_DATA to the folder holding ett/ and weather/)")
    return path
