"""The demo as a subscriber sees it, in a form two machines can compare: runs the real daemon
(`edge-infer run --config device_configs/demo.toml --once`, broker and state dir moved to a throwaway place) over
demo/samples with a mosquitto of its own, and prints one JSON document — every result's label and confidence to
2 decimals and every rejection's reason, by input — plus, on stderr, the daemon's peak resident memory and the
runtime it used. tests/arm/leg.sh runs it on the host and inside the emulated Pi and compares the two.

    python tests/arm/demo_results.py > demo.json
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.helpers.broker import Mosquitto  # noqa: E402  (the repo on the path first)


def collect(port: int, want: int, run: Callable[[], None], timeout: float = 600.0) -> dict[str, dict]:
    """Subscribe, `run()` the daemon, and gather the last payload of each result/rejection/status by input."""
    seen: dict[str, dict] = {}
    lock, done = threading.Lock(), threading.Event()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        kind = msg.topic.split("/")[2]
        if kind not in ("results", "rejections", "status"):
            return
        doc = json.loads(msg.payload)
        with lock:
            seen[doc.get("input", {}).get("id") or f"status-{doc.get('state')}"] = {"kind": kind, **doc}
            if sum(1 for d in seen.values() if d["kind"] != "status") >= want:
                done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="demo-results")
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe("edge/demo-pi/#", qos=1)
    client.loop_start()
    try:
        run()
        if not done.wait(timeout):
            raise SystemExit(f"demo_results: only {len(seen)} of {want} messages arrived")
    finally:
        client.loop_stop()
        client.disconnect()
    return seen


def peak_mib() -> float:
    """The largest peak resident memory of the children waited for so far (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> int:
    # the floor: Python with numpy and Pillow imported — under qemu-user this includes the emulator's own memory
    subprocess.run([sys.executable, "-c", "import numpy, PIL.Image"], check=True)
    floor = peak_mib()
    samples = sorted(p.name for p in (REPO / "demo" / "samples").iterdir() if p.is_file())
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "broker").start()
        config = Path(tmp) / "demo.toml"
        text = (REPO / "device_configs" / "demo.toml").read_text()
        text = text.replace('state_dir = "../.demo-state"', f'state_dir = "{tmp}/state"')
        text = text.replace('"../demo/', f'"{REPO}/demo/').replace("port = 1883", f"port = {broker.port}")
        config.write_text(text)
        log = Path(tmp) / "daemon.log"
        started = time.monotonic()

        def run() -> None:
            with open(log, "w") as err:
                proc = subprocess.run([sys.executable, "-m", "edge_infer", "run", "--config", str(config), "--once"],
                                      stdout=err, stderr=subprocess.STDOUT, timeout=900, cwd=REPO)
            if proc.returncode != 0:
                raise SystemExit(f"demo_results: the daemon exited {proc.returncode}:\n{log.read_text()[-2000:]}")

        try:
            seen = collect(broker.port, len(samples), run)
        finally:
            broker.stop()
        took = time.monotonic() - started
    out: dict[str, list] = {}
    for name in samples:
        doc = seen[name]
        if doc["kind"] == "results":
            out[name] = ["result", doc["result"]["label"], f"{doc['result']['confidence']:.2f}", doc["status"]]
        else:
            out[name] = ["rejection", doc["reason"]]
    runtime = seen.get("status-online", {}).get("runtime", {})
    peak = peak_mib()
    print(json.dumps(out, indent=1, sort_keys=True))
    print(f"demo_results: {os.uname().machine}: {sum(v[0] == 'result' for v in out.values())} results, "
          f"{sum(v[0] == 'rejection' for v in out.values())} rejections; runtime {runtime.get('name')} "
          f"{runtime.get('version')}; daemon peak RSS {peak:.0f} MiB (python + numpy + Pillow alone: "
          f"{floor:.0f} MiB); {took:.1f} s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
