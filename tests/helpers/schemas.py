"""Validate real payloads against the JSON Schemas the repo ships (edge_infer/schemas)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator


@cache
def _validator(kind: str) -> Draft202012Validator:
    doc = json.loads(resources.files("edge_infer").joinpath("schemas/messages.schema.json").read_text())
    Draft202012Validator.check_schema(doc)
    return Draft202012Validator({"$ref": f"#/$defs/{kind}", "$defs": doc["$defs"]})


def validate(kind: str, payload: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError if `payload` is not a valid `kind` message."""
    definition = {"results": "result", "rejections": "rejection", "events": "event", "status": "status",
                  "health": "health", "captures": "capture"}[kind]
    _validator(definition).validate(payload)
