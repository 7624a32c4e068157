"""Wall-clock timestamps, and whether the clock can be trusted (a Pi has no RTC: until NTP syncs, the
time after boot is whatever fake-hwclock saved)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import time
from datetime import UTC, datetime

TIME_ERROR = 5  # adjtimex(2) return value: clock not synchronised
_TIMESYNC_FLAG = "/run/systemd/timesync/synchronized"


def rfc3339(ts: float) -> str:
    """UTC RFC 3339 with milliseconds, e.g. 2026-11-29T07:18:43.123Z."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def _adjtimex_state() -> int | None:
    libc = _libc()
    if libc is None or not hasattr(libc, "adjtimex"):
        return None
    buf = ctypes.create_string_buffer(512)  # struct timex is ~208 bytes; modes=0 means read-only
    return int(libc.adjtimex(buf))


_cache: tuple[float, bool] = (0.0, False)


def time_synced() -> bool:
    """True when the kernel says the clock is synchronised (NTP/PTP), or systemd-timesyncd says so.

    Re-checked at most every 10 s: it is asked once per message.
    """
    global _cache
    now = time.monotonic()
    if _cache[0] and now - _cache[0] < 10.0:
        return _cache[1]
    state = _adjtimex_state()
    synced = os.path.exists(_TIMESYNC_FLAG) or (state is not None and 0 <= state != TIME_ERROR)
    _cache = (now, synced)
    return synced
