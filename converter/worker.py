"""One conversion in its own process (see `converter.convert.convert_in_subprocess`):

    python -m converter.worker SAVED_MODEL MODE IO_TYPE CALIBRATION.npy|- OUT.tflite
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from converter.convert import convert
from converter.errors import ConvertError


def main(argv: list[str]) -> int:
    saved, mode, io_type, calib, out = argv
    tensors = None if calib == "-" else np.load(calib)
    representative = None if tensors is None else (lambda: iter(tensors))
    try:
        Path(out).write_bytes(convert(Path(saved), mode, representative, io_type))
    except ConvertError as exc:
        print(f"edge-convert: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
