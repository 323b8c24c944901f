"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# The triton scan backend runs on CPU tensors under Triton's interpreter only, which must be chosen before
# triton is imported: at session start, on machines without CUDA (a user's TRITON_INTERPRET wins). With CUDA
# the kernels are compiled, and tests/test_cuda.py checks them instead of tests/test_scan_triton.py.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of the benchmark CSVs: ``$MAMBAMIXER_DATA``, else ``<repo>/../shared/data``."""
    path = Path(os.environ.get("MAMBAMIXER_DATA", REPO_ROOT.parent / "shared" / "data")).expanduser()
    if not path.is_dir():
        pytest.skip(f"benchmark data folder {path} not found (set MAMBAMIXER_DATA)")
    return path
