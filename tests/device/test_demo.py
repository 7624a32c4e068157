"""The demo gives the recorded results (tests/arm/demo-expected.json: every label and confidence to 2 decimals,
every rejection's reason) — here on x86_64, and in the emulated arm64 and armhf legs (tests/arm/leg.sh) against
the same file, so the three architectures agree. The script runs the real daemon through a real mosquitto."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO


def test_the_demo_gives_the_same_results_on_every_architecture() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "arm" / "demo_results.py")], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout)
    expected = json.loads((REPO / "tests" / "arm" / "demo-expected.json").read_text())
    assert got == expected
    assert sum(v[0] == "result" for v in got.values()) == 20 and sum(v[0] == "rejection" for v in got.values()) == 5
    assert "20 results, 5 rejections" in proc.stderr
