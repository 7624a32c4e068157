"""The live view in a real headless Chromium (Debian's chromium, driven by Playwright): with the daemon's broker
down, the page shows the latest frame, the latest result and the rejections with their reasons, updates without
a reload, and logs no console error. Off loopback the token is required; with the view off nothing of it is
even imported."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import DIGITS_INT8, REPO
from tests.device.faults import wait_until
from tests.helpers.broker import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SAMPLES = REPO / "demo" / "samples"


def config(tmp_path: Path, web: str) -> Path:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[device]\nid = "porch"\nstate_dir = "{tmp_path / "s"}"\n[model]\nbundle = "{DIGITS_INT8}"\n'
                   f'[source]\ntype = "directory"\npath = "{tmp_path / "in"}"\nsettle_seconds = 0\n'
                   'poll_interval = 0.05\n'
                   f'[mqtt]\nhost = "127.0.0.1"\nport = {free_port()}\nreconnect_max = 1\n[web]\n{web}\n')
    (tmp_path / "in").mkdir(exist_ok=True)
    return cfg


def daemon(cfg: Path, **env: str) -> subprocess.Popen[str]:
    log = (cfg.parent / "daemon.log").open("w")  # a file, not a pipe nobody reads: a full pipe blocks logging
    return subprocess.Popen([sys.executable, "-m", "edge_infer", "run", "--config", str(cfg)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=log, text=True, env={**os.environ, **env})


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except OSError:
        return 0, b""


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (tests/run.sh installs Debian's chromium)")
def test_the_page_shows_frame_result_and_rejections_with_the_broker_down(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed in this leg")
    port = free_port()
    proc = daemon(config(tmp_path, f"enabled = true\nport = {port}"))
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: get(f"{base}/state.json")[0] == 200, 30), (tmp_path / "daemon.log").read_text()
        for sample in sorted(SAMPLES.iterdir())[:6]:  # the page is open before the inputs arrive
            shutil.copy(sample, tmp_path / "in" / sample.name)
        errors: list[str] = []
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(base + "/")
            page.wait_for_function("document.querySelectorAll('#results tr').length >= 1", timeout=30_000)
            for sample in sorted(SAMPLES.iterdir())[6:]:  # more while it is open: it updates by itself
                shutil.copy(sample, tmp_path / "in" / sample.name)
            page.wait_for_function("document.querySelectorAll('#rejections tr').length >= 5", timeout=30_000)
            page.wait_for_function("document.getElementById('frame').naturalWidth > 0", timeout=30_000)
            page.screenshot(path=str(tmp_path / "live-view.png"), full_page=True)
            latest = page.inner_text("#latest")
            rejections = page.inner_text("#rejections")
            problems = page.inner_text("#problems")
            browser.close()
        state = json.loads(get(f"{base}/state.json")[1])
        truth = state["results"][0]["result"]["label"]
        assert (latest.startswith(f"{truth} (") and "ok" in latest) or "uncertain" in latest, latest
        for reason in ("truncated", "empty_file", "not_an_image", "blurry", "underexposed"):
            assert reason in rejections, rejections
        assert "mqtt" in problems.lower() or "broker" in problems.lower() or problems == "", problems
        assert errors == [], errors
        assert (tmp_path / "live-view.png").stat().st_size > 20_000  # a real rendering, not a blank page
        shot = REPO / ".live-view.png"  # kept for a look (gitignored)
        shutil.copy(tmp_path / "live-view.png", shot)
        status, frame = get(f"{base}/frame.jpg")
        assert status == 200 and frame[:2] == b"\xff\xd8"
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_mjpeg_stream_sends_frames_as_they_come(tmp_path: Path) -> None:
    port = free_port()
    proc = daemon(config(tmp_path, f"enabled = true\nport = {port}"))
    try:
        assert wait_until(lambda: get(f"http://127.0.0.1:{port}/state.json")[0] == 200, 30), \
            (tmp_path / "daemon.log").read_text()
        for sample in sorted(SAMPLES.glob("digit-*.png"))[:3]:
            shutil.copy(sample, tmp_path / "in" / sample.name)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stream.mjpg", timeout=10) as stream:
            assert stream.headers["Content-Type"].startswith("multipart/x-mixed-replace; boundary=")
            head = stream.read(200)
        assert head.startswith(b"--edge-infer-frame\r\nContent-Type: image/jpeg\r\n") and b"\xff\xd8" in head
    finally:
        proc.terminate()
        proc.wait(30)


def test_off_loopback_the_token_is_required(tmp_path: Path) -> None:
    port = free_port()
    refused = subprocess.run([sys.executable, "-m", "edge_infer", "run", "--config",
                              str(config(tmp_path, f'enabled = true\nbind = "0.0.0.0"\nport = {port}')), "--once"],
                             cwd=REPO, capture_output=True, text=True, timeout=120,
                             env={k: v for k, v in os.environ.items() if k != "EDGE_INFER_WEB_TOKEN"})
    errors = [line for line in refused.stderr.splitlines() if line.startswith("edge-infer: error:")]
    assert refused.returncode == 2 and len(errors) == 1 and "set a token" in errors[0], refused.stderr
    proc = daemon(config(tmp_path, f'enabled = true\nbind = "0.0.0.0"\nport = {port}'),
                  EDGE_INFER_WEB_TOKEN="s3cret-view")
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_until(lambda: get(f"{base}/state.json")[0] == 401, 30), (tmp_path / "daemon.log").read_text()
        assert get(f"{base}/?token=wrong")[0] == 401 and get(f"{base}/frame.jpg")[0] == 401
        assert get(f"{base}/?token=s3cret-view")[0] == 200
        assert get(f"{base}/state.json", {"Authorization": "Bearer s3cret-view"})[0] == 200
    finally:
        proc.terminate()
        proc.wait(30)


def test_with_the_view_off_none_of_it_is_loaded() -> None:
    probe = (f"import sys; from edge_infer.config import load_config; from edge_infer.app.daemon import Daemon; "
             f"d = Daemon(load_config({str(REPO / 'device_configs' / 'demo.toml')!r})); "
             "print(sorted(m for m in sys.modules if m.startswith('edge_infer.web') or m == 'edge_infer.snapshot'))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
