"""Update bundles for the update tests, made with the same library calls `edge-convert --golden/--sign` uses:
golden inputs from the shipped held-out digits, the bundle's own results as expectations, an Ed25519 signature."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_infer.bundle import MANIFEST_NAME, BundleParts, load_bundle, read_parts, write_parts
from edge_infer.golden import GoldenInput, build_golden
from edge_infer.model import Model
from edge_infer.signing import SIGNATURE_NAME, load_private_key, sign_bundle
from tests.conftest import DIGITS_TEST


def golden_digits(per_class: int = 2) -> list[GoldenInput]:
    """`per_class` held-out digits of every class, as the files they are."""
    inputs = []
    for folder in sorted(p for p in DIGITS_TEST.iterdir() if p.is_dir()):
        for path in sorted(folder.glob("*.png"))[:per_class]:
            inputs.append(GoldenInput(f"golden/{folder.name}-{path.name}", data=path.read_bytes(), label=folder.name))
    return inputs


def make_update(src: Path, out: Path, key: Path | None, version: str = "2.0.0",
                edit: Callable[[dict[str, Any]], None] | None = None, expect_from_edited: bool = False) -> Path:
    """`src`'s model with its manifest changed by `edit`, golden inputs with expectations from `src` as it was
    (or, with `expect_from_edited`, from the edited bundle: self-consistent), signed with `key` (None: unsigned)."""
    parts = read_parts(src)
    members = {k: v for k, v in parts.members.items() if k != SIGNATURE_NAME and not k.startswith("golden/")}
    doc = json.loads(members[MANIFEST_NAME])
    doc["version"] = version
    if edit is not None:
        edit(doc)
    members[MANIFEST_NAME] = json.dumps(doc, indent=2, sort_keys=True).encode()
    write_parts(out, BundleParts(parts.model_bytes, members))
    members.update(build_golden(Model(load_bundle(out if expect_from_edited else src)), golden_digits()))
    write_parts(out, BundleParts(parts.model_bytes, members))
    if key is not None:
        sign_bundle(out, load_private_key(key))
    return out


def flip_byte(path: Path, offset: int) -> Path:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    return path
