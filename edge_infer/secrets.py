"""Passwords are never read from the config file: from an environment variable, then a systemd credential
(`LoadCredential=`, read from `$CREDENTIALS_DIRECTORY`), then a file the config names. One rule for every
secret the device holds (the MQTT password, an HTTP camera's password)."""

from __future__ import annotations

import os
from pathlib import Path


class SecretUnreadable(Exception):
    """A password file exists but cannot be read (one line)."""


def read_secret(env: str, credential: str, path: str | None) -> str | None:
    """The secret from `$env`, the systemd credential `credential`, or the file `path` — the first that is
    there; None when none is. Surrounding whitespace is stripped (a file's trailing newline)."""
    if os.environ.get(env):
        return os.environ[env]
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    candidates = [Path(creds) / credential] if creds else []
    if path:
        candidates.append(Path(path))
    for candidate in candidates:
        try:
            return candidate.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise SecretUnreadable(f"{candidate}: cannot read: {exc.strerror}") from None
    return None
