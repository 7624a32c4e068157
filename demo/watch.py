"""Print what a subscriber receives from the demo device, one line per message, until it has seen `--count`
results and rejections (or `--timeout` seconds pass). Ready when it prints 'subscribed'."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def describe(kind: str, doc: dict) -> str:
    who = doc.get("input", {}).get("id", "")
    if kind == "results":
        r = doc["result"]
        confidence = f"confidence {r['confidence']:.2f}, {doc['status']}"
        return f"  result     #{doc['seq']:<4} {who:<22} → {r['label']}  ({confidence})"
    if kind == "rejections":
        return f"  rejection  #{doc['seq']:<4} {who:<22} → {doc['reason']}: {doc['detail']}"
    if kind == "status":
        runtime = doc.get("runtime", {})
        extra = f" runtime {runtime.get('name')} {runtime.get('version')}" if runtime else ""
        return f"  status     {doc['state']}{extra}"
    if kind == "health":
        rejected = sum(doc.get("rejections", {}).values())
        drift = doc.get("drift", {})
        state = drift.get("state", "off") + (f" ({', '.join(drift['alarmed'])})" if drift.get("alarmed") else "")
        return (f"  health     {doc['results']} results ({doc['uncertain']} uncertain), {rejected} rejected, "
                f"drift {state}")
    return f"  {kind}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--topic", default="edge/demo-pi/#")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--timeout", type=float, default=30)
    args = p.parse_args()
    seen = 0
    done = threading.Event()
    ready = threading.Event()

    def on_message(_c, _u, msg: mqtt.MQTTMessage) -> None:
        nonlocal seen
        kind = msg.topic.rsplit("/", 1)[-1]
        if msg.retain:
            return  # an old retained status from an earlier run
        print(describe(kind, json.loads(msg.payload)), flush=True)
        if kind in ("results", "rejections"):
            seen += 1
            if seen >= args.count:
                done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_connect = lambda c, *_: c.subscribe(args.topic, qos=1)
    client.on_subscribe = lambda *_: ready.set()
    client.on_message = on_message
    try:
        client.connect("127.0.0.1", args.port)
    except OSError as exc:
        print(f"watch: cannot reach the broker on port {args.port}: {exc}", file=sys.stderr)
        return 1
    client.loop_start()
    if ready.wait(10):
        print("subscribed", flush=True)
    done.wait(args.timeout)
    time.sleep(0.3)  # let the final offline status arrive
    client.loop_stop()
    return 0 if done.is_set() else 1


if __name__ == "__main__":
    sys.exit(main())
