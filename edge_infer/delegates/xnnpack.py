"""`delegate = "xnnpack"` (the default): the runtime's own choice of kernels — XNNPACK where it applies."""

from __future__ import annotations

from typing import Any

from edge_infer.delegates import register, unknown_options


class Xnnpack:
    name = "xnnpack"

    def check(self, options: dict[str, Any]) -> None:
        unknown_options(self.name, options, ())

    def interpreter_kwargs(self, module: Any, options: dict[str, Any]) -> dict[str, Any]:
        return {}


@register("xnnpack")
def make() -> Xnnpack:
    return Xnnpack()
