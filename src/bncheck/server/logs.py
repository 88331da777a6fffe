"""Logging in one structured format: JSON lines (time, level, logger, request id, message and the
line's own fields) from python-json-logger, for bncheck's lines and uvicorn's alike; or a
human format for a terminal (``BNCHECK_LOG_FORMAT``: auto picks human on a TTY, JSON elsewhere).

Every line logged while a request is served carries its ``request_id``: the caller's
``X-Request-ID`` when it sent a sane one, else a fresh one, echoed in the response.
"""

from __future__ import annotations

import logging
import re
import sys
import uuid
from contextvars import ContextVar
from typing import Any

__all__ = ["RequestIdFilter", "log_config", "new_request_id", "request_id"]

request_id: ContextVar[str] = ContextVar("bncheck_request_id", default="-")
_SANE = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def new_request_id(sent: str | None) -> str:
    return sent if sent is not None and _SANE.fullmatch(sent) else uuid.uuid4().hex[:16]


class RequestIdFilter(logging.Filter):
    """Adds the request id; drops uvicorn's ``color_message`` (its message again, with ANSI codes)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        record.__dict__.pop("color_message", None)
        return True


def log_config(level: str, fmt: str = "auto") -> dict[str, Any]:
    """A logging.config.dictConfig for bncheck and uvicorn: everything to stderr, one format."""
    if fmt == "auto":
        fmt = "human" if sys.stderr.isatty() else "json"
    formatters = {
        "json": {"()": "pythonjsonlogger.json.JsonFormatter",
                 "fmt": "%(asctime)s %(levelname)s %(name)s %(request_id)s %(message)s",
                 "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
                 "timestamp": False},
        "human": {"format": "%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s"},
    }
    handler = {"class": "logging.StreamHandler", "formatter": fmt, "stream": "ext://sys.stderr",
               "filters": ["request_id"]}
    loggers = {name: {"handlers": ["default"], "level": level.upper(), "propagate": False}
               for name in ("bncheck", "uvicorn", "uvicorn.error", "uvicorn.access")}
    return {"version": 1, "disable_existing_loggers": False,
            "filters": {"request_id": {"()": RequestIdFilter}},
            "formatters": {fmt: formatters[fmt]}, "handlers": {"default": handler}, "loggers": loggers}
