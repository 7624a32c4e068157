"""`edge-infer install-service`: the unit it writes is Type=notify with a watchdog, takes its limits from the
device profile, grants the source's devices explicitly, and `systemd-analyze security` rates it ≤ 2.0."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

PROFILES = sorted((REPO / "device_configs").glob("*.toml"))


def dry_run_unit(config: Path) -> str:
    proc = run_cli("install-service", "--config", str(config), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.split(":\n", 1)[1]
    return text.split("\n# would run:", 1)[0]


def settings(unit: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


@pytest.mark.parametrize("profile", PROFILES, ids=[p.stem for p in PROFILES])
def test_every_profile_gets_a_notify_unit_with_its_limits(profile: Path) -> None:
    import tomllib

    unit = settings(dry_run_unit(profile))
    service = tomllib.loads(profile.read_text()).get("service", {})
    assert unit["Type"] == ["notify"] and unit["Restart"] == ["on-failure"]
    assert unit["RestartPreventExitStatus"] == ["2"]  # a config error: restarting cannot help
    assert unit["StartLimitIntervalSec"] == [str(service.get("start_limit_interval", 0))]  # 0: never give up
    assert unit["WatchdogSec"] == [str(service.get("watchdog_sec", 30))]
    assert unit["MemoryMax"] == [service.get("memory_max", "300M")]  # "1G", "512M": as systemd writes them
    assert unit["User"] == ["edge-infer"] and "StartLimitBurst" in unit
    assert unit["ExecStart"][0].endswith(f"-m edge_infer run --config {profile}")
    assert unit["ProtectSystem"] == ["strict"] and unit["CapabilityBoundingSet"] == [""]


def test_a_camera_source_is_granted_its_device_and_group_only(tmp_path: Path) -> None:
    cfg = tmp_path / "camera.toml"
    cfg.write_text(f'[model]\nbundle = "{REPO / "demo" / "digits-int8-only.tflite"}"\n'
                   '[source]\ntype = "camera"\nbackend = "opencv"\nindex = 1\n')
    unit = settings(dry_run_unit(cfg))
    assert unit["DevicePolicy"] == ["closed"] and "PrivateDevices" not in unit
    assert "/dev/video1 rw" in unit["DeviceAllow"] and unit["SupplementaryGroups"] == ["video"]
    cfg.write_text(cfg.read_text().replace('backend = "opencv"', 'backend = "picamera2"'))
    libcamera = settings(dry_run_unit(cfg))
    assert {"char-video4linux rw", "char-media rw"} <= set(libcamera["DeviceAllow"])
    plain = settings(dry_run_unit(REPO / "device_configs" / "pi-4.toml"))
    assert plain["PrivateDevices"] == ["yes"] and "DeviceAllow" not in plain


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("profile", ["pi-zero-2w", "x86-gateway"])
def test_systemd_rates_the_unit_exposure_at_most_2(profile: str, tmp_path: Path) -> None:
    path = tmp_path / "edge-infer.service"
    path.write_text(dry_run_unit(REPO / "device_configs" / f"{profile}.toml"))
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", str(path)], capture_output=True,
                          text=True, timeout=60)
    level = re.search(r"Overall exposure level for edge-infer.service: ([0-9.]+)", proc.stdout)
    assert level, proc.stdout[-2000:] + proc.stderr
    assert float(level.group(1)) <= 2.0, proc.stdout


def test_restarts_back_off_where_systemd_can_and_never_give_up() -> None:
    from edge_infer.config import load_config
    from edge_infer.unit import render_unit

    cfg = load_config(REPO / "device_configs" / "pi-4.toml")
    new, old = settings(render_unit(cfg, version=256)), settings(render_unit(cfg, version=252))
    assert (new["RestartSec"], new["RestartSteps"], new["RestartMaxDelaySec"]) == (["5"], ["6"], ["300"])
    assert old["RestartSec"] == ["15"] and "RestartSteps" not in old  # bookworm's 252 does not know the keys
    assert new["StartLimitIntervalSec"] == ["0"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    """The installed systemd parses the unit, the template and its drop-in without a warning."""
    (tmp_path / "edge-infer.service").write_text(dry_run_unit(REPO / "device_configs" / "pi-zero-2w.toml"))
    etc = tmp_path / "etc"
    files = dry_run_files(_instance_config(etc, "porch", '[source]\ntype = "camera"\nbackend = "opencv"',
                                           "/var/lib/edge-infer/porch"))
    (tmp_path / "edge-infer@porch.service").write_text(files["/u/edge-infer@.service"].replace("[Install]", files[
        "/u/edge-infer@porch.service.d/config.conf"].split("[Service]", 1)[1] + "\n[Install]"))
    for unit in ("edge-infer.service", "edge-infer@porch.service"):
        proc = subprocess.run(["systemd-analyze", "verify", str(tmp_path / unit)], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


UNPRIVILEGED = "edge-infer-test"
# The interpreter may live where only root can read (pyenv under /root): start it as root, import what the
# command needs, then drop to an unprivileged user the test creates before the command runs.
AS_USER = """
import os, pwd, subprocess, sys
import edge_infer.cli, edge_infer.unit
user = pwd.getpwnam(sys.argv[1])
os.setgroups([]); os.setgid(user.pw_gid); os.setuid(user.pw_uid)
assert os.geteuid() != 0
sys.exit(edge_infer.cli.main(sys.argv[2:]))
"""


def test_without_dry_run_it_needs_root() -> None:
    command = ["install-service", "--config", str(REPO / "device_configs" / "pi-4.toml")]
    if os.geteuid() == 0:  # CI runs as root: become a user without it
        if subprocess.run(["id", "-u", UNPRIVILEGED], capture_output=True).returncode != 0:
            if shutil.which("useradd") is None:
                pytest.skip("running as root and useradd is missing: cannot make an unprivileged user")
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                            UNPRIVILEGED], check=True, capture_output=True)
        argv = [sys.executable, "-c", AS_USER, UNPRIVILEGED, *command]
    else:
        argv = [sys.executable, "-m", "edge_infer", *command]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "run it as root" in proc.stderr, proc.stderr


def test_a_camera_password_reaches_the_service_as_a_credential_not_a_path(tmp_path: Path) -> None:
    """An HTTP camera's `password_file` becomes `LoadCredential=http_password:…` (the service reads it from its
    credentials directory, like the MQTT password); without one there is no credential line."""
    cfg = tmp_path / "snap.toml"
    cfg.write_text(f'[model]\nbundle = "{REPO / "demo" / "digits-int8-only.tflite"}"\n'
                   '[source]\ntype = "http"\nurl = "http://cam.local/snap.jpg"\nusername = "viewer"\n'
                   'password_file = "cam-password"\n')
    unit = settings(dry_run_unit(cfg))
    assert unit["LoadCredential"] == [f"http_password:{tmp_path / 'cam-password'}"]
    cfg.write_text(cfg.read_text().replace('password_file = "cam-password"\n', ""))
    assert "LoadCredential" not in settings(dry_run_unit(cfg))


def _instance_config(folder: Path, name: str, source: str, state: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    bundle = REPO / "demo" / "digits-int8-only.tflite"
    path.write_text(f'[device]\nstate_dir = "{state}"\n[model]\nbundle = "{bundle}"\n'
                    f'{source}\n[service]\nmemory_max = "{100 + len(name)}MiB"\n')
    return path


def dry_run_files(config: Path) -> dict[str, str]:
    proc = run_cli("install-service", "--config", str(config), "--instance", "--dry-run", "--unit-dir", "/u")
    assert proc.returncode == 0, proc.stderr
    files = re.findall(r"# would write (\S+):\n(.*?)(?=\n# would write |\n# would run:)", proc.stdout, re.S)
    assert "sudo systemctl enable --now edge-infer@" + config.stem + ".service" in proc.stdout
    return dict(files)


def test_one_daemon_per_camera_shares_the_template_and_keeps_its_own_devices(tmp_path: Path) -> None:
    """Two cameras' configs in one folder: the same `edge-infer@.service` (the command reads DIR/%i.toml,
    the sandbox), and a drop-in each with only its own device, group, state directory and limits."""
    etc = tmp_path / "etc"
    porch = _instance_config(etc, "porch", '[source]\ntype = "camera"\nbackend = "opencv"\nindex = 0',
                             "/var/lib/edge-infer/porch")
    pump = _instance_config(etc, "pump", '[source]\ntype = "serial"\nport = "/dev/ttyUSB0"',
                            "/var/lib/edge-infer/pump")
    a, b = dry_run_files(porch), dry_run_files(pump)
    assert a["/u/edge-infer@.service"] == b["/u/edge-infer@.service"]
    template = settings(a["/u/edge-infer@.service"])
    assert template["ExecStart"][0].endswith(f"-m edge_infer run --config {etc}/%i.toml")
    assert "DeviceAllow" not in template and "User" not in template and template["ProtectSystem"] == ["strict"]
    porch_in, pump_in = settings(a["/u/edge-infer@porch.service.d/config.conf"]), \
        settings(b["/u/edge-infer@pump.service.d/config.conf"])
    assert porch_in["DeviceAllow"] == ["/dev/video0 rw"] and porch_in["SupplementaryGroups"] == ["video"]
    assert pump_in["DeviceAllow"] == ["/dev/ttyUSB0 rw"] and pump_in["SupplementaryGroups"] == ["dialout"]
    assert porch_in["StateDirectory"] == ["edge-infer/porch"] and pump_in["StateDirectory"] == ["edge-infer/pump"]
    assert porch_in["MemoryMax"] == ["105M"] and pump_in["MemoryMax"] == ["104M"]
    if shutil.which("systemd-analyze") is not None:  # the instance as systemd merges it: template + drop-in
        merged = tmp_path / "edge-infer@porch.service"
        merged.write_text(a["/u/edge-infer@.service"].replace("[Install]", a[
            "/u/edge-infer@porch.service.d/config.conf"].split("[Service]", 1)[1] + "\n[Install]"))
        proc = subprocess.run(["systemd-analyze", "security", "--offline=true", str(merged)], capture_output=True,
                              text=True, timeout=60)
        level = re.search(r"Overall exposure level for edge-infer@porch.service: ([0-9.]+)", proc.stdout)
        assert level and float(level.group(1)) <= 2.0, proc.stdout[-2000:] + proc.stderr


def test_two_instances_never_share_a_state_directory_and_names_must_fit(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    _instance_config(etc, "front", '[source]\ntype = "directory"\npath = "/srv/a"', "/var/lib/edge-infer")
    back = _instance_config(etc, "back", '[source]\ntype = "directory"\npath = "/srv/b"', "/var/lib/edge-infer")
    proc = run_cli("install-service", "--config", str(back), "--instance", "--dry-run")
    assert proc.returncode == 2 and "both keep their state in /var/lib/edge-infer" in proc.stderr
    assert '"/var/lib/edge-infer/back"' in proc.stderr and proc.stderr.count("\n") == 1
    odd = _instance_config(tmp_path / "x", "front door", '[source]\ntype = "directory"\npath = "/srv/c"', "/v/c")
    proc = run_cli("install-service", "--config", str(odd), "--instance", "--dry-run")
    assert proc.returncode == 2 and "edge-infer@NAME" in proc.stderr


@pytest.mark.parametrize(("device", "nodes", "netlink"), [
    ("usb", ["char-usb_device rw"], True),
    ("pci:1", ["/dev/apex_1 rw"], False),
    (None, ["char-usb_device rw", "/dev/apex_0 rw"], True),
])
def test_a_coral_gets_its_device_and_nothing_more(tmp_path: Path, device: str | None, nodes: list[str],
                                                 netlink: bool) -> None:
    """`delegate = "edgetpu"`: the USB accelerator's device class (and netlink, for libusb's hot-plug watch),
    the PCIe one's /dev/apex_N, both when the config does not say; its groups only where they exist (a unit
    naming a missing group would not start); still rated ≤ 2.0."""
    cfg = tmp_path / "coral.toml"
    options = f'[model.delegate_options]\ndevice = "{device}"\n' if device else ""
    cfg.write_text(f'[model]\nbundle = "{REPO / "demo" / "digits-int8-only.tflite"}"\ndelegate = "edgetpu"\n{options}'
                   '[source]\ntype = "directory"\npath = "/srv/frames"\n')
    proc = run_cli("install-service", "--config", str(cfg), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    unit = settings(proc.stdout.split(":\n", 1)[1].split("\n# would run:", 1)[0])
    assert unit["DevicePolicy"] == ["closed"] and unit["DeviceAllow"] == nodes and "PrivateDevices" not in unit
    assert ("AF_NETLINK" in unit["RestrictAddressFamilies"]) == netlink
    import grp

    def exists(group: str) -> bool:
        try:
            grp.getgrnam(group)
            return True
        except KeyError:
            return False

    wanted = {"plugdev"} if device == "usb" else {"apex"} if device else {"plugdev", "apex"}
    assert set(unit.get("SupplementaryGroups", [""])[0].split()) == {g for g in wanted if exists(g)}
    assert all(f"group '{g}' does not exist" in proc.stderr for g in wanted if not exists(g))
    plain = settings(dry_run_unit(REPO / "device_configs" / "pi-4.toml"))
    assert plain["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]  # nothing more without a Coral
    if shutil.which("systemd-analyze") is not None:
        path = tmp_path / "edge-infer.service"
        path.write_text(proc.stdout.split(":\n", 1)[1].split("\n# would run:", 1)[0])
        rated = subprocess.run(["systemd-analyze", "security", "--offline=true", str(path)], capture_output=True,
                               text=True, timeout=60)
        level = re.search(r"Overall exposure level for edge-infer.service: ([0-9.]+)", rated.stdout)
        assert level and float(level.group(1)) <= 2.0, rated.stdout[-1500:]
