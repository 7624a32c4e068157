"""Model variants in a bundle. The bundle's own model (the bytes before the archive) is the CPU variant, `cpu`;
another variant is the same model compiled for an accelerator — `edgetpu_compiler`'s output, say — kept in the
archive as `variants/<name>.tflite` and listed in the manifest:

    "variants": [{"name": "edgetpu", "delegate": "edgetpu", "sha256": "…", "size": 123456}]

The device runs the variant made for its `[model] delegate` (the CPU model when there is none, and whenever the
accelerator is lost). A variant keeps the CPU model's input/output contract — the same tensors in the same order,
with the same shapes, types and quantization — so preprocessing, postprocessing and golden inputs hold for
both; `edge-convert add-variant` checks it before adding one (`contract_problem`)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from edge_infer.delegates import CPU, NAMES

CPU_VARIANT = "cpu"
ACCELERATORS = tuple(n for n in NAMES if n not in CPU)
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


class VariantError(ValueError):
    """A variant entry or member that does not hold; one line naming the variant."""


@dataclass(frozen=True)
class Variant:
    """One accelerator variant: its name, the delegate it is compiled for, and its model bytes."""

    name: str
    delegate: str
    model_bytes: bytes = field(repr=False)


def member_name(name: str) -> str:
    """The archive member that holds variant `name`."""
    return f"variants/{name}.tflite"


def entry(name: str, delegate: str, model_bytes: bytes) -> dict[str, Any]:
    """The manifest's `variants` entry for these bytes."""
    return {"name": name, "delegate": delegate, "sha256": hashlib.sha256(model_bytes).hexdigest(),
            "size": len(model_bytes)}


def check_entry(item: Any, index: int) -> tuple[str, str]:
    """(name, delegate) of one manifest entry, or `VariantError`."""
    if not isinstance(item, dict):
        raise VariantError(f"variants[{index}]: expected a table with name, delegate, sha256 and size")
    name, delegate = item.get("name"), item.get("delegate")
    if not isinstance(name, str) or not NAME.match(name) or name == CPU_VARIANT:
        raise VariantError(f"variants[{index}].name: {name!r} is not a variant name (lower-case letters, digits, "
                           f"'-' and '_', at most 32; '{CPU_VARIANT}' is the bundle's own model)")
    if delegate not in ACCELERATORS:
        raise VariantError(f"variants[{index}] ({name}): delegate {delegate!r} is not an accelerator "
                           f"(one of: {', '.join(ACCELERATORS)})")
    if not isinstance(item.get("sha256"), str) or not isinstance(item.get("size"), int):
        raise VariantError(f"variants[{index}] ({name}): sha256 (hex) and size (bytes) are required")
    return name, delegate


def read_variants(doc: dict[str, Any], members: dict[str, bytes] | Any) -> dict[str, Variant]:
    """The manifest's variants with their bytes, verified (size and sha256). `members` maps archive member names
    to bytes (or is anything with `read(name)`, such as an open `ZipFile`). Raises `VariantError`."""
    listed = doc.get("variants", [])
    if not isinstance(listed, list):
        raise VariantError("variants: expected a list")
    found: dict[str, Variant] = {}
    for index, item in enumerate(listed):
        name, delegate = check_entry(item, index)
        if name in found:
            raise VariantError(f"variants: {name!r} is listed twice")
        try:
            data = members[member_name(name)] if isinstance(members, dict) else members.read(member_name(name))
        except KeyError:
            raise VariantError(f"variant {name!r}: {member_name(name)} is missing from the archive") from None
        if len(data) != item["size"] or hashlib.sha256(data).hexdigest() != item["sha256"]:
            raise VariantError(f"variant {name!r}: its bytes do not match the manifest (corrupted or tampered)")
        found[name] = Variant(name, delegate, data)
    return found


def pick(variants: dict[str, Variant], delegate: str) -> Variant | None:
    """The variant compiled for `delegate` (the first listed), or None: the bundle's own model."""
    return next((v for v in variants.values() if v.delegate == delegate), None)


def contract_problem(expected: tuple[list[Any], list[Any]], got: tuple[list[Any], list[Any]]) -> str | None:
    """Why a variant's (inputs, outputs) — `TensorInfo` lists — break the CPU model's, or None when they hold."""
    for side, mine, theirs in (("input", expected[0], got[0]), ("output", expected[1], got[1])):
        if len(mine) != len(theirs):
            return f"it has {len(theirs)} {side}s, the bundle's model {len(mine)}"
        for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
            if a.contract() != b.contract():
                return (f"{side} {i} is {_describe(b.contract())}, the bundle's model's is {_describe(a.contract())} "
                        f"(compile the bundle's own model: edgetpu_compiler keeps its inputs and outputs)")
    return None


def _describe(contract: tuple[tuple[int, ...], str, float, int]) -> str:
    shape, dtype, scale, zero_point = contract
    quant = f", scale {scale:g} zero point {zero_point}" if scale else ""
    return f"{dtype} {list(shape)}{quant}"
