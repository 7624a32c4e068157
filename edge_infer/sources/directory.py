"""`type = "directory"`: image files dropped into a folder. Never drops: every file becomes a sample.

Writers should write to a temporary name (dotfile, `.tmp` or `.part`) and rename; files still being written
are skipped until they have been unchanged for `settle_seconds` (watch mode only).

`patterns` are glob patterns relative to the folder (`**/*.jpg` reaches into sub-folders; the input id is
the relative path). `processed` says what happens to a file once its result or rejection is durably in the
outbox: `keep` it (the checkpoint remembers it), `move` it under `processed_dir` (same relative path), or
`delete` it.

Files are opened without following symbolic links (`O_NOFOLLOW`), checked on the open descriptor (a regular
file within `max_file_bytes`) and read at most `max_file_bytes + 1` bytes: a link to `/proc/self/environ` or
to a secret elsewhere is rejected with a reason, never read. `follow_symlinks = true` follows links whose
target stays inside the folder.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_infer.options import between, opt
from edge_infer.sources import Sample, SourceConfig, register


@dataclass(frozen=True, kw_only=True)
class Options(SourceConfig):
    """The `[source]` keys of type "directory"."""

    path: str = opt(required=True, is_path=True)
    patterns: tuple[str, ...] = opt(["*"], check=lambda v: None if v and all(isinstance(p, str) for p in v)
                                    else "expected a list of glob patterns, e.g. [\"*.jpg\", \"**/*.png\"]")
    processed: str = opt("keep", choices=("keep", "move", "delete"))
    processed_dir: str | None = opt(None, is_path=True)
    poll_interval: float = opt(0.5, check=between(0.01, 3600), unit="s")
    settle_seconds: float = opt(1.0, check=between(0.0, 3600), unit="s")
    max_file_bytes: int = opt(50 * 1024 * 1024, check=between(1, 2**40), unit="bytes")
    follow_symlinks: bool = opt(False)

IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")
log = logging.getLogger(__name__)


class DirectorySource:
    kind = "image"
    live = False
    dropped = 0

    def __init__(self, options: Options) -> None:
        self.path = Path(options.path)
        self.name = options.name or "directory"
        self.poll_interval = options.poll_interval
        self.settle_seconds = options.settle_seconds
        self.max_file_bytes = options.max_file_bytes
        self.patterns = options.patterns
        self.recursive = any("/" in p or "**" in p for p in self.patterns)
        self.processed = options.processed
        # a moved or deleted file cannot be offered again: its checkpoint is dropped once that is done
        self.forgets_committed = self.processed != "keep"
        processed_dir = options.processed_dir
        self.processed_dir = Path(processed_dir) if processed_dir else self.path.parent / f"{self.path.name}.done"
        self.follow_symlinks = options.follow_symlinks
        self.root = Path(os.path.realpath(self.path))

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
                if not (entry.is_file(follow_symlinks=False) or entry.is_symlink()):
                    continue  # folders, sockets, FIFOs and devices are no inputs
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # vanished between listing and stat
            found.append((st.st_mtime_ns, rel, st))
        found.sort(key=lambda item: (item[0], item[1]))
        return found

    def committed(self, sample: Sample) -> None:
        """The sample's outcome is durable: apply the `processed` policy to its file (raises `OSError`)."""
        if self.processed == "keep" or sample.path is None:
            return
        try:
            if self.processed == "delete":
                sample.path.unlink(missing_ok=True)
            else:
                target = self.processed_dir / sample.input_id
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(sample.path, target)
        except OSError as exc:  # the writer logs it and keeps the checkpoint
            raise OSError(f"processed = {self.processed!r} failed for {sample.input_id}: "
                          f"{exc.strerror or exc}") from None

    def _open(self, path: Path) -> int:
        """A descriptor on `path` that never follows a link (or, with `follow_symlinks`, follows one only to a
        file inside the folder); raises `OSError` with a reason."""
        if self.follow_symlinks and path.is_symlink():
            real = Path(os.path.realpath(path))
            if not real.is_relative_to(self.root):
                raise OSError(f"symbolic link to {real.name!r} outside the watched folder (not followed)")
            path = real
        try:
            return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OSError("symbolic link (not followed; set follow_symlinks = true to follow links that "
                              "stay inside the folder)") from None
            raise OSError(f"cannot read file: {exc.strerror or exc}") from None

    def read_file(self, path: Path) -> bytes:
        """The file's bytes: a regular file only, its size checked on the open descriptor, at most
        `max_file_bytes + 1` bytes read. Raises `OSError` with a one-line reason."""
        with os.fdopen(self._open(path), "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise OSError("not a regular file")
            too_big = f"over the source's max_file_bytes ({self.max_file_bytes})"
            if st.st_size > self.max_file_bytes:
                raise OSError(f"file is {st.st_size} bytes, {too_big}")
            # read what fstat promised (a buffer of `max_file_bytes` for every file would cost a large allocation
            # per input); a file that grew meanwhile is read on, to at most one byte past the limit
            data = fh.read(st.st_size + 1)
            if len(data) > st.st_size:
                data += fh.read(self.max_file_bytes + 1 - len(data))
            if len(data) > self.max_file_bytes:
                raise OSError(f"file grew while it was read, {too_big}")
            return data

    def _read(self, name: str, st: os.stat_result) -> Sample:
        path = self.path / name
        fingerprint = f"{st.st_size}:{st.st_mtime_ns}"
        data: bytes | None = None
        error: str | None = None
        try:
            data = self.read_file(path)
        except OSError as exc:
            error = str(exc)
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
                    try:
                        self.committed(probe)  # stored before a crash cut the move/delete short: finish it now
                    except OSError as exc:
                        log.warning("event=processed_policy_failed error=%r", str(exc))
                    continue
                yield self._read(name, st)
            yielded &= present  # forget files that are gone, so memory stays bounded over months
            if once:
                return
            stop.wait(self.poll_interval)


@register("directory")
def make_directory_source(options: Options, spec: Any = None) -> DirectorySource:
    return DirectorySource(options)
