"""The conversion child process (see `converter.convert.ConversionWorker`): one JSON request per line on stdin
(`saved`, `mode`, `io_type`, `calibration` .npy path or null, `out`), one JSON answer per line on stdout
(`{"ok": true}` once `out` is written, or `{"error": "..."}`), until stdin closes.

    python -m converter.worker
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from converter.convert import convert
from converter.errors import ConvertError


def serve(requests: object, answers: object) -> None:
    for line in requests:  # type: ignore[attr-defined]
        job = json.loads(line)
        tensors = None if job["calibration"] is None else np.load(job["calibration"])
        representative = None if tensors is None else (lambda t=tensors: iter(t))
        try:
            Path(job["out"]).write_bytes(convert(Path(job["saved"]), job["mode"], representative, job["io_type"]))
            answer = {"ok": True}
        except ConvertError as exc:
            answer = {"error": str(exc)}
        answers.write(json.dumps(answer) + "\n")  # type: ignore[attr-defined]
        answers.flush()  # type: ignore[attr-defined]


if __name__ == "__main__":
    out = sys.stdout
    sys.stdout = sys.stderr  # whatever TensorFlow prints must not break the answer lines
    serve(sys.stdin, out)
