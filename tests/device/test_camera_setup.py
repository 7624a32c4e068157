"""Setting a camera up: `check` and the camera source say exactly why picamera2 is not usable (not installed;
installed by apt but the venv cannot see it; built for another Python), a venv switched to see the system's
packages really sees them, and `edge-infer init --camera` writes a config that loads for the camera it finds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edge_infer.config import load_config
from edge_infer.sources.camera import picamera2_problem
from edge_infer.starter import find_cameras
from edge_infer.venv import let_see_system_site, sees_system_site, venv_config
from tests.conftest import DIGITS_INT8, run_cli


def apt_site(tmp_path: Path, python_tag: str | None = None) -> Path:
    """A folder laid out as apt lays out /usr/lib/python3/dist-packages with python3-picamera2 installed."""
    site = tmp_path / "dist-packages"
    (site / "picamera2").mkdir(parents=True)
    (site / "picamera2" / "__init__.py").write_text("")
    if python_tag:
        (site / "libcamera").mkdir()
        (site / "libcamera" / f"_libcamera.cpython-{python_tag}-aarch64-linux-gnu.so").write_bytes(b"")
    return site


def make_venv(path: Path, system_site: bool = False) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", *(["--system-site-packages"] if system_site else []),
                    str(path)], check=True, timeout=120)
    return path / "pyvenv.cfg"


def test_picamera2_missing_says_what_to_install_for_each_cause(tmp_path: Path) -> None:
    assert "sudo apt install python3-picamera2" in picamera2_problem(tmp_path / "empty", None)
    closed = make_venv(tmp_path / "closed")
    problem = picamera2_problem(apt_site(tmp_path / "a"), closed)
    assert "installed by apt" in problem and f"python3 -m venv --system-site-packages {closed.parent}" in problem
    here = f"{sys.version_info.major}{sys.version_info.minor}"
    other = "39" if here != "39" else "311"
    problem = picamera2_problem(apt_site(tmp_path / "b", other), make_venv(tmp_path / "open", True))
    assert f"built for Python {other[0]}.{other[1:]}" in problem and "/usr/bin/python3" in problem
    assert "does not import" in picamera2_problem(apt_site(tmp_path / "c", here), None)


def test_a_venv_switched_to_see_system_packages_really_sees_them(tmp_path: Path) -> None:
    """`install-service` fixes a camera venv by flipping `include-system-site-packages`: the venv's own Python
    then has the base interpreter's site-packages on its path (where apt's picamera2 is on a Pi)."""
    cfg = make_venv(tmp_path / "venv")
    python = tmp_path / "venv" / "bin" / "python"
    probe = "import site, sys; print(any(p in sys.path for p in site.getsitepackages()))"

    def base_site_visible() -> bool:
        out = subprocess.run([str(python), "-c", probe.replace("site.getsitepackages()", repr(base))],
                             capture_output=True, text=True, timeout=60).stdout.strip()
        return out == "True"

    import site
    base = [p for p in site.getsitepackages() if not p.startswith(sys.prefix)] or \
        [p.replace(sys.prefix, sys.base_prefix) for p in site.getsitepackages()]
    assert not sees_system_site(cfg) and not base_site_visible()
    let_see_system_site(cfg)
    assert sees_system_site(cfg) and base_site_visible()
    assert venv_config(str(tmp_path / "venv")) == cfg and venv_config(str(tmp_path)) is None


def sysfs(root: Path, nodes: dict[str, tuple[str, int]]) -> Path:
    for node, (name, index) in nodes.items():
        d = root / "class" / "video4linux" / node
        d.mkdir(parents=True)
        (d / "name").write_text(name + "\n")
        (d / "index").write_text(f"{index}\n")
    return root


PI_WITH_WEBCAM = {"video0": ("unicam-image", 0), "video10": ("bcm2835-codec-decode", 0),
                  "video13": ("bcm2835-isp", 0), "video2": ("HD Pro Webcam C920", 0),
                  "video3": ("HD Pro Webcam C920", 1)}


def test_the_webcam_is_found_and_the_pi_s_own_nodes_are_not(tmp_path: Path) -> None:
    cameras, csi_unreached = find_cameras(sysfs(tmp_path, PI_WITH_WEBCAM), lambda: None)
    assert [(c.backend, c.index, c.name) for c in cameras] == [("opencv", 2, "HD Pro Webcam C920")]
    assert csi_unreached  # the CSI receiver is there, picamera2 listed nothing
    listed = [{"Model": "imx708_wide", "Num": 0, "Location": 2}]
    cameras, csi_unreached = find_cameras(tmp_path, lambda: listed)
    assert [(c.backend, c.index) for c in cameras] == [("picamera2", 0), ("opencv", 2)] and not csi_unreached


def test_init_writes_a_config_that_loads_for_the_camera_it_found(tmp_path: Path) -> None:
    root = sysfs(tmp_path / "sys", PI_WITH_WEBCAM)
    out = tmp_path / "etc" / "porch.toml"
    args = ["init", "--camera", "--sys-root", str(root), "--out", str(out), "--bundle", str(DIGITS_INT8),
            "--broker", "192.168.1.10:1884", "--device-id", "porch-pi"]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "a Raspberry Pi camera is attached, but picamera2 is not installed" in proc.stderr
    cfg = load_config(out)
    assert (cfg.source.type, cfg.source.backend, cfg.source.index) == ("camera", "opencv", 2)
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.device.id) == ("192.168.1.10", 1884, "porch-pi")
    assert cfg.gate.baseline and cfg.homeassistant.discovery
    again = run_cli(*args)
    assert again.returncode == 2 and "exists: pass --force" in again.stderr
    empty = run_cli("init", "--camera", "--sys-root", str(tmp_path / "none"), "--out", str(tmp_path / "n.toml"))
    assert empty.returncode == 2 and "no camera found" in empty.stderr and not (tmp_path / "n.toml").exists()
    bad = run_cli("init", "--sys-root", str(root), "--out", str(tmp_path / "b.toml"), "--broker", "broker.lan")
    assert bad.returncode == 2 and "expected host:port" in bad.stderr


def test_check_names_the_camera_library_it_lacks(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[model]\nbundle = "{DIGITS_INT8}"\n[source]\ntype = "camera"\nbackend = "picamera2"\n'
                   '[mqtt]\nhost = "127.0.0.1"\nport = 1\n')
    proc = run_cli("check", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert "camera   MISSING: picamera2 is not installed: sudo apt install python3-picamera2" in proc.stdout
