"""Structured logging on top of stdlib logging: key=value lines or JSON lines, to stderr
(journald picks it up) or to a file.

Call sites pass fields via ``extra={"kv": {...}}`` through :func:`event`; values are
quoted when they contain spaces.  Secrets (codes, keys, tokens, passwords, message text)
are never passed here — the review rule is simply "no secret is ever a log field".

Security events (sign-ins, failed codes, FLOOD_WAITs, revocations, bans, admin calls) go
through :func:`security`: logger ``fedgram.security``, event names ``security.*``, so an
operator finds them all with one grep whatever the format.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")

_security = logging.getLogger("fedgram.security")


def _fmt(v: Any) -> str:
    s = str(v)
    if s == "" or any(c in s for c in ' "=\n'):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


def _ts(record: logging.LogRecord) -> str:
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{ts}.{int(record.msecs):03d}Z"


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [
            f"ts={_ts(record)}",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"event={_fmt(record.getMessage())}",
        ]
        kv = getattr(record, "kv", None)
        if isinstance(kv, dict):
            parts.extend(f"{k}={_fmt(v)}" for k, v in kv.items())
        if record.exc_info:
            parts.append("exc=" + _fmt(self.formatException(record.exc_info)))
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``ts``, ``level``, ``logger``, ``event``, ``fields`` (and
    ``exc`` with a traceback) — for log shippers that parse JSON, not key=value."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _ts(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        kv = getattr(record, "kv", None)
        out["fields"] = kv if isinstance(kv, dict) else {}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def setup(level: str = "info", fmt: str = "text", file: Path | None = None) -> None:
    """Send the ``fedgram`` loggers to stderr (``file`` None) or append to ``file``, as
    key=value (``text``) or JSON lines. A file that cannot be opened raises OSError."""
    root = logging.getLogger("fedgram")
    handler: logging.Handler
    if file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(file, encoding="utf-8")
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False


def set_level(level: str) -> None:
    """Change the level of every ``fedgram`` logger live (config reload)."""
    logging.getLogger("fedgram").setLevel(level.upper())


def get(name: str) -> logging.Logger:
    return logging.getLogger(f"fedgram.{name}")


def event(logger: logging.Logger, event_name: str, level: int = logging.INFO, **kv: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, event_name, extra={"kv": kv})


def security(what: str, level: int = logging.INFO, **kv: Any) -> None:
    """A security event an operator greps for: logger ``fedgram.security``, event
    ``security.<what>``. Fields name who and from where; never a secret."""
    if _security.isEnabledFor(level):
        _security.log(level, f"security.{what}", extra={"kv": kv})
