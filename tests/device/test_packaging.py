"""The requirements install without a compiler on every supported machine (#20): on aarch64 and x86_64 (cp311)
pip resolves them to wheels only; on armv7l the apt-first path (Debian bookworm's python3-numpy, python3-pil and
python3-cryptography in a --system-site-packages venv) satisfies the compiled ones, and pip is asked for nothing
but pure-Python wheels and tflite-runtime's armv7l wheel. Asks the package index (pip --dry-run / download)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
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


def test_a_venv_without_the_device_packages_gets_one_fix_line_each(tmp_path: Path) -> None:
    """`check`'s install lines, asked of a real, empty venv (what install-service asks the service's Python)."""
    import venv

    venv.EnvBuilder(with_pip=False).create(tmp_path / "empty")
    python = str(tmp_path / "empty" / "bin" / "python")
    ask = f"import sys; sys.path.append({str(REPO)!r}); from edge_infer.install import main; main()"
    found = json.loads(subprocess.run([python, "-c", ask], capture_output=True, text=True, check=True).stdout)
    missing = [detail for _what, status, detail in found if status == "MISSING"]
    pip = f"{tmp_path / 'empty'}/bin/pip install --only-binary=:all:"
    assert any(m.startswith("numpy: ") and pip in m for m in missing), missing
    assert any(m.startswith("pillow: ") for m in missing) and any(m.startswith("paho-mqtt: ") for m in missing)
    runtime = next(m for m in missing if m.startswith("a TFLite runtime: "))
    assert runtime.endswith("tflite-runtime==2.14.0" if os.uname().machine == "armv7l" else "ai-edge-litert")
    assert found[0][0:2] == ["install", "ok"] and "Python 3." in found[0][2]


def test_the_runtime_fix_names_the_one_path_each_machine_has() -> None:
    from edge_infer.install import runtime_fix

    assert runtime_fix("armv7l", (3, 11)).endswith("install --only-binary=:all: tflite-runtime==2.14.0")
    assert "no 32-bit ARM wheel for Python 3.13" in runtime_fix("armv7l", (3, 13))  # 32-bit trixie
    assert runtime_fix("aarch64", (3, 13)).endswith("install --only-binary=:all: ai-edge-litert")


def test_install_service_says_what_the_services_python_lacks(tmp_path: Path) -> None:
    import venv

    from tests.conftest import DIGITS_INT8, run_cli, write_config
    from tests.helpers.broker import free_port

    venv.EnvBuilder(with_pip=False).create(tmp_path / "empty")
    cfg = write_config(tmp_path / "c.toml", bundle=DIGITS_INT8, source=tmp_path / "in", state=tmp_path / "s",
                       port=free_port())
    proc = run_cli("install-service", "--config", str(cfg), "--dry-run", "--python",
                   str(tmp_path / "empty" / "bin" / "python"))
    lacks = [ln for ln in proc.stderr.splitlines() if "the service's Python lacks" in ln]
    assert any("cannot import edge_infer" in ln for ln in lacks), proc.stderr  # edge-infer not in that venv
