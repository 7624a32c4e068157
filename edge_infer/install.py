"""Which of the README's install paths this Python is on, and what it lacks — one line each, with the command
that fixes it. `check` prints these first; `install-service` asks the service's own Python and refuses a venv
that could not run the daemon.

- **pip wheels** (64-bit Raspberry Pi OS, x86_64): numpy, Pillow and a TFLite runtime (ai-edge-litert) in the
  venv's own site-packages;
- **apt first** (32-bit Raspberry Pi OS): numpy, Pillow and cryptography from apt (`/usr/lib/python3/
  dist-packages`, seen through a `--system-site-packages` venv), tflite-runtime and the pure-Python rest from pip.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import sys
from importlib import metadata

from edge_infer.venv import APT_SITE, sees_system_site, venv_config

ARMV7 = ("armv7l", "armv6l")
APT_PACKAGES = {"numpy": "python3-numpy", "PIL": "python3-pil", "cryptography": "python3-cryptography"}
DISTRIBUTIONS = {"numpy": "numpy", "PIL": "pillow", "paho": "paho-mqtt", "cryptography": "cryptography",
                 "ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}
PIP = "/opt/edge-infer/bin/pip"  # the README's venv; the fix lines name the running one when it is a venv


def _origin(module: str) -> str | None:
    """Where `module` would be imported from ("apt", "pip" or "system"), or None when it is not installed."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    if spec.origin.startswith(str(APT_SITE)):
        return "apt"
    return "pip" if spec.origin.startswith(sys.prefix) and sys.prefix != sys.base_prefix else "system"


def _version(module: str) -> str:
    try:
        return metadata.version(DISTRIBUTIONS.get(module, module))
    except metadata.PackageNotFoundError:
        return "?"


def _pip() -> str:
    return f"{sys.prefix}/bin/pip" if venv_config() is not None else PIP


def runtime_fix(machine: str | None = None, version: tuple[int, int] | None = None) -> str:
    """The one command (or the one fact) that gets a TFLite runtime onto this machine."""
    machine = machine or platform.machine()
    major, minor = version or sys.version_info[:2]
    if machine in ARMV7:
        if (major, minor) > (3, 11):
            return (f"tflite-runtime has no 32-bit ARM wheel for Python {major}.{minor} (its last release, 2.14, "
                    "stops at 3.11): use Raspberry Pi OS bookworm (Python 3.11), or the 64-bit system")
        return f"{_pip()} install --only-binary=:all: tflite-runtime==2.14.0"
    return f"{_pip()} install --only-binary=:all: ai-edge-litert"


def _missing_fix(module: str, machine: str) -> str:
    """How to get a missing compiled package on this machine's install path."""
    if machine in ARMV7 and module in APT_PACKAGES:
        fix = f"sudo apt install {APT_PACKAGES[module]}"
        cfg = venv_config()
        if cfg is not None and not sees_system_site(cfg):
            fix += (f", and a venv that sees apt's packages: python3 -m venv --system-site-packages {sys.prefix} "
                    "(see README: 32-bit Raspberry Pi OS)")
        return fix
    return f"{_pip()} install --only-binary=:all: {DISTRIBUTIONS.get(module, module)}"


def findings() -> list[tuple[str, str, str]]:
    """`check`'s install lines: (what, status, detail) — the path and versions, then one MISSING line per gap."""
    machine = platform.machine()
    origins = {m: _origin(m) for m in ("numpy", "PIL", "paho", "ai_edge_litert", "tflite_runtime")}
    runtime = next((m for m in ("ai_edge_litert", "tflite_runtime") if origins[m]), None)
    path = "apt first" if origins["numpy"] == "apt" else "pip wheels" if origins["numpy"] == "pip" else "system"
    parts = [f"{DISTRIBUTIONS[m]} {_version(m)} ({origins[m]})" for m in ("numpy", "PIL") if origins[m]]
    if runtime:
        parts.append(f"{DISTRIBUTIONS[runtime]} {_version(runtime)} ({origins[runtime]})")
    found = [("install", "ok", f"{path}: Python {platform.python_version()} on {machine}; " + ", ".join(parts))]
    for module in ("numpy", "PIL", "paho"):
        if origins[module] is None:
            found.append(("install", "MISSING", f"{DISTRIBUTIONS[module]}: {_missing_fix(module, machine)}"))
    if runtime is None:
        found.append(("install", "MISSING", f"a TFLite runtime: {runtime_fix(machine)}"))
    numpy_major = _version("numpy").split(".")[0] if origins["numpy"] else ""
    if runtime == "tflite_runtime" and numpy_major not in ("", "1"):
        found.append(("install", "MISSING", f"tflite-runtime 2.14 needs numpy < 2 (this venv has "
                                            f"{_version('numpy')}): {_pip()} install 'numpy<2'"))
    return found


def main() -> int:
    """`python -c 'from edge_infer.install import main; main()'`: the findings as JSON (install-service asks the
    service's Python this way)."""
    print(json.dumps(findings()))
    return 0
