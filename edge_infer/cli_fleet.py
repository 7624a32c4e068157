"""`edge-infer` commands for a fleet and its subscribers: audit a stream, make and check signing keys, send
commands and models to a device over MQTT."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edge_infer.cli_common import AddParser, broker_args, broker_from, subcommand
from edge_infer.config import ConfigError

if TYPE_CHECKING:
    from edge_infer.remote import Remote


def cmd_audit(args: argparse.Namespace) -> int:
    import threading
    import time

    import paho.mqtt.client as mqtt

    from edge_infer.audit import Auditor
    from edge_infer.remote import client_for

    auditor = Auditor(validate=not args.no_schema)
    lock = threading.Lock()
    last = [time.monotonic()]

    def on_message(_c, _u, msg: mqtt.MQTTMessage) -> None:
        with lock:
            auditor.feed(msg.topic, msg.payload)
            last[0] = time.monotonic()

    broker = broker_from(args)
    client = client_for(broker, "audit")
    client.on_connect = lambda c, *_: c.subscribe(args.topic, qos=1)
    client.on_message = on_message
    try:
        client.connect(broker.host, broker.port)
    except OSError as exc:
        raise ConfigError(f"{args.broker}: cannot reach the broker: {exc}") from None
    client.loop_start()
    started = time.monotonic()
    try:
        while time.monotonic() - started < args.duration:
            if args.idle and time.monotonic() - last[0] > args.idle and auditor.messages:
                break
            time.sleep(0.1)
    finally:
        client.disconnect()
        client.loop_stop()
    with lock:
        report = auditor.report()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        if not report["schema_validation"]:
            print("schema validation skipped: pip install jsonschema")
        for device, d in report["devices"].items():
            print(f"{device}: {d['received']} unique messages (seq {d['seq_first']}..{d['seq_last']}), "
                  f"{d['duplicates_dropped']} duplicates dropped, {d['explained_drops']} explained drops, "
                  f"{d['dead_letters']} dead letters, {d['missing']} missing {d['unexplained_gaps'][:5]}")
        for problem in report["invalid"][:10]:
            print(f"invalid: {problem}")
        print("complete" if report["complete"] else "INCOMPLETE")
    return 0 if report["complete"] else 1


def cmd_keygen(args: argparse.Namespace) -> int:
    from edge_infer.signing import generate_keypair, key_id, load_private_key

    try:
        private, public = generate_keypair(args.out)
    except FileExistsError as exc:
        raise ConfigError(str(exc)) from None
    print(f"edge-infer: wrote {private} (private: keep it on the signing machine, mode 0600) and {public} "
          f"(public: list it in each device's [fleet].keys); key id {key_id(load_private_key(private))}")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    from edge_infer.signing import load_private_key, sign_bundle

    try:
        key = load_private_key(args.key)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for bundle in args.bundle:
        print(f"edge-infer: signed {bundle} with key {sign_bundle(bundle, key)}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from edge_infer.golden import read_golden
    from edge_infer.signing import SignatureError, load_public_key, read_parts, verify_bundle

    try:
        keys = [load_public_key(k) for k in args.key]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    failed = 0
    for bundle in args.bundle:
        try:
            signer = verify_bundle(bundle, keys)
        except SignatureError as exc:
            print(f"edge-infer: {bundle}: REFUSED ({exc.reason}): {exc.detail}")
            failed += 1
            continue
        golden = read_golden(read_parts(bundle).members)
        print(f"edge-infer: {bundle}: signed by {signer}; {len(golden) if golden else 'no'} golden inputs")
    return 1 if failed else 0


def _remote(args: argparse.Namespace) -> Remote:
    from edge_infer.remote import Remote

    try:
        return Remote(broker_from(args), args.prefix, args.device)
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"{args.broker}: cannot reach the broker: {exc}") from None


def _print_answer(events: list[dict], timeout: float) -> int:
    if not events:
        print(f"edge-infer: no answer within {timeout:.0f} s (is the device online, and [commands] enabled?)",
              file=sys.stderr)
        return 2
    for event in events:
        print(json.dumps({"event": event.get("event"), **event.get("details", {})}))
    return 1 if any(e.get("event") in ("command_failed", "model_rolled_back") for e in events) else 0


def cmd_command(args: argparse.Namespace) -> int:
    from edge_infer.remote import command_payload

    try:
        command_args = json.loads(args.args) if args.args else {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--args: not JSON: {exc}") from None
    command_id, payload = command_payload(args.name, args.device, command_args, Path(args.key) if args.key else None)
    remote = _remote(args)
    try:
        remote.publish(f"cmd/{args.name}", payload)
        return _print_answer(remote.wait(command_id, args.timeout), args.timeout)
    finally:
        remote.close()


def cmd_push_model(args: argparse.Namespace) -> int:
    from edge_infer.remote import bundle_chunks

    transfer, chunks = bundle_chunks(Path(args.bundle), args.chunk_bytes, Path(args.key), args.device)
    remote = _remote(args)
    try:
        for i, chunk in enumerate(chunks, 1):
            remote.publish("cmd/update-model", chunk)
            print(f"\redge-infer: sent {i}/{len(chunks)} messages", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        also = ("model_confirmed", "model_rolled_back") if args.wait_watch else ()
        return _print_answer(remote.wait(transfer, args.timeout, also), args.timeout)
    finally:
        remote.close()


def _remote_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", required=True, help="the device's id ([device].id)")
    broker_args(p)
    p.add_argument("--prefix", default="edge", help="the devices' [mqtt].topic_prefix (edge)")
    p.add_argument("--timeout", type=float, default=60.0, help="wait this long for the answer, in seconds (60)")


def add_parsers(add_parser: AddParser) -> None:
    """audit, keygen, sign, verify, command and push-model."""
    audit = subcommand(add_parser, "audit", "subscribe and check that every device's stream is complete",
                       "edge-infer audit --broker broker.lan:1883 --username ha --password-file ~/.mqtt-pw "
                       "--idle 10 --json",
                       "For subscribers: gaps in seq that no outbox_dropped event explains, duplicates, invalid "
                       "messages.")
    broker_args(audit)
    audit.add_argument("--topic", default="edge/#", help="the topics to check (edge/#)")
    audit.add_argument("--duration", type=float, default=60.0, help="listen at most this long, in seconds (60)")
    audit.add_argument("--idle", type=float, default=0.0, help="stop after this many quiet seconds (0: never)")
    audit.add_argument("--no-schema", action="store_true", help="skip JSON Schema validation")
    audit.add_argument("--json", action="store_true", help="print the report as JSON")
    audit.set_defaults(func=cmd_audit)
    keygen = subcommand(add_parser, "keygen", "make a fleet signing key pair (<out>.key, <out>.pub)",
                        "edge-infer keygen --out fleet")
    keygen.add_argument("--out", required=True, help="path stem, e.g. fleet")
    keygen.set_defaults(func=cmd_keygen)
    sign = subcommand(add_parser, "sign", "sign bundles with the fleet's private key",
                      "edge-infer sign model-v2.tflite --key fleet.key")
    sign.add_argument("bundle", nargs="+", help="bundles to sign (in place)")
    sign.add_argument("--key", required=True, help="private key (PEM)")
    sign.set_defaults(func=cmd_sign)
    verify = subcommand(add_parser, "verify", "check bundles' signatures as a device would",
                        "edge-infer verify model-v2.tflite --key fleet.pub")
    verify.add_argument("bundle", nargs="+", help="bundles to check")
    verify.add_argument("--key", required=True, action="append", help="public key (PEM file or base64); repeatable")
    verify.set_defaults(func=cmd_verify)
    command = subcommand(add_parser, "command", "send a command to a device and print its answer",
                         "edge-infer command set-threshold --args '{\"threshold\": 0.8}' --key fleet.key "
                         "--device kitchen-pi --broker broker.lan:1883")
    command.add_argument("name", help="reload, snapshot, set-threshold or update-model")
    command.add_argument("--args", help='JSON object, e.g. \'{"threshold": 0.8}\'')
    command.add_argument("--key", help="fleet private key to sign with (devices with [commands] auth = \"signed\")")
    _remote_args(command)
    command.set_defaults(func=cmd_command)
    push = subcommand(add_parser, "push-model", "send a signed bundle to a device over MQTT and print what it did",
                      "edge-infer push-model model-v2.tflite --key fleet.key --device kitchen-pi "
                      "--broker broker.lan:1883 --wait-watch")
    push.add_argument("bundle", help="the signed bundle to send")
    push.add_argument("--chunk-bytes", type=int, default=96 * 1024,
                      help="raw bytes per chunk message (96 KiB: about 128 KiB on the wire)")
    push.add_argument("--key", required=True,
                      help="fleet private key: signs the transfer header that the device checks before it writes")
    push.add_argument("--wait-watch", action="store_true", help="also wait for the watch window's verdict")
    _remote_args(push)
    push.set_defaults(func=cmd_push_model)
