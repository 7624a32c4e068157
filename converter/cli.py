"""`edge-convert`: a trained TensorFlow/Keras model → a TFLite bundle the device can run, with a report.

Examples:
  edge-convert model.keras --mode int8 --calibration data/train --eval data/test \\
      --labels labels.txt --out digits.tflite --report report.json
  edge-convert wrap downloaded.tflite --calibration data/train --eval data/test --out model.tflite
  edge-convert add-variant model.tflite model_edgetpu.tflite    # an accelerator's build of the same model

This module is the command line; `converter.job` runs the conversion step by step.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from converter.convert import IO_TYPES, MODES
from converter.errors import ConvertError, ConvertRefused
from edge_infer import __version__
from edge_infer.manifest import COLORS, OUTPUT_ACTIVATIONS, TASKS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-convert",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    p.add_argument("--version", action="version", version=f"edge-convert {__version__}")
    p.add_argument("model", help="SavedModel directory, .keras file, or a .tflite somebody else made to wrap into a "
                                 "bundle as it is (also: edge-convert wrap MODEL.tflite ...)")
    p.add_argument("--task", choices=TASKS, default="classification",
                   help="what the model does (default classification); detection, regression and raw read their "
                        "outputs as the spec file's [output] table says (see docs/decisions.md)")
    p.add_argument("--mode", choices=(*MODES, "all"), default="int8-only",
                   help="quantization (default: int8-only); all: every mode, compared in one table")
    p.add_argument("--io-type", choices=IO_TYPES, default="uint8", help="int8-only mode: input/output type")
    p.add_argument("--max-accuracy-drop", type=float, metavar="PTS",
                   help="refuse a variant whose top-1 accuracy drops more than PTS points (exit 3)")
    p.add_argument("--explain", action="store_true",
                   help="per-layer quantization error (RMSE / scale, TF's QuantizationDebugger) in the report")
    p.add_argument("--auto-fallback", action="store_true",
                   help="int8: keep the worst layers in float, one at a time, until --max-accuracy-drop is met")
    p.add_argument("--target", metavar="PROFILE",
                   help="device profile (device_configs/*.toml): refuse variants its runtime cannot run (exit 3)")
    p.add_argument("--target-python", metavar="PYTHON",
                   help="with --target: a Python with the profile's runtime installed, to load and run each bundle")
    p.add_argument("--spec", help="preprocessing spec TOML: [input] kind = image (colour, resize stretch|letterbox|"
                   "centre-crop, pad, scale/offset or mean/std) or sensor (channels, window, hop, rate, mean/std)")
    p.add_argument("--calibration", help="representative images: <dir>/<label>/*.png|jpg; sensor: .npz or .csv")
    p.add_argument("--calibration-samples", type=int, default=300, help="images used to calibrate (300)")
    p.add_argument("--eval", help="labelled held-out images: <dir>/<label>/*.png|jpg; sensor: .npz or .csv")
    p.add_argument("--labels", help="labels file, one per line, in model output order")
    p.add_argument("--out", required=True, help="bundle to write (.tflite)")
    p.add_argument("--golden", type=int, default=16, metavar="N",
                   help="ship N held-out inputs and this bundle's results on them, for the device canary (16; 0: none)")
    p.add_argument("--sign", metavar="KEY", help="sign the bundle with this Ed25519 private key (edge-infer keygen)")
    p.add_argument("--report", help="write the conversion report as JSON here")
    p.add_argument("--name", help="model name in the manifest (default: model file stem)")
    p.add_argument("--model-version", default="1.0.0", help="model version in the manifest")
    p.add_argument("--color", choices=COLORS, help="colour order (default: from the input channels)")
    p.add_argument("--scale", type=float, help="normalise: x = pixel*scale + offset (default: what the model's first "
                   "layer says — Rescaling/Normalization — else inferred from the labelled images, else asked for)")
    p.add_argument("--offset", type=float, help="normalise: x = pixel*scale + offset (0 when only --scale is given)")
    p.add_argument("--force", action="store_true",
                   help="write the bundle even when the checks say it is wrong (near-chance top-1, far below the "
                        "source model, a range the eval set contradicts)")
    p.add_argument("--activation", choices=OUTPUT_ACTIVATIONS, default="softmax",
                   help="softmax: the model outputs probabilities; logits: the device applies softmax; argmax: "
                        "a segmentation model that outputs class indices")
    p.add_argument("--threshold", type=float,
                   help="default confidence threshold (0.5, or a wrapped model's metadata threshold; labels the eval "
                        "set gives enough evidence for get their own)")
    p.add_argument("--precision", type=float, default=0.97,
                   help="a label whose predictions above --threshold were right less often than this on the "
                        "labelled eval set gets a higher threshold of its own (0.97)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "add-variant":  # no TensorFlow: a TFLite runtime reads the variant's tensors
        from converter.variants import main as add_variant

        return add_variant(argv[1:])
    wrap = bool(argv) and argv[0] == "wrap"
    args = build_parser().parse_args(argv[1:] if wrap else argv)
    args.wrap = wrap
    from converter.job import run  # the conversion's own imports: only when converting, not for --help

    try:
        return run(args)
    except ConvertRefused as exc:
        print(f"edge-convert: refused: {exc}", file=sys.stderr)
        return 3
    except ConvertError as exc:
        print(f"edge-convert: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

