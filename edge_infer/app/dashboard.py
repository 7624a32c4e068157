"""What a dashboard shows between results, as latest values on the sink (MQTT: retained topics, re-sent on every
connect; never stored in the outbox):

- `state/<label>`: `ON` for the label the debounced state holds (a detector's: each label it saw), `OFF` for every
  other — published only when the debounced state changes (`[decide] debounce`), so an automation sees one
  message per change;
- `image`: the latest input with its result drawn on, as a raw JPEG of at most `[mqtt] image_max_bytes`, every
  `image_interval` seconds and, with `image_on_change`, when the debounced state changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from edge_infer.messages import state_kind
from edge_infer.pipeline import Outcome
from edge_infer.sections import MqttConfig
from edge_infer.sinks import Sink
from edge_infer.sources import Sample


class Dashboard:
    """Fed every committed outcome, in order (one thread); decides what the latest values are."""

    def __init__(self, mqtt_cfg: MqttConfig, sink: Sink, labels: Callable[[], tuple[str, ...]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg, self.sink, self.labels, self.clock = mqtt_cfg, sink, labels, clock
        self._last_image: float | None = None

    def observe(self, sample: Sample, outcome: Outcome) -> None:
        """One committed outcome (a result or a rejection)."""
        if outcome.result is None or outcome.decision is None:
            return
        state = outcome.state
        changed = state is not None and state.changed
        if changed:
            assert state is not None
            value = state.value or ""
            present = {value, *value.split(",")}  # a label, or the set of labels a detector saw ("cat,dog")
            for label in self.labels():
                self.sink.retain(state_kind(label), b"ON" if label in present else b"OFF")
        source = sample.data if sample.data is not None else sample.image
        if source is None:  # a sensor window: no picture
            return
        now = self.clock()
        due = self.cfg.image_interval > 0 and (self._last_image is None or
                                               now - self._last_image >= self.cfg.image_interval)
        if due or (changed and self.cfg.image_on_change):
            from edge_infer.snapshot import annotated, jpeg  # Pillow's drawing: only when a picture is due

            self._last_image = now
            self.sink.retain("image", jpeg(annotated(source, outcome.result, outcome.decision),
                                           self.cfg.image_max_bytes))
