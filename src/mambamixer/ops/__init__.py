"""Functional ops (no nn.Module): the selective scan and its backends; the short causal conv is
``mambamixer.ops.causal_conv1d``."""

import os

# numba's OpenMP threading layer keeps its idle threads spinning after a parallel kernel, which
# starves PyTorch's own OpenMP threads (training steps measured 5-10x slower on 2 cores). The
# workqueue layer sleeps when idle. A user's NUMBA_THREADING_LAYER still wins.
os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")
import numba  # noqa: E402

if os.environ["NUMBA_THREADING_LAYER"] == "workqueue":
    numba.config.THREADING_LAYER = "workqueue"  # numba may have been imported before us

from mambamixer.ops.scan import (  # noqa: E402
    BACKENDS,
    available_backends,
    selective_scan,
    selective_scan_ref,
)

__all__ = ["BACKENDS", "available_backends", "selective_scan", "selective_scan_ref"]
