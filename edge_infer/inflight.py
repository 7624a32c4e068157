"""Which input each thread is working on, readable after the process died of a fatal signal.

A small file in the state folder, mapped into memory: each thread that decodes or runs an input writes the input's
checkpoint key into a slot of its own (`mark`: a memory write, no system call) and clears it when done. The kernel
writes a dead process's mapped pages back to the file like any other, so after a crash the next start reads which
input each thread had in hand (`previous`, by thread id — the id `faulthandler` prints for each thread), and which
thread the watchdog last found hung (`hung`; systemd's watchdog then kills the process). A power cut may lose the
last marks; it leaves no stack to match them against either.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import struct
import threading
from pathlib import Path

SLOT_BYTES = 512
SLOTS = 32  # the first is the hung thread's record; 31 threads that ever mark (a later one is not recorded)
_HEAD = struct.Struct("<QH")  # thread id, key length
MAX_KEY = SLOT_BYTES - _HEAD.size


def slot_key(key: str) -> str:
    """What a slot holds for an input's checkpoint key: the key, or a digest of one too long for a slot."""
    raw = key.encode("utf-8", "surrogateescape")
    return key if len(raw) <= MAX_KEY else "sha256:" + hashlib.sha256(raw).hexdigest()


class InFlight:
    """`previous` and `previous_hung` (read at construction): {thread id: slot key} and the hung thread as the last
    run left them. `open` starts this run's record (the file emptied), `mark(key)` / `mark(None)` from any thread,
    `hung(thread)`, `close` removes the file (a clean stop: nothing was in flight)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.previous, self.previous_hung = _read(self.path)
        self._map: mmap.mmap | None = None
        self._slots: dict[int, int] = {}
        self._lock = threading.Lock()

    def open(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.ftruncate(fd, SLOT_BYTES * SLOTS)
            self._map = mmap.mmap(fd, SLOT_BYTES * SLOTS)
        finally:
            os.close(fd)

    def mark(self, key: str | None) -> None:
        """The calling thread now works on the input with this checkpoint key (None: on none)."""
        mapped = self._map
        if mapped is None:
            return
        ident = threading.get_ident()
        slot = self._slots.get(ident)
        if slot is None:
            with self._lock:
                slot = self._slots.setdefault(ident, len(self._slots) + 1)
        if slot >= SLOTS:
            return
        raw = b"" if key is None else slot_key(key).encode("utf-8", "surrogateescape")
        with contextlib.suppress(ValueError):  # closed meanwhile: the run is over
            mapped[slot * SLOT_BYTES:slot * SLOT_BYTES + _HEAD.size + len(raw)] = _HEAD.pack(ident, len(raw)) + raw

    def hung(self, thread: int | None) -> None:
        """The watchdog found this thread stuck in a stage (None: nothing is stuck any more)."""
        mapped = self._map
        if mapped is not None:
            with contextlib.suppress(ValueError):
                mapped[:_HEAD.size] = _HEAD.pack(thread or 0, 0)

    def close(self) -> None:
        mapped, self._map = self._map, None
        if mapped is not None:
            mapped.close()
            with contextlib.suppress(OSError):
                self.path.unlink()


def _read(path: Path) -> tuple[dict[int, str], int | None]:
    try:
        with open(path, "rb") as fh:
            data = fh.read(SLOT_BYTES * SLOTS)
    except OSError:
        return {}, None
    if len(data) < _HEAD.size:
        return {}, None
    found: dict[int, str] = {}
    for offset in range(SLOT_BYTES, len(data) - _HEAD.size + 1, SLOT_BYTES):
        ident, length = _HEAD.unpack_from(data, offset)
        if ident and 0 < length <= MAX_KEY:
            found[ident] = data[offset + _HEAD.size:offset + _HEAD.size + length].decode("utf-8", "surrogateescape")
    return found, _HEAD.unpack_from(data, 0)[0] or None
