"""`type = "directory"`: image files dropped into a folder. Never drops: every file becomes a sample.

Writers should write to a temporary name (dotfile, `.tmp` or `.part`) and rename; files still being written
are skipped until they have been unchanged for `settle_seconds` (watch mode only).

`patterns` are glob patterns relative to the folder (`**/*.jpg` reaches into sub-folders; the input id is
the relative path). `processed` says what happens to a file once its result or rejection is durably in the
outbox: `keep` it (the checkpoint remembers it), `move` it under `processed_dir` (same relative path), or
`delete` it.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edge_infer.sources import Sample, register

IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")
log = logging.getLogger(__name__)


class DirectorySource:
    kind = "image"
    live = False
    dropped = 0

    def __init__(self, options: dict[str, Any]) -> None:
        self.path = Path(options["path"])
        self.name: str = options.get("name") or "directory"
        self.poll_interval: float = options.get("poll_interval", 0.5)
        self.settle_seconds: float = options.get("settle_seconds", 1.0)
        self.max_file_bytes: int = options.get("max_file_bytes", 50 * 1024 * 1024)
        self.patterns: list[str] = options.get("patterns") or ["*"]
        self.recursive = any("/" in p or "**" in p for p in self.patterns)
        self.processed: str = options.get("processed", "keep")
        processed_dir = options.get("processed_dir")
        self.processed_dir = Path(processed_dir) if processed_dir else self.path.parent / f"{self.path.name}.done"

    def _matches(self, rel: str) -> bool:
        return any(fnmatch.fnmatchcase(rel, p) or (p.startswith("**/") and fnmatch.fnmatchcase(rel, p[3:]))
                   for p in self.patterns)

    def _walk(self) -> Iterator[tuple[str, os.DirEntry[str]]]:
        stack = [("", self.path)]
        while stack:
            prefix, folder = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                rel = f"{prefix}{entry.name}"
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if self.recursive and Path(entry.path) != self.processed_dir:
                            stack.append((rel + "/", Path(entry.path)))
                        continue
                except OSError:
                    continue
                yield rel, entry

    def _candidates(self) -> list[tuple[int, str, os.stat_result]]:
        found = []
        for rel, entry in self._walk():
            if entry.name.endswith(IGNORED_SUFFIXES) or not self._matches(rel):
                continue
            try:
                if not entry.is_file():
                    continue
                st = entry.stat()
            except OSError:
                continue  # vanished between listing and stat
            found.append((st.st_mtime_ns, rel, st))
        found.sort(key=lambda item: (item[0], item[1]))
        return found

    def committed(self, sample: Sample) -> None:
        """The sample's outcome is durable: apply the `processed` policy to its file."""
        if self.processed == "keep" or sample.path is None:
            return
        try:
            if self.processed == "delete":
                sample.path.unlink(missing_ok=True)
            else:
                target = self.processed_dir / sample.input_id
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(sample.path, target)
        except OSError as exc:
            log.warning("event=processed_policy_failed input=%s policy=%s error=%r", sample.input_id,
                        self.processed, exc.strerror or str(exc))

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
                probe = Sample(self.name, name, f"{st.st_size}:{st.st_mtime_ns}", 0.0, None, path=self.path / name)
                yielded.add(key)
                if done(probe):
                    self.committed(probe)  # stored before a crash cut the move/delete short: finish it now
                    continue
                yield self._read(name, st)
            yielded &= present  # forget files that are gone, so memory stays bounded over months
            if once:
                return
            stop.wait(self.poll_interval)


@register("directory")
def make_directory_source(options: dict[str, Any], spec: Any = None) -> DirectorySource:
    return DirectorySource(options)
