"""`delegate = "external"`: any TFLite delegate library, loaded with the runtime's `load_delegate`.

    [model]
    delegate = "external"
    [model.delegate_options]
    library = "/usr/lib/libarmnnDelegate.so"     # required
    options = { backends = "CpuAcc,CpuRef" }      # passed to the library as strings
"""

from __future__ import annotations

from typing import Any

from edge_infer.delegates import DelegateError, load_library, register, unknown_options


class External:
    name = "external"

    def check(self, options: dict[str, Any]) -> None:
        unknown_options(self.name, options, ("library", "options"))
        if not isinstance(options.get("library"), str) or not options["library"]:
            raise DelegateError("[model.delegate_options].library: the delegate library's path is required")
        if not isinstance(options.get("options", {}), dict):
            raise DelegateError("[model.delegate_options].options: expected a table of strings")

    def interpreter_kwargs(self, module: Any, options: dict[str, Any]) -> dict[str, Any]:
        library = options["library"]
        settings = {str(k): str(v) for k, v in options.get("options", {}).items()}
        try:
            delegate = load_library(module, library, settings)
        except DelegateError as exc:
            raise DelegateError(f"delegate library {library} cannot be loaded: {exc}") from None
        return {"experimental_delegates": [delegate]}


@register("external")
def make() -> External:
    return External()
