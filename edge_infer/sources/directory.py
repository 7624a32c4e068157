"""`type = "directory"`: image files dropped into a folder. Never drops: every file becomes a sample.

Writers should write to a temporary name (dotfile, `.tmp` or `.part`) and rename; files still being written
are skipped until they have been unchanged for `settle_seconds` (watch mode only).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edge_infer.sources import Sample, register

IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")


class DirectorySource:
    def __init__(self, options: dict[str, Any]) -> None:
        self.path = Path(options["path"])
        self.name: str = options.get("name") or "directory"
        self.poll_interval: float = options.get("poll_interval", 0.5)
        self.settle_seconds: float = options.get("settle_seconds", 1.0)
        self.max_file_bytes: int = options.get("max_file_bytes", 50 * 1024 * 1024)

    def _candidates(self) -> list[tuple[int, str, os.stat_result]]:
        found = []
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            return []
        for entry in entries:
            if entry.name.startswith(".") or entry.name.endswith(IGNORED_SUFFIXES):
                continue
            try:
                if not entry.is_file():
                    continue
                st = entry.stat()
            except OSError:
                continue  # vanished between listing and stat
            found.append((st.st_mtime_ns, entry.name, st))
        found.sort(key=lambda item: (item[0], item[1]))
        return found

    def _read(self, name: str, st: os.stat_result) -> Sample:
        path = self.path / name
        fingerprint = f"{st.st_size}:{st.st_mtime_ns}"
        data: bytes | None = None
        error: str | None = None
        if st.st_size > self.max_file_bytes:
            error = f"file is {st.st_size} bytes, over the source's max_file_bytes ({self.max_file_bytes})"
        else:
            try:
                data = path.read_bytes()
            except OSError as exc:
                error = f"cannot read file: {exc.strerror or exc}"
        return Sample(
            source=self.name,
            input_id=name,
            fingerprint=fingerprint,
            ts=st.st_mtime_ns / 1e9,
            data=data,
            read_error=error,
            path=path,
        )

    def samples(self, stop: threading.Event, once: bool, done: Callable[[Sample], bool]) -> Iterator[Sample]:
        yielded: set[str] = set()
        while not stop.is_set():
            now_ns = time.time_ns()
            present: set[str] = set()
            for mtime_ns, name, st in self._candidates():
                if stop.is_set():
                    return
                key = f"{name}@{st.st_size}:{st.st_mtime_ns}"
                present.add(key)
                if key in yielded:
                    continue
                if not once and now_ns - mtime_ns < self.settle_seconds * 1e9:
                    continue  # possibly still being written; look again on the next pass
                probe = Sample(self.name, name, f"{st.st_size}:{st.st_mtime_ns}", 0.0, None)
                yielded.add(key)
                if done(probe):
                    continue
                yield self._read(name, st)
            yielded &= present  # forget files that are gone, so memory stays bounded over months
            if once:
                return
            stop.wait(self.poll_interval)


@register("directory")
def make_directory_source(options: dict[str, Any]) -> DirectorySource:
    return DirectorySource(options)
