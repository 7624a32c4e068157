"""The child of `edge_infer.trial`: `python -m edge_infer.trial_child SETTINGS-JSON` with a model's bytes on
stdin loads the delegate, builds the interpreter and answers one inference on a zero input; exit 0 when it did,
else 1 with one line on stderr (after `trial.MARK`). A crash or a hang here is what the trial is for."""

from __future__ import annotations

import json
import sys

from edge_infer.delegates import EngineSettings
from edge_infer.runtime import Engine, first_line
from edge_infer.trial import MARK


def main() -> int:
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
