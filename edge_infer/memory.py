"""glibc's allocator, tuned for a small board: few malloc arenas, freed memory handed back.

Each thread that allocates while another holds the main arena gets an arena of its own (up to 8 per core), and
an arena keeps what was freed in it. The daemon's decode, inference, writer and publisher threads free
megabytes of frames each second, so by default RSS settles well above what it holds. Two arenas and a periodic
`malloc_trim` bring it to within a few MB of a bare script (see the README's benchmark). No-ops off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)
M_ARENA_MAX = -8
_libc: ctypes.CDLL | None = None


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc = libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
        except OSError:
            _libc = None
    return _libc


def limit_arenas(count: int = 2) -> bool:
    """At most `count` malloc arenas (call before starting threads); False when not glibc."""
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(M_ARENA_MAX, count))


def trim() -> None:
    """Give freed heap memory back to the system (a few ms on a Pi; the housekeeping thread calls it)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
