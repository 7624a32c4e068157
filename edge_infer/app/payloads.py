"""What a finished sample becomes in the outbox: a `results` or `rejections` message, or nothing to publish
(suppressed, deferred, an unpublished rejection: counted and checkpointed all the same)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from edge_infer.messages import Identity, rejection_payload, result_payload
from edge_infer.pipeline import Outcome
from edge_infer.sources import Sample


def payload_for(sample: Sample, outcome: Outcome, identity: Identity, msg_id: str, escalated_model: Any,
                publish_rejections: bool) -> tuple[str, Callable[[int], bytes] | None]:
    """The outbox kind and payload builder of a finished sample (None: counted, not published). The builder
    must not pin the bytes, the frame or the window."""
    sample = dataclasses.replace(sample, data=None, image=None, window=None, times=None)
    result, decision, verdict = outcome.result, outcome.decision, outcome.verdict
    decided_by = escalated_model if decision is not None and decision.path == "escalated" else None
    if result is not None and decision is not None and decision.action == "publish":
        return "results", lambda seq: result_payload(identity, seq, msg_id, sample, result, decision,
                                                     outcome.latency_ms, outcome.state, decided_by, outcome.ran_on)
    if result is None and publish_rejections:
        return "rejections", lambda seq: rejection_payload(identity, seq, msg_id, sample, verdict)
    return ("results" if result is not None else "rejections"), None
