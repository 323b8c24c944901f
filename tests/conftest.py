"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of the benchmark CSVs: ``$MAMBAMIXER_DATA``, else ``<repo>/../shared/data``."""
    path = Path(os.environ.get("MAMBAMIXER_DATA", REPO_ROOT.parent / "shared" / "data")).expanduser()
    if not path.is_dir():
        pytest.skip(f"benchmark data folder {path} not found (set MAMBAMIXER_DATA)")
    return path
