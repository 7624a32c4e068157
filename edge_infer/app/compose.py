"""Build steps the daemon is wired from: each takes the config and what earlier steps built, and returns one
part. No step runs anything; `edge_infer.app.daemon.Daemon.__init__` calls them in order."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_infer import __version__
from edge_infer.config import Config, ConfigError
from edge_infer.control import AddEvent
from edge_infer.delegates import CPU
from edge_infer.gates.baseline import SceneBaseline
from edge_infer.homeassistant import Announce, discovery_messages
from edge_infer.inbox import Inbox
from edge_infer.messages import Identity, event_payload, status_payload
from edge_infer.model import Model, model_from_config
from edge_infer.outbox import Limits, Outbox
from edge_infer.pipeline import Policy
from edge_infer.review import review_store
from edge_infer.serving import Serving
from edge_infer.sinks import Sink
from edge_infer.sinks.mqtt import Publisher
from edge_infer.sinks.mqtt_settings import settings_from_config
from edge_infer.slots import Slots
from edge_infer.sources import Source, SourceError, make_source
from edge_infer.uploader import CaptureUploader

if TYPE_CHECKING:  # imported when turned on: a smaller daemon otherwise
    from edge_infer.control.commands import Commands, Handler
    from edge_infer.control.updates import Updater

log = logging.getLogger(__name__)
EventBuilder = Callable[[int, str, str, dict], bytes]


def serving(cfg: Config, model: Model, slots: Slots | None) -> Serving:
    """The serving port: the model, its pipeline with the `[decide]` policy (and escalation model) and the
    `[gate]` review folder, its drift monitor."""
    d = cfg.decide
    second = None
    if d.fallback == "escalate":
        second = model_from_config(cfg.model, d.escalate_to, d.escalate_threshold)
    policy = Policy(
        fallback=d.fallback, escalate_to=second, escalate_fallback=d.escalate_fallback, debounce=d.debounce,
        uncertain=review_store(d.uncertain_dir, d.keep_uncertain, d.keep_uncertain_bytes),
    )
    rejected = review_store(cfg.gate.rejected_dir, cfg.gate.keep_rejected, cfg.gate.keep_rejected_bytes)
    baseline = SceneBaseline(Path(cfg.device.state_dir) / "baseline.json", cfg.gate.baseline_warmup) \
        if cfg.gate.baseline and model.kind == "image" else None
    return Serving(cfg, model, policy, rejected, slots, baseline)


def event_builder(port: Serving) -> EventBuilder:
    """How an `events` payload is built when it is committed (with the identity of that moment)."""
    def build(seq: int, msg_id: str, name: str, details: dict) -> bytes:
        return event_payload(port.identity, seq, msg_id, name, details)
    return build


def outbox_opener(cfg: Config, events: EventBuilder | None = None, receipts: bool = False) -> Callable[[], Outbox]:
    """Opens one connection to the outbox (each thread has its own). With `receipts`, the sink's: it only deletes
    what the receiver acknowledged and dead-letters what it refused, and commits that without waiting for the disk
    (`durability = "normal"`) whatever `[outbox].durability` says — a power cut may undo the last of it, and those
    messages are sent again (at least once, the same msg_id); one fsync per batch of acknowledgements less (an SD
    card's wear and latency). What the writer stores keeps the configured durability."""
    box = cfg.outbox
    return lambda: Outbox(box.path, "normal" if receipts else box.durability, _limits(cfg), event_builder=events)


def primary_outbox(cfg: Config, events: EventBuilder) -> Outbox:
    """The writer's connection, opened first: it checks the file and replaces a corrupt one (and says so)."""
    box = cfg.outbox
    primary = Outbox(box.path, box.durability, _limits(cfg), event_builder=events, primary=True)
    if primary.replaced is not None:
        log.error("event=outbox_replaced %s", " ".join(f"{k}={v!r}" for k, v in primary.replaced.items()))
        primary.add_event("outbox_replaced", primary.replaced)
    return primary


def _limits(cfg: Config) -> Limits:
    box = cfg.outbox
    return Limits(max_rows=box.max_rows, max_bytes=box.max_bytes, ttl_s=float(box.ttl),
                  policy=box.policy)


def source(cfg: Config, model: Model) -> Source:
    """The `[source]` plug-in, which must give the input kind the model takes."""
    src = make_source(cfg.source, model.manifest.input)
    if src.kind != model.kind:
        raise SourceError(f"{cfg.path}: [source].type: a {cfg.source.type!r} source gives {src.kind} input, but "
                          f"the bundle's model takes {model.kind} input")
    return src


def uploader(cfg: Config, port: Serving) -> CaptureUploader | None:
    """Kept inputs go out over MQTT when the outbox is empty, if `[decide].upload` asks for it."""
    if not cfg.decide.upload:
        return None
    roots = {}
    if cfg.decide.keep_uncertain:
        roots["uncertain"] = cfg.decide.uncertain_dir
    if cfg.gate.keep_rejected:
        roots["rejected"] = cfg.gate.rejected_dir
    if not roots:
        raise ConfigError(f"{cfg.path}: [decide].upload: nothing is kept to upload (set [decide].keep_uncertain "
                          "or [gate].keep_rejected)")

    def envelope() -> dict[str, Any]:
        i: Identity = port.identity
        return {"v": 1, "device_id": i.device_id, "boot_id": i.boot_id, "model": i.model}

    return CaptureUploader(roots, envelope, cfg.decide.upload_max_bytes, cfg.decide.upload_chunk_bytes)


def accelerator_watched(cfg: Config) -> bool:
    """An accelerator delegate with a CPU fallback: the daemon watches for it to go away and come back."""
    return cfg.model.delegate not in CPU and cfg.model.delegate_fallback


def watched_conditions(cfg: Config, source: Any, port: Serving) -> tuple[str, ...]:
    """The problems this daemon can raise that Home Assistant shows as their own entities: a live source that
    reconnects (`health`), the camera baseline, an accelerator with a CPU fallback."""
    return tuple(name for name, on in (
        ("source", getattr(source, "health", None) is not None),
        ("scene", port.pipeline.baseline is not None),
        ("accelerator", accelerator_watched(cfg))) if on)


def discovery(cfg: Config, port: Serving, conditions: tuple[str, ...] = ()) -> list[tuple[str, bytes]]:
    """Home Assistant discovery for the model now served (nothing when `[homeassistant].discovery` is off):
    its results and diagnostics, the `conditions` it can raise, its labels' debounced states (with `[decide]
    debounce`), the picture (with `[mqtt] image_*`) and buttons for the commands Home Assistant may send
    (`[commands] auth = "acl"`: it cannot sign)."""
    if not cfg.homeassistant.discovery:
        return []
    image = port.model.kind == "image" and (cfg.mqtt.image_interval > 0 or cfg.mqtt.image_on_change)
    buttons = ("reload", "snapshot") if cfg.commands.enabled and cfg.commands.auth == "acl" else ()
    announce = Announce(conditions, port.model.manifest.labels if cfg.decide.debounce else (), image, buttons,
                        cfg.health.interval)
    return discovery_messages(cfg.homeassistant.prefix, cfg.mqtt.topic_prefix, cfg.device.id,
                              port.model.task, port.identity.model, announce)


def sink(cfg: Config, port: Serving, open_outbox: Callable[[], Outbox], inbox: Inbox | None,
         conditions: tuple[str, ...] = ()) -> Sink:
    """The `[sink]` that drains the outbox: MQTT (the default) or a webhook (imported only when chosen)."""
    if cfg.sink.type == "webhook":
        from edge_infer.sinks.webhook import WebhookSink, settings_from_config

        return WebhookSink(settings_from_config(cfg.sink, cfg.device.id), open_outbox)
    return publisher(cfg, port, open_outbox, inbox, conditions)


def publisher(cfg: Config, port: Serving, open_outbox: Callable[[], Outbox], inbox: Inbox | None,
              conditions: tuple[str, ...] = ()) -> Publisher:
    """The MQTT sink: its own outbox connection, the retained status, Home Assistant discovery, kept-input
    uploads and, with `inbox`, the command topics."""
    mqtt_sink = Publisher(
        settings_from_config(cfg.mqtt, cfg.device.id, cfg.commands.max_message_bytes),
        open_outbox,
        birth=lambda problems: status_payload(port.identity, "online", version=__version__,
                                              runtime=port.model.engine.runtime.to_dict(), problems=problems),
        will=lambda: status_payload(port.identity, "offline"),
        uploader=uploader(cfg, port),
        commands=inbox,
    )
    mqtt_sink.discovery = discovery(cfg, port, conditions)
    return mqtt_sink


def updater(cfg: Config, slots: Slots | None, keys: list, port: Serving, add_event: AddEvent,
            live_latency: Callable[[], dict[str, Any]], previous: Model | None) -> Updater | None:
    """Model updates (imported only when `[update].enabled`): leftovers refused, a watch resumed."""
    if not cfg.update.enabled or slots is None:
        return None
    from edge_infer.control.updates import Updater

    updates = Updater(cfg.update, slots, keys, port, add_event, live_latency)
    updates.recover()
    updates.resume(previous)
    return updates


def commands(cfg: Config, keys: list, add_event: AddEvent, inbox: Inbox | None, handlers: dict[str, Handler],
             updates: Updater | None) -> Commands | None:
    """Remote commands (when `[commands].enabled`)."""
    if not cfg.commands.enabled:
        return None
    from edge_infer.control.commands import Commands

    return Commands(cfg, keys, add_event, inbox, handlers, updates)
