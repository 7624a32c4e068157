"""`delegate = "builtin"`: the built-in optimized kernels, without the default delegate (XNNPACK)."""

from __future__ import annotations

from typing import Any

from edge_infer.delegates import register, unknown_options


class Builtin:
    name = "builtin"
    resolver = "BUILTIN_WITHOUT_DEFAULT_DELEGATES"

    def check(self, options: dict[str, Any]) -> None:
        unknown_options(self.name, options, ())

    def interpreter_kwargs(self, module: Any, options: dict[str, Any]) -> dict[str, Any]:
        return {"experimental_op_resolver_type": getattr(module.OpResolverType, self.resolver)}


@register("builtin")
def make() -> Builtin:
    return Builtin()
