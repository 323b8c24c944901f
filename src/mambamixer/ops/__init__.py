"""Functional ops (no nn.Module): the selective scan and its backends."""

from mambamixer.ops.scan import (
    BACKENDS,
    available_backends,
    selective_scan,
    selective_scan_ref,
)

__all__ = ["BACKENDS", "available_backends", "selective_scan", "selective_scan_ref"]
