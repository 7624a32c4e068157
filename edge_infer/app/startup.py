"""Start-up choices made once, before anything runs: the process limits, the fleet keys, the A/B slots and
which model runs (the active slot's, re-verified, else the config's; a model on probation at a crash is rolled
back). Each choice that is worth knowing about is returned as a note, announced once the writer runs."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from edge_infer.bundle import BundleError, read_manifest_doc
from edge_infer.config import Config, ConfigError
from edge_infer.crashes import QUARANTINE_AFTER, CrashRecord
from edge_infer.memory import limit_arenas
from edge_infer.model import Model, model_from_config
from edge_infer.runtime import RuntimeUnavailable
from edge_infer.serving import model_settings
from edge_infer.signing import SignatureError, load_public_key, verify_bundle
from edge_infer.slots import CONFIG, Slots

log = logging.getLogger(__name__)
Note = tuple[str, dict[str, Any]]  # an event to announce once the daemon runs: (name, details)


def prepare_process(cfg: Config) -> None:
    """Before any thread starts: the malloc arena limit, a umask that keeps what the daemon writes private, and
    a writable `[device].state_dir` (a one-line config error otherwise)."""
    limit_arenas()  # see edge_infer.memory
    os.umask(0o027)  # outbox, state and kept inputs are never world-readable
    folder = Path(cfg.device.state_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{cfg.path}: [device].state_dir: cannot write to {folder}: {exc.strerror} (create it "
                          f"for the daemon's user, or choose another folder)") from None


def fleet_keys(cfg: Config) -> list:
    """`[fleet].keys`, loaded (only when updates or signed commands need them: that imports cryptography)."""
    if not (cfg.update.enabled or (cfg.commands.enabled and cfg.commands.auth == "signed")):
        return []
    try:
        return [load_public_key(k) for k in cfg.fleet.keys]
    except ValueError as exc:
        raise ConfigError(f"{cfg.path}: [fleet].keys: {exc}") from None


def open_slots(cfg: Config, notes: list[Note]) -> Slots | None:
    """The slot state (None unless updates or commands are on: nothing else needs it)."""
    if not (cfg.update.enabled or cfg.commands.enabled):
        return None
    bundle = Path(cfg.model.bundle)
    try:
        sha = str(read_manifest_doc(bundle)[1]["model"]["sha256"])
    except (BundleError, KeyError, TypeError):
        sha = hashlib.sha256(bundle.read_bytes()).hexdigest() if bundle.is_file() else ""
    slots = Slots(cfg.update.slots_dir, bundle, sha)
    if slots.reset_reason:
        log.warning("event=model_slots_reset reason=%r", slots.reset_reason)
        notes.append(("model_slots_reset", {"reason": slots.reset_reason}))
        slots.save()
    return slots


def start_model(cfg: Config, slots: Slots | None, keys: list, notes: list[Note]) -> tuple[Model, Model | None]:
    """The model to run, and the previous one when the running one is still being watched after a promotion."""
    if slots is None:
        return model_from_config(cfg.model), None
    state = slots.state
    settings = model_settings(cfg, state.overrides)
    if state.probation is not None and not state.probation.get("clean_stop"):
        bad = slots.roll_back()
        reason = "the daemon stopped without a clean shutdown while the new model was being watched"
        log.error("event=model_rolled_back slot=%s reason=%r", bad, reason)
        notes.append(("model_rolled_back", {"reason": reason, "from_slot": bad, "slot": state.active}))
    if state.active != CONFIG:
        try:
            if cfg.update.enabled:
                verify_bundle(slots.path(state.active), keys)
            model = model_from_config(dataclasses.replace(settings, bundle=str(slots.path(state.active))))
        except (SignatureError, BundleError, RuntimeUnavailable) as exc:
            reason = f"slot {state.active} cannot run ({exc}); running the config's bundle"
            log.error("event=model_slot_unusable reason=%r", reason)
            notes.append(("model_slot_unusable", {"slot": state.active, "reason": reason}))
            state.active, state.previous, state.probation = CONFIG, None, None
            slots.save()
        else:
            previous = None
            if state.probation is not None and state.previous is not None:
                with contextlib.suppress(BundleError, RuntimeUnavailable):
                    previous = model_from_config(dataclasses.replace(settings, bundle=str(slots.path(state.previous))))
            return model, previous
    return model_from_config(settings), None


def after_crash(cfg: Config, model: Model, notes: list[Note]) -> tuple[CrashRecord, float | None]:
    """How the last run died, when a fatal signal ended it (a `service_crashed` note); a crash with an input in hand
    counts against that input (quarantined at the second); when it died inside a call to the accelerator, this
    start gives the accelerator up and rests it before the first retry (`edge_infer.crashes`). Returns the record
    to arm and that rest in seconds (None: the usual back-off)."""
    record = CrashRecord(cfg.device.state_dir)
    crash = record.previous
    if crash is None:
        return record, None
    details = crash.to_dict()
    if record.input is not None:  # the thread it died on had this input in hand
        crashes = record.strike()
        details |= {"input": record.input, "input_crashes": crashes, "quarantined": crashes >= QUARANTINE_AFTER}
    log.error("event=service_crashed error=%r where=%r in_accelerator=%s input=%r input_crashes=%s (the last run "
              "died of a fatal signal; every thread's stack: %s)", crash.error, crash.where, crash.in_accelerator,
              details.get("input"), details.get("input_crashes"), record.kept)
    notes.append(("service_crashed", details))
    engine = model.engine
    if not crash.in_accelerator or not (engine.may_fall_back or engine.fallback_from is not None):
        return record, None  # not the accelerator's doing, or `delegate_fallback = false`: it is used as configured
    rest = record.accelerator_rest()
    wanted = engine.fallback_from.wanted.delegate if engine.fallback_from is not None else engine.settings.delegate
    engine.give_up(f"the service died in the {wanted} delegate last time ({crash.error}, in {crash.where}); "
                   f"it rests {rest:g} s before the next try")
    return record, rest
