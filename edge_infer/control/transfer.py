"""A bundle arriving over MQTT (`cmd/update-model`), authenticated before a byte of it is written.

1. A **signed header** (a signed command, see `edge_infer.signing`) opens a transfer: its args name the transfer
   id, the bundle's size and sha256, the chunk size and the sha256 of every chunk. It passes the same replay
   checks as any signed command, and replaces a transfer in progress only if it was issued later.
2. **Chunks** `{"transfer", "index", "data" (base64)}` are written at `index × chunk_bytes` into
   `<slots_dir>/incoming.part` only if their sha256 is the one the header listed: a forged or stray chunk is
   refused without touching the file, so no one without the fleet key can disrupt a transfer or fill the disk.
3. When every chunk is in and the file's sha256 is the header's, it is handed to the updater.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRANSFER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
SHA256 = re.compile(r"[0-9a-f]{64}")
MIN_CHUNK_BYTES = 1024


class TransferError(ValueError):
    """A header or chunk that does not fit; the message is one line and echoes nothing unchecked."""


@dataclass(frozen=True)
class Header:
    transfer: str
    size: int
    sha256: str
    chunk_bytes: int
    chunks: tuple[str, ...]  # sha256 of each chunk
    issued: float

    @classmethod
    def parse(cls, args: Any, issued: Any, max_bundle_bytes: int, max_chunk_bytes: int) -> Header:
        if not isinstance(args, dict):
            raise TransferError("the header's args must be a JSON object")
        if isinstance(issued, bool) or not isinstance(issued, int | float) or not math.isfinite(issued):
            raise TransferError("issued: expected unix seconds")
        transfer, size, sha = args.get("transfer"), args.get("size"), args.get("sha256")
        chunk_bytes, chunks = args.get("chunk_bytes"), args.get("chunks")
        if not isinstance(transfer, str) or not TRANSFER_ID.fullmatch(transfer):
            raise TransferError("transfer: expected 1-64 letters, digits, '-' or '_'")
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= max_bundle_bytes:
            raise TransferError(f"size: expected 1 to {max_bundle_bytes} bytes ([update].max_bundle_bytes)")
        if not isinstance(sha, str) or not SHA256.fullmatch(sha):
            raise TransferError("sha256: expected 64 lower-case hex digits")
        if not isinstance(chunk_bytes, int) or not MIN_CHUNK_BYTES <= chunk_bytes <= max_chunk_bytes:
            raise TransferError(f"chunk_bytes: expected {MIN_CHUNK_BYTES} to {max_chunk_bytes}")
        count = -(-size // chunk_bytes)
        if (not isinstance(chunks, list) or len(chunks) != count
                or not all(isinstance(c, str) and SHA256.fullmatch(c) for c in chunks)):
            raise TransferError(f"chunks: expected the sha256 of each of the {count} chunks")
        return cls(transfer, size, sha, chunk_bytes, tuple(chunks), float(issued))


@dataclass
class Transfer:
    header: Header
    path: Path
    started: float = field(default_factory=time.monotonic)
    last_chunk: float = field(default_factory=time.monotonic)
    received: set[int] = field(default_factory=set)

    @classmethod
    def begin(cls, header: Header, folder: Path) -> Transfer:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "incoming.part"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        return cls(header, path)

    @property
    def id(self) -> str:
        return self.header.transfer

    def add(self, chunk: dict[str, Any]) -> bool:
        """Write one chunk the header vouches for; True once every chunk is in. Raises `TransferError`."""
        h = self.header
        index, data = chunk.get("index"), chunk.get("data")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(h.chunks):
            raise TransferError(f"index: expected 0 to {len(h.chunks) - 1}")
        if not isinstance(data, str) or len(data) > 4 * (h.chunk_bytes // 3 + 1):
            raise TransferError(f"data: expected base64 of at most {h.chunk_bytes} bytes")
        try:
            raw = base64.b64decode(data, validate=True)
        except ValueError:
            raise TransferError("data: not base64") from None
        if hashlib.sha256(raw).hexdigest() != h.chunks[index]:
            raise TransferError(f"chunk {index} is not the one the signed header lists")
        with open(self.path, "r+b") as fh:
            fh.seek(index * h.chunk_bytes)
            fh.write(raw)
        self.received.add(index)
        self.last_chunk = time.monotonic()
        return len(self.received) == len(h.chunks)

    def finish(self, incoming: Path) -> Path:
        """Check the whole file against the header and move it into the incoming folder."""
        with open(self.path, "rb") as fh:  # in chunks: a bundle may be tens of MB on a 512 MB board
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
            os.fsync(fh.fileno())
        if digest != self.header.sha256 or self.path.stat().st_size != self.header.size:
            self.path.unlink(missing_ok=True)
            raise TransferError("the assembled bundle is not the one the signed header describes")
        incoming.mkdir(parents=True, exist_ok=True)
        target = incoming / f"mqtt-{self.id}.tflite"
        shutil.move(str(self.path), target)
        return target

    def abandon(self) -> None:
        self.path.unlink(missing_ok=True)


def header_args(bundle: Path, chunk_bytes: int, transfer: str) -> tuple[dict[str, Any], list[bytes]]:
    """The operator's side: a bundle's header args and its chunks' raw bytes."""
    data = bundle.read_bytes()
    parts = [data[i:i + chunk_bytes] for i in range(0, len(data), chunk_bytes)] or [b""]
    return ({"transfer": transfer, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
             "chunk_bytes": chunk_bytes, "chunks": [hashlib.sha256(p).hexdigest() for p in parts]}, parts)
