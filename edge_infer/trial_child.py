"""The child of `edge_infer.trial`: `python -m edge_infer.trial_child SETTINGS-JSON PARENT-PID` with a model's
bytes on stdin loads the delegate, builds the interpreter and answers one inference on a zero input; exit 0 when it
did, else 1 with one line on stderr (after `trial.MARK`). A crash or a hang here is what the trial is for; a child
blocked in a locked-up device ends with the service that started it (on Linux), not 45 s later or never."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys

from edge_infer.delegates import EngineSettings
from edge_infer.runtime import Engine, first_line
from edge_infer.trial import MARK

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with(parent: int) -> None:
    """SIGKILL this process when the thread that started it ends (the service stopped, or was killed, mid-trial)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it ended before that took hold
        sys.exit(1)


def main() -> int:
    _die_with(int(sys.argv[2]))
    settings = EngineSettings(**json.loads(sys.argv[1]))
    content = sys.stdin.buffer.read()
    try:
        Engine(content, settings).prove()
    except RuntimeError as exc:  # the runtime's error during the inference
        print(f"{MARK}the {settings.delegate} delegate failed during inference: {first_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # cannot load or take the model (DelegateUnavailable), or worse: one line
        print(MARK + first_line(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
