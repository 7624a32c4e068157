"""Network addresses as the config names them."""

from __future__ import annotations

import ipaddress


def host_port(text: str) -> tuple[str, int] | None:
    """`host:port` split into its parts; None unless there is a host and the port is 1–65535."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        return None
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback IP addresses (127.0.0.0/8, ::1): only this machine can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
