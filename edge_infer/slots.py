"""A/B model slots: which bundle is active, what to roll back to, and whether the active one is on probation.

The config's `[model].bundle` is the factory model (slot `config`); updates land in `slot-a` or `slot-b` under
`[update].slots_dir`. `state.json` there records the choice so a restart keeps the promoted model. If the
config's bundle changes (its sha256 differs from the one recorded), the owner chose a model by hand: the slot
state is reset and the config's bundle runs.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CONFIG = "config"
SLOTS = ("slot-a", "slot-b")
STATE_NAME = "state.json"


@dataclass
class SlotState:
    factory_sha256: str = ""
    active: str = CONFIG
    previous: str | None = None  # what a rollback returns to (while on probation)
    probation: dict[str, Any] | None = None  # {"since": ts, "baseline": {...}, "clean_stop": bool}
    overrides: dict[str, Any] = field(default_factory=dict)  # remote set-threshold: threshold / thresholds


class Slots:
    def __init__(self, folder: Path | str, config_bundle: Path | str, config_sha256: str) -> None:
        self.folder = Path(folder)
        self.config_bundle = Path(config_bundle)
        self.reset_reason: str | None = None
        self.state = self._load(config_sha256)

    def _load(self, config_sha256: str) -> SlotState:
        path = self.folder / STATE_NAME
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            state = SlotState(**{k: v for k, v in doc.items() if k in SlotState.__dataclass_fields__})
        except FileNotFoundError:
            return SlotState(factory_sha256=config_sha256)
        except (OSError, ValueError, TypeError) as exc:
            self.reset_reason = f"{path} is unreadable ({exc}); running the config's bundle"
            return SlotState(factory_sha256=config_sha256)
        if state.factory_sha256 != config_sha256:
            if state.active != CONFIG:
                self.reset_reason = "the config's [model].bundle changed: it replaces the updated model"
            return SlotState(factory_sha256=config_sha256)
        if state.active not in (CONFIG, *SLOTS) or not self.path(state.active).exists():
            self.reset_reason = f"slot {state.active!r} is missing; running the config's bundle"
            return SlotState(factory_sha256=config_sha256, overrides=state.overrides)
        return state

    def path(self, name: str) -> Path:
        return self.config_bundle if name == CONFIG else self.folder / f"{name}.tflite"

    def candidate(self) -> str:
        """The slot a new bundle goes into: neither the active one nor the one a rollback would need."""
        busy = {self.state.active} | ({self.state.previous} if self.state.probation is not None else set())
        return next(s for s in SLOTS if s not in busy)

    def roll_back(self) -> str:
        """Make the model a rollback returns to active again, end the watch, and delete the slot that failed.
        Returns that slot's name."""
        bad, state = self.state.active, self.state
        state.active, state.previous, state.probation = state.previous or CONFIG, None, None
        self.save()
        if bad != CONFIG:
            self.path(bad).unlink(missing_ok=True)
        return bad

    def save(self) -> None:
        """Write state.json atomically (a power cut leaves the old or the new state, never half)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / STATE_NAME
        tmp = path.with_name(f".{STATE_NAME}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(asdict(self.state), fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # the rename itself durable
            fd = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
