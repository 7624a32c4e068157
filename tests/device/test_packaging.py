"""The requirements install without a compiler on every supported machine (#20): on aarch64 and x86_64 (cp311)
pip resolves them to wheels only; on armv7l the apt-first path (Debian bookworm's python3-numpy, python3-pil and
python3-cryptography in a --system-site-packages venv) satisfies the compiled ones, and pip is asked for nothing
but pure-Python wheels and tflite-runtime's armv7l wheel. Asks the package index (pip --dry-run / download)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.requirements_for import requirements

try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement

GLIBC_TAGS = ("manylinux2014", *(f"manylinux_2_{n}" for n in (17, 24, 27, 28, 31, 34, 35, 36)))  # bookworm: 2.36
BOOKWORM = {"numpy": "1.24.2", "pillow": "9.4.0", "cryptography": "38.0.4"}  # what apt installs on a 32-bit Pi


def platforms(arch: str) -> list[str]:
    return [arg for tag in GLIBC_TAGS for arg in ("--platform", f"{tag}_{arch}")]


@pytest.mark.parametrize("arch", ["aarch64", "x86_64"])
def test_every_requirement_resolves_to_a_wheel(arch: str, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                           "--only-binary=:all:", *platforms(arch), "--python-version", "3.11", "--implementation",
                           "cp", "--target", str(tmp_path / "t"), "--report", str(report), "-q",
                           *requirements(arch, [])], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    items = json.loads(report.read_text())["install"]
    installed = {i["metadata"]["name"].lower(): i["download_info"]["url"] for i in items}
    assert {"numpy", "pillow", "paho-mqtt", "cryptography", "ai-edge-litert"} <= set(installed)
    assert all(url.endswith(".whl") for url in installed.values()), installed


def test_armv7l_apt_first_needs_only_pure_python_wheels_and_tflite_runtime(tmp_path: Path) -> None:
    wanted = requirements("armv7l", [])
    assert not any(r.startswith("numpy") and "<2" not in r for r in wanted), wanted  # no line admits numpy 2
    from_pip = []
    for line in wanted:
        req = Requirement(line)
        name = req.name.lower()
        if name in BOOKWORM:
            assert req.specifier.contains(BOOKWORM[name]), f"{line}: bookworm's {name} {BOOKWORM[name]} does not fit"
        else:
            from_pip.append(line)
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                           *platforms("armv7l"), "--platform", "linux_armv7l", "--python-version", "3.11",
                           "-d", str(tmp_path), "-q", *from_pip], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheels = sorted(p.name for p in tmp_path.glob("*.whl"))
    assert len(wheels) == len(from_pip), wheels
    for wheel in wheels:
        assert wheel.endswith("-py3-none-any.whl") or wheel.startswith("tflite_runtime-2.14.0-cp311-cp311-"), wheel
