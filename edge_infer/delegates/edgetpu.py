"""`delegate = "edgetpu"`: a Coral Edge TPU (USB or M.2) through `libedgetpu.so.1` (apt: libedgetpu1-std).

    [model]
    delegate = "edgetpu"
    [model.delegate_options]
    device = "usb"          # optional: "usb", "usb:0", "pci:0"; default: the first one found

The model must be compiled for the Edge TPU (`edgetpu_compiler`, a full-integer model in); a plain model runs,
but entirely on the CPU.
"""

from __future__ import annotations

from typing import Any

from edge_infer.delegates import DelegateError, load_library, register, unknown_options

LIBRARY = "libedgetpu.so.1"


class EdgeTpu:
    name = "edgetpu"

    def check(self, options: dict[str, Any]) -> None:
        unknown_options(self.name, options, ("device",))
        device = options.get("device")
        if device is not None and (not isinstance(device, str) or not device.startswith(("usb", "pci"))):
            raise DelegateError(f"[model.delegate_options].device: expected \"usb\", \"usb:N\" or \"pci:N\", "
                                f"got {device!r}")

    def interpreter_kwargs(self, module: Any, options: dict[str, Any]) -> dict[str, Any]:
        settings = {"device": options["device"]} if options.get("device") else {}
        try:
            delegate = load_library(module, LIBRARY, settings)
        except DelegateError as exc:
            raise DelegateError(f"no Edge TPU: {LIBRARY} cannot be loaded or finds no device ({exc}); install "
                                "libedgetpu1-std and plug the accelerator in") from None
        return {"experimental_delegates": [delegate]}


@register("edgetpu")
def make() -> EdgeTpu:
    return EdgeTpu()
