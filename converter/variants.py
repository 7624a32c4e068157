"""`edge-convert add-variant`: put a model compiled for an accelerator — `edgetpu_compiler`'s
`model_edgetpu.tflite`, or any delegate's own build — into a bundle beside its CPU model (`edge_infer.variants`).

Examples:
  edgetpu_compiler digits.tflite          # writes digits_edgetpu.tflite (on a machine with the compiler)
  edge-convert add-variant digits.tflite digits_edgetpu.tflite
  edge-convert add-variant digits.tflite npu.tflite --name npu --delegate external --sign device.key

The variant must keep the bundle's input/output contract (read without running it, so a model whose custom
operator only the accelerator runs is readable here): the same input and output tensors, shapes, types and
quantization. A variant of the same name is replaced. The bundle's signature covers every member, so a signed
bundle needs `--sign KEY` again. Needs no TensorFlow: a TFLite runtime reads the tensors.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from edge_infer import __version__
from edge_infer.bundle import (
    MANIFEST_NAME,
    TFLITE_IDENTIFIER,
    BundleError,
    BundleParts,
    load_bundle,
    read_parts,
    write_parts,
)
from edge_infer.runtime import RuntimeUnavailable, tensor_contract
from edge_infer.signing import SIGNATURE_NAME, load_private_key, sign_bundle
from edge_infer.variants import ACCELERATORS, NAME, contract_problem, entry, member_name

EDGETPU_OP = b"edgetpu-custom-op"


class VariantRefused(Exception):
    """The variant cannot join this bundle; one line saying why."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-convert add-variant", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--version", action="version", version=f"edge-convert {__version__}")
    p.add_argument("bundle", help="the bundle to add to (edge-convert's output); rewritten in place unless --out")
    p.add_argument("variant", help="the compiled model (.tflite), e.g. edgetpu_compiler's *_edgetpu.tflite")
    p.add_argument("--name", help="the variant's name (default: the delegate's, e.g. edgetpu)")
    p.add_argument("--delegate", choices=ACCELERATORS, default="edgetpu",
                   help="the [model] delegate this variant is compiled for (default edgetpu)")
    p.add_argument("--out", help="write the bundle with the variant here instead of in place")
    p.add_argument("--sign", metavar="KEY", help="sign the result with this Ed25519 private key (a signed bundle's "
                                                 "signature no longer holds once a member is added)")
    return p


def add_variant(bundle_path: Path, variant_path: Path, name: str, delegate: str, out: Path,
                key_path: str | None = None) -> str:
    """Add (or replace) variant `name` for `delegate`; returns a one-line summary. Raises `VariantRefused`."""
    try:
        bundle = load_bundle(bundle_path)
        data = variant_path.read_bytes()
    except BundleError as exc:
        raise VariantRefused(str(exc)) from None
    except OSError as exc:
        raise VariantRefused(f"{variant_path}: {exc.strerror}") from None
    if data[4:8] != TFLITE_IDENTIFIER:
        raise VariantRefused(f"{variant_path}: not a TFLite model (no TFL3 identifier)")
    if not NAME.match(name) or name == "cpu":
        raise VariantRefused(f"--name {name!r}: lower-case letters, digits, '-' and '_' (and not 'cpu')")
    try:
        problem = contract_problem(tensor_contract(bundle.model_bytes), tensor_contract(data))
    except RuntimeUnavailable as exc:
        raise VariantRefused(f"{variant_path}: {exc}") from None
    if problem:
        raise VariantRefused(f"{variant_path} does not fit {bundle_path}: {problem}")
    parts = read_parts(bundle_path)
    signed = SIGNATURE_NAME in parts.members
    if signed and key_path is None:
        raise VariantRefused(f"{bundle_path} is signed and adding a member breaks its signature: pass --sign KEY")
    doc = bundle.manifest.raw | {"variants": [v for v in bundle.manifest.raw.get("variants", [])
                                              if v.get("name") != name] + [entry(name, delegate, data)]}
    members = {k: v for k, v in parts.members.items() if k not in (SIGNATURE_NAME, member_name(name))}
    members[MANIFEST_NAME] = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
    members[member_name(name)] = data
    write_parts(out, BundleParts(parts.model_bytes, members))
    try:
        load_bundle(out)  # what the device will do with it
    except BundleError as exc:  # pragma: no cover - the checks above make this a bug
        raise VariantRefused(f"the bundle written does not load: {exc}") from None
    if key_path is not None:
        sign_bundle(out, load_private_key(key_path))
    note = "" if delegate != "edgetpu" or EDGETPU_OP in data else \
        " (warning: no edgetpu-custom-op in it: edgetpu_compiler mapped nothing to the TPU, it runs on the CPU)"
    return f"{out}: variant {name!r} for the {delegate} delegate, {len(data)} bytes, contract checked{note}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out or args.bundle)
    try:
        print(add_variant(Path(args.bundle), Path(args.variant), args.name or args.delegate, args.delegate, out,
                          args.sign))
    except (VariantRefused, ValueError) as exc:  # ValueError: a variant entry or a signing key that does not hold
        print(f"edge-convert add-variant: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
