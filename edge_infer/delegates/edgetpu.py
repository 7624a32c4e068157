"""`delegate = "edgetpu"`: a Coral Edge TPU (USB or M.2) through `libedgetpu.so.1` (apt: libedgetpu1-std).

    [model]
    delegate = "edgetpu"
    [model.delegate_options]
    device = "usb"          # optional: "usb", "usb:0", "pci:0"; default: the first one found

The model must be compiled for the Edge TPU (`edgetpu_compiler`, a full-integer model in); a plain model runs,
but entirely on the CPU.
"""

from __future__ import annotations

import ctypes.util
from pathlib import Path
from typing import Any

from edge_infer.delegates import DelegateError, Grants, load_library, register, unknown_options

LIBRARY = "libedgetpu.so.1"
# Coral USB: Global Unichip before its firmware is loaded, Google once it is (the id changes at first use)
USB_IDS = {("1a6e", "089a"): "Coral USB Accelerator (firmware not loaded yet)",
           ("18d1", "9302"): "Coral USB Accelerator"}


def found(sys_root: Path = Path("/sys"), dev_root: Path = Path("/dev")) -> list[str]:
    """The Edge TPUs this machine has, one description each (`check` lists them): Coral USB accelerators by
    their USB ids, M.2/PCIe ones by their `/dev/apex_N` node; and whether the library that drives them is
    installed."""
    seen = []
    for device in sorted((sys_root / "bus" / "usb" / "devices").glob("*")):
        try:
            ids = ((device / "idVendor").read_text().strip(), (device / "idProduct").read_text().strip())
        except OSError:
            continue
        if ids in USB_IDS:
            seen.append(f"{USB_IDS[ids]} on USB {device.name}")
    seen += [f"Coral M.2/PCIe Edge TPU {node}" for node in sorted(dev_root.glob("apex_*"))]
    if seen and not ctypes.util.find_library("edgetpu"):
        seen.append(f"{LIBRARY} is not installed (apt install libedgetpu1-std)")
    return seen


class EdgeTpu:
    name = "edgetpu"

    def check(self, options: dict[str, Any]) -> None:
        unknown_options(self.name, options, ("device",))
        device = options.get("device")
        if device is not None and (not isinstance(device, str) or not device.startswith(("usb", "pci"))):
            raise DelegateError(f"[model.delegate_options].device: expected \"usb\", \"usb:N\" or \"pci:N\", "
                                f"got {device!r}")

    def grants(self, options: dict[str, Any]) -> Grants:
        """The USB accelerator is a USB device node (`/dev/bus/usb/…`, group plugdev by Coral's udev rule) found
        by libusb, which watches for hot-plug over netlink; the M.2/PCIe one is `/dev/apex_N` (group apex). Without
        a `device` option, both — the library takes the first it finds."""
        device = str(options.get("device") or "")
        usb = Grants(("char-usb_device",), ("plugdev",), ("AF_NETLINK",))
        pci_index = device.partition(":")[2] or "0"
        pci = Grants((f"/dev/apex_{pci_index}",), ("apex",))
        if device.startswith("usb"):
            return usb
        if device.startswith("pci"):
            return pci
        return Grants((*usb.devices, *pci.devices), (*usb.groups, *pci.groups), usb.families)

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
