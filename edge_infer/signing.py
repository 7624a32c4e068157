"""Ed25519 signatures for bundles and remote commands (the `cryptography` package, imported only when used).

A bundle's signature is one more archive member, `signature.json`: the sha256 of the model bytes and of every
other archive member (manifest, golden inputs…), signed as canonical JSON. Verification recomputes all of
them, so a change to any byte the device uses — or an added or removed member — is refused as tampered.

Keys are the standard PEM files (`edge-infer keygen` writes a pair); a public key may also be given as the
base64 of its 32 raw bytes. A key's id is the first 16 hex digits of the sha256 of its raw public bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_infer.bundle import (
    MAX_ARCHIVE_BYTES,
    TFLITE_IDENTIFIER,
    BundleError,
    BundleParts,
    check_archive,
    model_size,
    read_manifest_member,
    read_parts,
    write_parts,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNATURE_NAME = "signature.json"
ALGORITHM = "ed25519"


class SignatureError(Exception):
    """A bundle or command whose signature does not check out; `reason` is one of: unsigned, tampered,
    unknown_key, bad_signature, unreadable."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- keys -----------------------------------------------------------------------------------------------------
def generate_keypair(stem: Path | str) -> tuple[Path, Path]:
    """Write `<stem>.key` (PEM private key, mode 0600) and `<stem>.pub` (PEM public key); refuse to overwrite."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    stem = Path(stem)
    private, public = stem.with_name(stem.name + ".key"), stem.with_name(stem.name + ".pub")
    for path in (private, public):
        if path.exists():
            raise FileExistsError(f"{path}: already exists (a fleet key is not overwritten)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the signing key: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 key (make one with: edge-infer keygen --out fleet)")
    return key


def load_public_key(source: Path | str) -> Ed25519PublicKey:
    """A PEM public key file, or the base64 of the 32 raw key bytes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    text = str(source)
    path = Path(text)
    if path.exists():
        try:
            key = serialization.load_pem_public_key(path.read_bytes())
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: not a PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{path}: not an Ed25519 public key")
        return key
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ValueError(f"{text}: neither a public key file nor the base64 of a 32-byte Ed25519 public key")
    return Ed25519PublicKey.from_public_bytes(raw)


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return _sha256(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))[:16]


def _verify(keys: list[Ed25519PublicKey], signer: str, signature: bytes, message: bytes) -> str:
    from cryptography.exceptions import InvalidSignature

    known = {key_id(k): k for k in keys}
    key = known.get(signer)
    if key is None:
        named = signer if len(signer) == 16 and all(c in "0123456789abcdef" for c in signer) else "(malformed id)"
        raise SignatureError("unknown_key", f"signed with key {named}, which is not one of the configured keys "
                                            f"({', '.join(sorted(known)) or 'none'})")
    try:
        key.verify(signature, message)
    except InvalidSignature:
        raise SignatureError("bad_signature", f"the signature does not verify with key {signer}") from None
    return signer


# ---- bundles --------------------------------------------------------------------------------------------------
def _signed_body(parts: BundleParts) -> dict[str, Any]:
    files = {name: _sha256(data) for name, data in sorted(parts.members.items()) if name != SIGNATURE_NAME}
    return {"model_sha256": _sha256(parts.model_bytes), "files": files}


def sign_bundle(path: Path | str, key: Ed25519PrivateKey) -> str:
    """Sign a bundle in place (replacing any earlier signature); returns the signing key's id."""
    parts = read_parts(path)
    members = {k: v for k, v in parts.members.items() if k != SIGNATURE_NAME}
    body = _signed_body(BundleParts(parts.model_bytes, members))
    doc = {"algorithm": ALGORITHM, "key_id": key_id(key), "signed": body,
           "signature": base64.b64encode(key.sign(_canonical(body))).decode()}
    members[SIGNATURE_NAME] = json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"
    write_parts(path, BundleParts(parts.model_bytes, members))
    return doc["key_id"]


def verify_bundle(path: Path | str, keys: list[Ed25519PublicKey], max_bytes: int = MAX_ARCHIVE_BYTES) -> str:
    """Check a bundle's signature against the configured public keys; returns the signer's key id or raises
    `SignatureError` (unsigned, tampered, unknown_key, bad_signature, unreadable). Streaming: the archive's
    limits (`max_bytes` unpacked) are checked from its central directory first, the signature's presence next,
    and every member is hashed as it is read, so memory stays flat whatever the file holds."""
    try:
        with open(path, "rb") as fh:
            if fh.read(8)[4:8] != TFLITE_IDENTIFIER:
                raise BundleError(path, "not a TFLite model (no TFL3 identifier)")
            fh.seek(0)
            with zipfile.ZipFile(fh) as zf:
                check_archive(zf, path, max_bytes)
                raw = _signature_member(zf, path)
                manifest = read_manifest_member(zf, path)
                if manifest is None:
                    raise BundleError(path, "archive has no manifest.json")
                size = model_size(json.loads(manifest), path)
                files = {name: hashlib.file_digest(zf.open(name), "sha256").hexdigest()
                         for name in sorted(zf.namelist()) if name != SIGNATURE_NAME}
            fh.seek(0)
            model = hashlib.sha256()
            left = size
            while left > 0 and (block := fh.read(min(left, 1 << 20))):
                model.update(block)
                left -= len(block)
    except SignatureError:
        raise
    except BundleError as exc:
        raise SignatureError("unreadable", exc.problem) from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise SignatureError("unreadable", f"{type(exc).__name__}: {exc}"[:200]) from None
    return _check_signature(raw, {"model_sha256": model.hexdigest(), "files": files}, keys)


def _signature_member(zf: zipfile.ZipFile, path: Path | str) -> bytes:
    try:
        info = zf.getinfo(SIGNATURE_NAME)
    except KeyError:
        raise SignatureError("unsigned", f"the bundle has no {SIGNATURE_NAME} (sign it: edge-convert --sign KEY, "
                                         "or edge-infer sign BUNDLE --key KEY)") from None
    if info.file_size > 64 * 1024:
        raise BundleError(path, f"{SIGNATURE_NAME} is {info.file_size} bytes")
    return zf.read(info)


def _check_signature(raw: bytes, actual: dict[str, Any], keys: list[Ed25519PublicKey]) -> str:
    try:
        doc = json.loads(raw)
        signed, signer = doc["signed"], str(doc["key_id"])
        signature = base64.b64decode(doc["signature"], validate=True)
        if doc.get("algorithm") != ALGORITHM:
            raise ValueError("unknown algorithm")
        if not isinstance(signed, dict):
            raise TypeError("signed is not an object")
    except (ValueError, KeyError, TypeError) as exc:
        raise SignatureError("unreadable", f"{SIGNATURE_NAME} is malformed: {type(exc).__name__}") from None
    if signed != actual:  # checked before the signature: says *what* changed
        theirs = signed.get("files") if isinstance(signed.get("files"), dict) else {}
        changed = [n[:80] for n in sorted(set(actual["files"]) | set(theirs))
                   if actual["files"].get(n) != theirs.get(n)][:20]
        if actual["model_sha256"] != signed.get("model_sha256"):
            changed.insert(0, "model bytes")
        raise SignatureError("tampered", f"changed since it was signed: {', '.join(changed) or 'signed body'}")
    return _verify(keys, signer, signature, _canonical(signed))


# ---- commands -------------------------------------------------------------------------------------------------
def sign_command(body: dict[str, Any], key: Ed25519PrivateKey) -> bytes:
    """A signed command payload: {"body": <canonical JSON text>, "key_id": …, "signature": base64}."""
    text = _canonical(body)
    return _canonical({"body": text.decode(), "key_id": key_id(key),
                       "signature": base64.b64encode(key.sign(text)).decode()})


def verify_command(payload: dict[str, Any], keys: list[Ed25519PublicKey]) -> tuple[dict[str, Any], str]:
    """The command body of a signed payload and the signer's key id, or `SignatureError`."""
    if "signature" not in payload or "body" not in payload:
        raise SignatureError("unsigned", "commands must be signed with the fleet key ([commands] auth = \"signed\")")
    try:
        text = str(payload["body"]).encode()
        signature = base64.b64decode(str(payload["signature"]), validate=True)
        signer = str(payload.get("key_id", ""))
    except ValueError as exc:
        raise SignatureError("unreadable", f"malformed signature: {exc}") from None
    _verify(keys, signer, signature, text)
    try:
        body = json.loads(text)  # signed by a fleet key: trusted not to be hostile JSON
    except json.JSONDecodeError as exc:
        raise SignatureError("unreadable", f"signed body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise SignatureError("unreadable", "signed body is not a JSON object")
    return body, signer
