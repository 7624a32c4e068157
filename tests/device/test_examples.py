"""The examples in docs/examples/ against the real thing: every Grafana query names a metric a running daemon's
scrape really has; every Node-RED topic is a message kind of the contract, every field its functions read is
in the JSON Schema, and the functions run (in Node.js) on real messages from a real run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import DIGITS_INT8, REPO, run_cli, write_config
from tests.device.faults import make_frames, wait_until
from tests.helpers.broker import Mosquitto, free_port
from tests.helpers.subscriber import Subscriber

EXAMPLES = REPO / "docs" / "examples"
SCHEMA = json.loads((REPO / "edge_infer" / "schemas" / "messages.schema.json").read_text())["$defs"]
KINDS = {"results": "result", "rejections": "rejection", "events": "event", "status": "status", "health": "health"}


def scrape_names(tmp_path: Path, broker: Mosquitto) -> set[str]:
    """Every sample name of a real scrape of a daemon that processed some inputs (a camera-like live source is
    not needed: families are announced even before their first sample)."""
    port = free_port()
    cfg = write_config(tmp_path / "c.toml", bundle=DIGITS_INT8, source=tmp_path / "in", state=tmp_path / "s",
                       port=broker.port)
    zone = tmp_path / "temp"
    zone.write_text("48000\n")
    cfg.write_text(cfg.read_text() + f'\n[metrics]\nport = {port}\n\n[thermal]\nzone = "{zone}"\n'
                   '\n[gate]\nbaseline = true\nbaseline_warmup = 10\n')
    make_frames(tmp_path / "in", 12)
    (tmp_path / "in" / "empty.png").write_bytes(b"")  # a rejection: its counter has a sample
    proc = subprocess.Popen([sys.executable, "-m", "edge_infer", "run", "--config", str(cfg)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def body() -> str:
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                return ""
        assert wait_until(lambda: 'edge_infer_results_total{path="model"} 12.0' in body()
                          and "edge_infer_rejections_total" in body(), 60), proc.stderr
        return {s.name for f in text_string_to_metric_families(body()) for s in f.samples} | \
            {f.name for f in text_string_to_metric_families(body())}
    finally:
        proc.terminate()
        proc.wait(30)


def test_every_grafana_query_names_a_metric_the_daemon_exports(tmp_path: Path, broker: Mosquitto) -> None:
    dashboard = json.loads((EXAMPLES / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 15 and all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"])
    used = {m for e in exprs for m in re.findall(r"\b((?:edge_infer|process|python)_[a-z0-9_]+)\b", e)}
    exported = scrape_names(tmp_path, broker)
    assert used - exported == set(), f"queries name metrics the daemon does not export: {used - exported}"
    assert {"edge_infer_stage_duration_seconds_bucket", "edge_infer_results_total",
            "process_resident_memory_bytes"} <= used


def properties(schema: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Every property a schema allows and each schema it may have, through $ref, allOf and if/then branches
    (a task's `result` has one shape per task)."""
    if "$ref" in schema:
        return properties(SCHEMA[schema["$ref"].rsplit("/", 1)[1]])
    out: dict[str, list[dict[str, Any]]] = {k: [v] for k, v in schema.get("properties", {}).items()}
    for sub in [*schema.get("allOf", []), *(schema[b] for b in ("then", "else") if b in schema)]:
        for key, values in properties(sub).items():
            out.setdefault(key, []).extend(values)
    return out


def resolves(kind: str, path: list[str]) -> bool:
    schemas: list[dict[str, Any]] = [SCHEMA[kind]]
    for key in path:
        schemas = [found for schema in schemas for found in properties(schema).get(key, [])]
        if not schemas:
            return False
    return True


def flow() -> tuple[list[dict], dict[str, dict]]:
    nodes = json.loads((EXAMPLES / "node-red-flow.json").read_text())
    return nodes, {n["id"]: n for n in nodes}


def kind_of_function(nodes: list[dict], function_id: str) -> str:
    """The message kind whose `mqtt in` node feeds this function."""
    for node in nodes:
        if node["type"] == "mqtt in" and any(function_id in wire for wire in node["wires"]):
            return KINDS[node["topic"].rsplit("/", 1)[1]]
    raise AssertionError(f"{function_id} is fed by no mqtt in node")


def test_node_red_topics_and_fields_follow_the_contract() -> None:
    nodes, by_id = flow()
    inputs = [n for n in nodes if n["type"] == "mqtt in"]
    assert inputs and all(re.fullmatch(r"edge/\+/(results|rejections|events|status|health)", n["topic"])
                          for n in inputs), [n["topic"] for n in inputs]
    assert all(n["datatype"] == "json" and by_id[n["broker"]]["type"] == "mqtt-broker" for n in inputs)
    functions = [n for n in nodes if n["type"] == "function"]
    assert len(functions) == len(inputs)
    assert not resolves("result", ["result", "colour"]) and not resolves("rejection", ["why"])  # it can fail
    for fn in functions:
        kind = kind_of_function(nodes, fn["id"])
        paths = {tuple(m.split(".")[1:]) for m in re.findall(r"\bp((?:\.[a-z_]+)+)", fn["func"])}
        assert paths, fn["name"]
        for path in paths:
            assert resolves(kind, list(path)), f"{fn['name']}: {'.'.join(path)} is not in the {kind} schema"


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_node_red_functions_run_on_real_messages(tmp_path: Path, broker: Mosquitto) -> None:
    cfg = write_config(tmp_path / "c.toml", bundle=DIGITS_INT8, source=REPO / "demo" / "samples",
                       state=tmp_path / "s", port=broker.port)
    sub = Subscriber(broker.port, "edge/#")
    proc = run_cli("run", "--config", str(cfg), "--once")
    assert proc.returncode == 0, proc.stderr
    assert wait_until(lambda: len(sub.of_kind("results")) >= 20 and len(sub.of_kind("rejections")) >= 5, 30)
    messages = {"result": sub.of_kind("results")[0].json(), "rejection": sub.of_kind("rejections")[0].json(),
                "status": next(m.json() for m in sub.messages if m.topic.endswith("/status")),
                "event": {"device_id": "test-pi", "event": "source_lost", "severity": "error",
                          "details": {"source": "porch", "reason": "cannot open the stream"}}}
    nodes, _ = flow()
    for fn in (n for n in nodes if n["type"] == "function"):
        kind = kind_of_function(nodes, fn["id"])
        script = (f"const msg = {{payload: {json.dumps(messages[kind])}}};\n"
                  f"const out = (function(msg) {{\n{fn['func']}\n}})(msg);\n"
                  "process.stdout.write(JSON.stringify(out === null ? null : out.payload));")
        run = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=30)
        assert run.returncode == 0, run.stderr
        out = json.loads(run.stdout)
        assert out is not None and "undefined" not in run.stdout, (fn["name"], out)
        if kind == "result":
            assert out["label"] == messages["result"]["result"]["label"] and out["uncertain"] in (True, False)
        if kind == "rejection":
            assert messages["rejection"]["reason"] in out and messages["rejection"]["input"]["id"] in out
