"""What every `edge-infer` subcommand module shares: how a subcommand is declared (a summary, a description and
an example, so `--help` always shows one) and the broker options (address, login, TLS) for every command that
talks to a broker."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from edge_infer.config import ConfigError
from edge_infer.hosts import host_port

AddParser = Callable[..., argparse.ArgumentParser]
LOG_LEVELS = ("debug", "info", "warning", "error")


def subcommand(add_parser: AddParser, name: str, summary: str, example: str,
               details: str = "") -> argparse.ArgumentParser:
    """A subcommand whose `--help` says what it does, and how it is used (one or more example lines)."""
    description = f"{summary[0].upper()}{summary[1:]}." + (f" {details}" if details else "")
    return add_parser(name, help=summary, description=description,
                      epilog="example:\n" + "\n".join(f"  {line}" for line in example.splitlines()),
                      formatter_class=argparse.RawDescriptionHelpFormatter)


def broker_args(p: argparse.ArgumentParser) -> None:
    """The broker options, spelled the same for every command that connects to one."""
    p.add_argument("--broker", default="127.0.0.1:1883", help="the broker, host:port (127.0.0.1:1883)")
    p.add_argument("--username", help="log in as this user (with --password-file)")
    p.add_argument("--password-file", help="a file holding the password (never pass a password on the command line)")
    p.add_argument("--tls", action="store_true", help="connect with TLS (port 8883 on most brokers)")
    p.add_argument("--ca-file", help="with --tls: the CA certificate that signed the broker's (default: the system's)")


def broker_from(args: argparse.Namespace):
    """`broker_args` → a `Broker`; one-line errors for a bad address or an unreadable password file."""
    from edge_infer.remote import Broker

    address = host_port(args.broker)
    if address is None:
        raise ConfigError(f"--broker {args.broker!r}: expected host:port, e.g. 127.0.0.1:1883")
    try:
        password = Path(args.password_file).read_text().strip() if args.password_file else None
    except OSError as exc:
        raise ConfigError(f"--password-file {args.password_file}: {exc.strerror}") from None
    return Broker(*address, args.username, password, args.tls, args.ca_file)
