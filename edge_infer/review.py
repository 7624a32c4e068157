"""A bounded folder of inputs kept for review: `root/<reason-or-label>/<time>-<input>` plus a `.json` sidecar.

Caps on count and bytes; the oldest entries go first. The layout is the one `edge-convert` reads
(`<root>/<label>/<image>`), so what the device found hard can become calibration or evaluation data.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class CaptureStore:
    def __init__(self, root: Path | str, max_files: int, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_files = max_files
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: deque[tuple[Path, int]] = deque()  # oldest first: (data file, bytes incl. sidecar)
        self._bytes = 0
        self.saved = 0
        self.evicted = 0
        self._scan()

    def _scan(self) -> None:
        found = []
        if self.root.is_dir():
            for path in self.root.glob("*/*"):
                if path.suffix == ".json" or not path.is_file():
                    continue
                sidecar = path.with_name(path.name + ".json")
                size = path.stat().st_size + (sidecar.stat().st_size if sidecar.exists() else 0)
                found.append((path.name, path, size))
        for _, path, size in sorted(found):
            self._entries.append((path, size))
            self._bytes += size

    def save(self, group: str, input_id: str, data: bytes, meta: dict[str, Any]) -> Path | None:
        """Keep one input (never raises: review data must not cost the pipeline)."""
        if self.max_files <= 0 or len(data) > self.max_bytes:
            return None
        name = f"{time.time_ns():020d}-{_UNSAFE.sub('_', input_id)[-80:] or 'input'}"
        folder = self.root / _UNSAFE.sub("_", group)
        path = folder / name
        sidecar_bytes = json.dumps(meta, separators=(",", ":")).encode()
        with self._lock:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                path.with_name(name + ".json").write_bytes(sidecar_bytes)
            except OSError as exc:
                log.warning("event=capture_failed path=%s error=%r", path, exc.strerror or str(exc))
                return None
            self._entries.append((path, len(data) + len(sidecar_bytes)))
            self._bytes += len(data) + len(sidecar_bytes)
            self.saved += 1
            while self._entries and (len(self._entries) > self.max_files or self._bytes > self.max_bytes):
                old, size = self._entries.popleft()
                for victim in (old, old.with_name(old.name + ".json")):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(victim)
                self._bytes -= size
                self.evicted += 1
        return path

    @property
    def count(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes


def review_store(root: Path | str, max_files: int, max_bytes: int) -> CaptureStore | None:
    """The review folder a config asks for, or None when it keeps nothing (`max_files` 0)."""
    return CaptureStore(root, max_files, max_bytes) if max_files else None


def export(root: Path | str, dest: Path | str, groups: set[str] | None = None) -> dict[str, int]:
    """Copy a capture folder into the layout `edge-convert` reads: images as `dest/<group>/<file>`; sensor
    windows (CSV captures) into `dest/windows.npz` (`x`: windows, `y`: group names). Sidecars stay behind.
    Returns the count per group. The capture is left as it is (review, relabel by moving files, export)."""
    import shutil

    import numpy as np

    root, dest = Path(root), Path(dest)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no captured inputs here yet")
    counts: dict[str, int] = {}
    windows: list[np.ndarray] = []
    names: list[str] = []
    for path in sorted(root.glob("*/*")):
        group = path.parent.name
        if path.suffix == ".json" or not path.is_file() or (groups and group not in groups):
            continue
        if path.name.endswith(".csv") or _is_window_csv(path):
            rows = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
            windows.append(rows[:, 1:])  # drop the time column
            names.append(group)
        else:
            (dest / group).mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / group / path.name)
        counts[group] = counts.get(group, 0) + 1
    if windows:
        dest.mkdir(parents=True, exist_ok=True)
        np.savez(dest / "windows.npz", x=np.stack(windows), y=np.array(names))
    return counts


def _is_window_csv(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"t,"
