"""Print the requirements edge-infer declares in setup.cfg, evaluated for a given machine.

    python tests/requirements_for.py armv7l test   # what a 32-bit Raspberry Pi installs, plus the test extra

Lets the test script build the tflite-runtime leg from the same declarations a Pi resolves, on any host.
"""

from __future__ import annotations

import configparser
import sys
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # pip always vendors it
    from pip._vendor.packaging.requirements import Requirement


def requirements(machine: str, extras: list[str]) -> list[str]:
    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parent.parent / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines()
    for extra in extras:
        lines += cfg["options.extras_require"][extra].splitlines()
    out = []
    for line in (x.strip() for x in lines):
        if not line or line.startswith("#"):
            continue
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"platform_machine": machine, "extra": ""}):
            req.marker = None
            out.append(str(req))
    return out


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1], sys.argv[2:])))
