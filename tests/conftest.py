"""Shared test fixtures: where the real data lives, a config in a temp folder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout (present in this workplace and its CI)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (outside the stdd workplace)")
    return SHARED_DATA


@pytest.fixture
def config_file(tmp_path: Path):
    """Write a stdd.toml into a temp folder; returns a function(text) -> path."""

    def write(text: str = "") -> Path:
        path = tmp_path / "stdd.toml"
        path.write_text(text)
        return path

    return write
