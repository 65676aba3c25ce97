"""Structured key=value logging to stderr on top of stdlib logging.

Call sites pass fields via ``extra={"kv": {...}}`` through :func:`event`; values are
quoted when they contain spaces.  Secrets (codes, keys, tokens, message text) are never
passed here — the review rule is simply "no secret is ever a log field".
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

LEVELS = ("debug", "info", "warning", "error")


def _fmt(v: Any) -> str:
    s = str(v)
    if s == "" or any(c in s for c in ' "=\n'):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"ts={ts}.{int(record.msecs):03d}Z",
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


def setup(level: str = "info") -> None:
    root = logging.getLogger("fedgram")
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False


def get(name: str) -> logging.Logger:
    return logging.getLogger(f"fedgram.{name}")


def event(logger: logging.Logger, event_name: str, level: int = logging.INFO, **kv: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, event_name, extra={"kv": kv})
