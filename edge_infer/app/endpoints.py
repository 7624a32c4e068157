"""The daemon's HTTP endpoints, each off unless configured: Prometheus `/metrics` (`[metrics] port`) and the live
view (`[web] enabled`). Started before anything else runs, so a port in use is a one-line error; each module
is imported only when its endpoint is on (the view's state is not even kept otherwise)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edge_infer.config import Config, ConfigError
from edge_infer.hosts import is_loopback
from edge_infer.metrics import HealthCollector, LatencyWindow, MetricsServer
from edge_infer.pipeline import Outcome
from edge_infer.secrets import SecretUnreadable, read_secret
from edge_infer.sources import Sample

if TYPE_CHECKING:
    from edge_infer.web.server import WebServer
    from edge_infer.web.view import LiveView

log = logging.getLogger(__name__)
TOKEN_ENV = "EDGE_INFER_WEB_TOKEN"
TOKEN_CREDENTIAL = "web_token"  # systemd LoadCredential=web_token:/etc/edge-infer/web_token


def web_token(cfg: Config) -> str | None:
    """The live view's token (environment, systemd credential, `token_file`); ConfigError when the view listens
    beyond loopback without one."""
    try:
        token = read_secret(TOKEN_ENV, TOKEN_CREDENTIAL, cfg.web.token_file)
    except SecretUnreadable as exc:
        raise ConfigError(f"{cfg.path}: [web].token_file: {exc}") from None
    if not token and not is_loopback(cfg.web.bind):
        raise ConfigError(f"{cfg.path}: [web]: bind = {cfg.web.bind!r} opens the view to the network: set a token "
                          f"({TOKEN_ENV}, the systemd credential {TOKEN_CREDENTIAL} or token_file)")
    return token or None


class Endpoints:
    """Metrics and the live view for one daemon: `start` (ConfigError when a port is taken), `observe` each
    committed outcome (nothing happens unless the view is on), `stop`."""

    def __init__(self, cfg: Config, scrape: Callable[[], dict[str, Any]], latency: LatencyWindow,
                 status: Callable[[], dict[str, Any]]) -> None:
        self.cfg, self.scrape, self.latency, self.status = cfg, scrape, latency, status
        self.metrics: MetricsServer | None = None
        self.web: WebServer | None = None
        self.view: LiveView | None = None
        if cfg.web.enabled:
            from edge_infer.web.view import LiveView

            self.token = web_token(cfg)
            self.view = LiveView()

    def start(self) -> None:
        m, w = self.cfg.metrics, self.cfg.web
        if m.port:
            try:
                self.metrics = MetricsServer(m.bind, m.port, HealthCollector(self.scrape, self.latency)).start()
            except OSError as exc:
                raise ConfigError(f"{self.cfg.path}: [metrics]: cannot listen on {m.bind}:{m.port}: "
                                  f"{exc.strerror}") from None
            log.info("event=metrics_listening address=%s:%d", m.bind, self.metrics.port)
        if self.view is not None:
            from edge_infer.web.server import start_web

            try:
                self.web = start_web(w.bind, w.port, self.view, self.status, self.token)
            except OSError as exc:
                self.stop()
                raise ConfigError(f"{self.cfg.path}: [web]: cannot listen on {w.bind}:{w.port}: "
                                  f"{exc.strerror}") from None

    def observe(self, sample: Sample, outcome: Outcome) -> None:
        if self.view is not None:
            self.view.observe(sample, outcome)

    def stop(self) -> None:
        for server in (self.metrics, self.web):
            if server is not None:
                server.stop()
        self.metrics = self.web = None
