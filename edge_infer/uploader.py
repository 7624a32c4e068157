"""Upload kept inputs (uncertain and rejected captures) over MQTT when the link is idle: results go first.

Each file goes out as chunks on `{prefix}/{device_id}/captures`, QoS 1, JSON with base64 data:
`capture` (id, kind, group, file, sha256, size, chunk, chunks) and, on chunk 0, the sidecar `meta`.
A file counts as uploaded once the broker acknowledged every chunk; a file cut off by a disconnect is sent
again whole (subscribers reassemble by `capture.id` and drop repeated chunks). Files over `max_bytes` are not
uploaded (they stay in the folder for `edge-infer export`). Uploaded names are listed in `<root>/.uploaded`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_infer.clock import rfc3339, time_synced

log = logging.getLogger(__name__)
MARKER = ".uploaded"


@dataclass(frozen=True)
class CaptureFile:
    kind: str  # "uncertain" | "rejected"
    root: Path
    path: Path

    @property
    def name(self) -> str:
        return f"{self.path.parent.name}/{self.path.name}"


class CaptureUploader:
    """Finds capture files not yet uploaded and turns one at a time into chunk payloads."""

    def __init__(self, roots: dict[str, Path | str], envelope: Callable[[], dict[str, Any]], max_bytes: int,
                 chunk_bytes: int) -> None:
        self.roots = {kind: Path(root) for kind, root in roots.items()}
        self._envelope = envelope
        self.max_bytes = max_bytes
        self.chunk_bytes = chunk_bytes
        self._done: dict[str, set[str]] = {kind: self._read_marker(root) for kind, root in self.roots.items()}
        self._next_scan = 0.0
        self._queue: list[CaptureFile] = []
        self._lock = threading.Lock()
        self.uploaded = 0
        self.skipped_too_large = 0

    @staticmethod
    def _read_marker(root: Path) -> set[str]:
        """Names already sent, pruned of files the capture store has since evicted."""
        try:
            names = (root / MARKER).read_text(encoding="utf-8").split()
        except OSError:
            return set()
        kept = [n for n in names if (root / n).exists()]
        if len(kept) < len(names):
            (root / MARKER).write_text("".join(n + "\n" for n in kept), encoding="utf-8")
        return set(kept)

    def pending(self) -> bool:
        """Anything left to send (rescans the folders; any thread)."""
        with self._lock:
            self._next_scan = 0.0
            self._scan()
            return bool(self._queue)

    def _scan(self) -> None:
        now = time.monotonic()
        if self._queue or now < self._next_scan:
            return
        self._next_scan = now + 2.0
        self._queue = []
        for kind, root in self.roots.items():
            done = self._done[kind]
            for path in sorted(root.glob("*/*")):
                if path.suffix == ".json" or not path.is_file():
                    continue
                f = CaptureFile(kind, root, path)
                if f.name not in done:
                    self._queue.append(f)

    def next_file(self) -> tuple[CaptureFile, list[bytes]] | None:
        """The next file to send and its chunk payloads (None when there is nothing to upload)."""
        while True:
            with self._lock:
                self._scan()
                while self._queue and self._queue[0].name in self._done[self._queue[0].kind]:
                    self._queue.pop(0)
                if not self._queue:
                    return None
                f = self._queue.pop(0)
            try:
                data = f.path.read_bytes()
            except OSError:  # evicted by the capture store in the meantime
                continue
            if len(data) > self.max_bytes:
                self.skipped_too_large += 1
                self.mark_done(f, sent=False)
                continue
            return f, self._chunks(f, data)

    def _chunks(self, f: CaptureFile, data: bytes) -> list[bytes]:
        digest = hashlib.sha256(data).hexdigest()
        try:
            meta = json.loads(f.path.with_name(f.path.name + ".json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
        parts = [data[i:i + self.chunk_bytes] for i in range(0, len(data), self.chunk_bytes)] or [b""]
        payloads = []
        for i, part in enumerate(parts):
            doc = dict(self._envelope())
            doc.update(ts=rfc3339(time.time()), time_synced=time_synced(), capture={
                "id": digest[:32], "kind": f.kind, "group": f.path.parent.name, "file": f.path.name,
                "sha256": digest, "size": len(data), "chunk": i, "chunks": len(parts)},
                data=base64.b64encode(part).decode("ascii"))
            if i == 0:
                doc["meta"] = meta
            payloads.append(json.dumps(doc, separators=(",", ":")).encode())
        return payloads

    def mark_done(self, f: CaptureFile, sent: bool = True) -> None:
        """Every chunk acknowledged (or the file is too large to send): never send it again."""
        with self._lock:
            self._done[f.kind].add(f.name)
        try:
            with open(f.root / MARKER, "a", encoding="utf-8") as fh:
                fh.write(f.name + "\n")
        except OSError as exc:
            log.warning("event=upload_marker_failed root=%s error=%r", f.root, exc.strerror)
        self.uploaded += sent
