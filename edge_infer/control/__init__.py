"""The control plane: remote commands, config reloads and model updates.

Everything here acts on the serving port (`edge_infer.serving.Serving`) and reports through an event callable;
nothing here imports the app (`edge_infer.app`) that wires it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

AddEvent = Callable[[str, dict[str, Any]], None]  # one `events` message: (name, details)
