"""One-file model bundles: a TFLite flatbuffer with a zip archive (manifest.json) appended.

TFLite runtimes ignore the trailing bytes, so a bundle still loads as a plain model in any TFLite tool;
Python's `zipfile` finds the archive at the end of the file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_infer.manifest import FORMAT_NAME, FORMAT_VERSION, Manifest, ManifestError, parse_manifest
from edge_infer.variants import Variant, VariantError, read_variants

MANIFEST_NAME = "manifest.json"
TFLITE_IDENTIFIER = b"TFL3"
# Archive limits, checked from the zip's central directory before any member is read (a zip bomb is refused
# unread): members, their total uncompressed size, and the compression ratio of any member over 1 MiB.
MAX_MEMBERS = 1024
MAX_ARCHIVE_BYTES = 256 * 1024 * 1024
MAX_RATIO = 100
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


class BundleError(Exception):
    """A bundle the device cannot honour. `str()` is one line naming the file and the problem."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle: the model bytes (without the archive), its manifest and its accelerator
    variants (`edge_infer.variants`; the model bytes are the CPU variant)."""

    path: Path
    model_bytes: bytes
    manifest: Manifest
    variants: dict[str, Variant] = field(default_factory=dict, repr=False)

    @property
    def sha256(self) -> str:
        return self.manifest.model_sha256


def model_digest(model_bytes: bytes) -> str:
    """The sha256 hex digest that identifies a model everywhere (manifest, messages, msg_id)."""
    return hashlib.sha256(model_bytes).hexdigest()


def build_manifest_doc(model_bytes: bytes, **fields: Any) -> dict[str, Any]:
    """Complete a manifest document with the format header and the model's size and digest."""
    doc: dict[str, Any] = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION}
    doc.update(fields)
    model = dict(doc.get("model", {}))
    model.update({"sha256": model_digest(model_bytes), "size": len(model_bytes)})
    doc["model"] = model
    return doc


def write_bundle(path: Path | str, model_bytes: bytes, manifest_doc: dict[str, Any],
                 extra: dict[str, bytes] | None = None) -> Path:
    """Validate the manifest and write model + archive (manifest, then `extra` members such as the golden
    inputs) atomically."""
    path = Path(path)
    if model_bytes[4:8] != TFLITE_IDENTIFIER:
        raise BundleError(path, "model bytes are not a TFLite flatbuffer (no TFL3 identifier)")
    try:
        manifest = parse_manifest(manifest_doc)
    except ManifestError as exc:
        raise BundleError(path, f"invalid manifest: {exc}") from None
    if manifest.model_sha256 != model_digest(model_bytes) or manifest.model_size != len(model_bytes):
        raise BundleError(path, "manifest model.sha256/model.size do not describe these model bytes")
    members = {MANIFEST_NAME: (json.dumps(manifest_doc, indent=2, sort_keys=True) + "\n").encode()}
    members.update(extra or {})
    return write_parts(path, BundleParts(model_bytes, members))


@dataclass(frozen=True)
class BundleParts:
    """A bundle file split into the model bytes and its archive members (name → bytes)."""

    model_bytes: bytes
    members: dict[str, bytes]


def write_parts(path: Path | str, parts: BundleParts) -> Path:
    """Write model bytes + archive atomically (temp file, fsync, rename)."""
    path = Path(path)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in parts.members.items():
            zf.writestr(name, data)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(parts.model_bytes)
        fh.write(archive.getvalue())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def check_archive(zf: zipfile.ZipFile, path: Path | str, max_bytes: int = MAX_ARCHIVE_BYTES) -> None:
    """Refuse an archive whose central directory promises too much (`BundleError`); reads no member. The
    sizes it checks also bound what reading a member can produce (`zipfile` stops at the declared size)."""
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise BundleError(path, f"archive has {len(infos)} members (at most {MAX_MEMBERS})")
    total = sum(i.file_size for i in infos)
    if total > max_bytes:
        raise BundleError(path, f"archive unpacks to {total} bytes (at most {max_bytes})")
    for info in infos:
        if info.file_size > 1024 * 1024 and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise BundleError(path, f"archive member {info.filename[:80]!r} is compressed "
                                    f"{info.file_size // max(info.compress_size, 1)}:1 (at most {MAX_RATIO}:1)")


def model_size(doc: dict[str, Any], path: Path | str) -> int:
    """The manifest's `model.size` (the length of the model bytes at the start of the file)."""
    try:
        return int(doc["model"]["size"])
    except (KeyError, TypeError, ValueError):
        raise BundleError(path, "manifest has no model.size") from None


def read_parts(path: Path | str) -> BundleParts:
    """Split a bundle into model bytes and archive members (the model's size is the manifest's)."""
    data, doc = read_manifest_doc(path)
    size = model_size(doc, path)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:  # its limits were checked by read_manifest_doc
            members = {name: zf.read(name) for name in zf.namelist()}
    except BundleError:
        raise
    except Exception as exc:  # a damaged archive is a refused bundle, never a crash
        raise BundleError(path, f"corrupt bundle archive: {exc}") from None
    return BundleParts(data[:size], members)


def read_manifest_doc(path: Path | str) -> tuple[bytes, dict[str, Any]]:
    """Return the whole file's bytes and the decoded manifest document, without validating it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(path, "bundle not found") from None
    except IsADirectoryError:
        raise BundleError(path, "is a directory, expected a bundle file") from None
    except OSError as exc:
        raise BundleError(path, f"cannot read bundle: {exc.strerror}") from None
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        raise BundleError(path, "not a TFLite model (no TFL3 identifier); the file is corrupt or not a model")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            raw = read_manifest_member(zf, path)
    except BundleError:
        raise
    except zipfile.BadZipFile:
        raise BundleError(
            path,
            "no manifest archive found: a plain .tflite model or a truncated bundle "
            "(make bundles with edge-convert)",
        ) from None
    except Exception as exc:  # zlib.error, EOFError, ...: a damaged archive must never crash the caller
        raise BundleError(path, f"corrupt bundle archive: {exc}") from None
    if raw is None:
        raise BundleError(path, f"archive has no {MANIFEST_NAME}")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(path, f"{MANIFEST_NAME} is not valid JSON: {exc}") from None
    return data, doc


def read_manifest_member(zf: zipfile.ZipFile, path: Path | str) -> bytes | None:
    """The raw `manifest.json` of an archive (None if it has none), after the archive's limits are checked."""
    check_archive(zf, path)
    try:
        info = zf.getinfo(MANIFEST_NAME)
    except KeyError:
        return None
    if info.file_size > MAX_MANIFEST_BYTES:
        raise BundleError(path, f"{MANIFEST_NAME} is {info.file_size} bytes (at most {MAX_MANIFEST_BYTES})")
    return zf.read(info)


def load_bundle(path: Path | str) -> Bundle:
    """Read and verify a bundle: manifest valid, model bytes intact (size and sha256)."""
    path = Path(path)
    data, doc = read_manifest_doc(path)
    try:
        manifest = parse_manifest(doc)
    except ManifestError as exc:
        raise BundleError(path, f"invalid manifest: {exc}") from None
    if manifest.model_size > len(data):
        raise BundleError(path, "truncated: the file is shorter than the model the manifest describes")
    model_bytes = data[: manifest.model_size]
    if model_digest(model_bytes) != manifest.model_sha256:
        raise BundleError(path, "model bytes do not match the manifest's sha256 (corrupted or tampered file)")
    variants: dict[str, Variant] = {}
    if doc.get("variants"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:  # its limits were checked by read_manifest_doc
                variants = read_variants(doc, zf)
        except VariantError as exc:
            raise BundleError(path, str(exc)) from None
        except Exception as exc:  # zlib.error, EOFError, ...: a damaged archive is a refused bundle
            raise BundleError(path, f"corrupt bundle archive: {exc}") from None
    return Bundle(path=path, model_bytes=model_bytes, manifest=manifest, variants=variants)
