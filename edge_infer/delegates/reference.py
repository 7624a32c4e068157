"""`delegate = "reference"`: TFLite's reference kernels — slow and simple, for checking a suspected kernel bug
against the optimized ones."""

from __future__ import annotations

from edge_infer.delegates import register
from edge_infer.delegates.builtin import Builtin


class Reference(Builtin):
    name = "reference"
    resolver = "BUILTIN_REF"


@register("reference")
def make() -> Reference:
    return Reference()
