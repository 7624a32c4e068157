"""An accelerator's delegate tried in a child process before this process loads it.

Loading a delegate can take the whole process down — a driver built for another runtime crashes it (SIGSEGV), a
locked-up device hangs it while the loader holds the GIL — and nothing inside the process can catch either; under
systemd that becomes a restart loop with the accelerator never given up. So the engine first asks a child: load
the delegate, build the interpreter on the model, answer one inference, exit. Only after a clean exit in time
does the engine load the delegate itself; otherwise the reason (the child's one-line error, the signal it died
of, or the time it ran out of) is why the CPU runs the model. The child is `edge_infer.trial_child`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from edge_infer.delegates import EngineSettings

TRIAL_S = 45.0  # a child's start (Python, numpy, the runtime: seconds on a Pi Zero), load and one inference
MARK = "trial: "  # the child's own line on stderr, among whatever the runtime printed there


def try_in_child(content: bytes, settings: EngineSettings, timeout_s: float = TRIAL_S) -> str | None:
    """None when a child process loaded `settings`' delegate on the model `content` and answered one inference
    within `timeout_s`; else one line on why not."""
    doc = json.dumps({"threads": settings.threads, "runtime": settings.runtime, "delegate": settings.delegate,
                      "delegate_options": settings.delegate_options})
    package_root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
    try:
        proc = subprocess.run([sys.executable, "-m", "edge_infer.trial_child", doc, str(os.getpid())], input=content,
                              capture_output=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return f"the {settings.delegate} delegate did not load and answer within {timeout_s:g} s (locked up?)"
    if proc.returncode == 0:
        return None
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        return f"the {settings.delegate} delegate crashed the process that loaded it ({name})"
    said = [ln[len(MARK):] for ln in proc.stderr.decode("utf-8", "replace").splitlines() if ln.startswith(MARK)]
    return said[-1] if said else f"the {settings.delegate} delegate trial exited with status {proc.returncode}"
