"""Log lines: one per event, `key=value` (default) or JSON (`[log] format = "json"`), on stderr.

Under systemd (`$JOURNAL_STREAM` set) the timestamp is left to journald. Messages are written as
`event=name key=value …`; the JSON form parses those pairs into fields. Secrets are never logged: passwords are
read from files or credentials and never formatted into a message.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time

PAIR = re.compile(r"""(\w+)=('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\S+)""")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        doc: dict[str, object] = {"level": record.levelname.lower(), "logger": record.name}
        if "JOURNAL_STREAM" not in os.environ:
            doc["ts"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + \
                f".{int(record.msecs):03d}Z"
        for key, value in PAIR.findall(message):
            doc[key] = value[1:-1] if value[:1] in "'\"" and value[-1:] == value[:1] else value
        doc["msg"] = message
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def setup_logging(level: str, fmt: str = "kv") -> None:
    """Configure the root logger once (stderr, which journald captures under systemd)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        stamp = "" if "JOURNAL_STREAM" in os.environ else "%(asctime)s "
        handler.setFormatter(logging.Formatter(stamp + "level=%(levelname)s logger=%(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
