"""Log lines: one per event, logfmt (`[log] format = "kv"`, the default) or JSON, on stderr.

Every line carries `ts=` (RFC 3339, UTC), `level=` (debug, info, warning, error — lower case in both formats) and
`logger=`, then the message's own `event=name key=value …` pairs. Under systemd, when stderr *is* the journal
(`$JOURNAL_STREAM` names its device and inode), `ts` is left to journald and each line starts with its syslog
priority (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug), so `journalctl -p warning` filters by level.

`capture_stray_output()` (the daemon) routes what native code writes straight to file descriptor 2 — the TFLite
runtime's `INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`, a library's warning — through a pipe into
the same format (`logger=native`), so no unformatted line reaches the journal. Secrets are never logged:
passwords are read from files or credentials and never formatted into a message.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

PAIR = re.compile(r"""(\w+)=('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\S+)""")
PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}
NATIVE_LEVEL = re.compile(r"^(INFO|WARNING|ERROR|FATAL|W|E|I)[:\s]\s*(.*)$")
_output: TextIO | None = None  # the real stderr once stray output is captured (fd 2 is then a pipe)


def to_journal(stream: TextIO) -> bool:
    """True when `stream` is the journal's own stream socket (systemd's documented `$JOURNAL_STREAM` check)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return bool(expected) and expected == f"{st.st_dev}:{st.st_ino}"


def _stamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class KvFormatter(logging.Formatter):
    """`ts=… level=… logger=… message` (logfmt), with the journal's priority prefix instead of `ts` there."""

    def __init__(self, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        head = f"<{PRIORITY.get(record.levelname, 6)}>" if self.journal else f"ts={_stamp(record)} "
        line = f"{head}level={record.levelname.lower()} logger={record.name} {record.getMessage()}"
        if record.exc_info:
            line += " exception=" + json.dumps(self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    def __init__(self, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        doc: dict[str, object] = {"level": record.levelname.lower(), "logger": record.name}
        if not self.journal:
            doc["ts"] = _stamp(record)
        for key, value in PAIR.findall(message):
            doc[key] = value[1:-1] if value[:1] in "'\"" and value[-1:] == value[:1] else value
        doc["msg"] = message
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        prefix = f"<{PRIORITY.get(record.levelname, 6)}>" if self.journal else ""
        return prefix + json.dumps(doc, ensure_ascii=False)


def setup_logging(level: str, fmt: str = "kv") -> None:
    """Configure the root logger (again on a reload): stderr, which journald captures under systemd."""
    stream = _output or sys.stderr
    journal = to_journal(stream)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(journal) if fmt == "json" else KvFormatter(journal))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))


def _native_record(line: str) -> tuple[int, str]:
    """A native library's stderr line → (level, text): TFLite's `INFO: …` / `WARNING: …` / `ERROR: …`, glog's
    `W1203 …`; anything else is a warning (it was not meant to be seen in normal running)."""
    match = NATIVE_LEVEL.match(line)
    if not match:
        return logging.WARNING, line
    tag = match.group(1)[0]
    return {"I": logging.INFO, "W": logging.WARNING}.get(tag, logging.ERROR), match.group(2) or line


def capture_stray_output() -> Callable[[], None]:
    """Send file descriptor 2 through a pipe whose lines are logged (`logger=native event=stderr text=…`);
    logging keeps writing to the real stderr. Returns `restore`: fd 2 back, the pipe drained (also at exit)."""
    global _output
    if _output is not None:
        return lambda: None
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    _output = os.fdopen(real, "w", buffering=1, encoding="utf-8", errors="replace")
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(_output)
    log = logging.getLogger("native")

    def pump() -> None:
        with os.fdopen(read_end, "r", encoding="utf-8", errors="replace") as pipe:
            for line in pipe:
                if line.strip():
                    level, text = _native_record(line.rstrip("\n"))
                    log.log(level, "event=stderr text=%s", json.dumps(text, ensure_ascii=False))

    reader = threading.Thread(target=pump, name="stderr", daemon=True)
    reader.start()

    def restore() -> None:
        global _output
        if _output is None:
            return
        sys.stderr.flush()
        os.dup2(_output.fileno(), 2)  # the write end's last copy is gone: the reader sees the end and drains
        reader.join(5)
        _output = None

    import atexit

    atexit.register(restore)
    return restore
