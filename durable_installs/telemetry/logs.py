"""Structured logs: one event per line, with the install's identifiers on every line.

A handler filter adds the bound install fields (:mod:`telemetry.fields`) to each record,
falling back to what Temporal's loggers attach (``activity.logger`` and ``workflow.logger``
put the workflow id in ``temporal_activity``/``temporal_workflow``) and to fields passed as
``extra=``. Formats:

* ``logfmt`` (default): ``time=… level=info logger=… msg="…" workflow_id=… op_id=… node=… slot=…``
* ``json``: the same keys in one JSON object per line, for log pipelines;
* ``text``: the classic ``time LEVEL logger: message`` followed by the fields.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from opentelemetry import trace

from durable_installs.telemetry.fields import FIELDS, current_fields

LOG_FORMATS = ("logfmt", "json", "text")

_TEMPORAL_EXTRAS = ("temporal_activity", "temporal_workflow")


class InstallFieldsFilter(logging.Filter):
    """Put the install fields and the current trace id on every record as ``install_fields``."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields: dict[str, str] = {}
        for extra in _TEMPORAL_EXTRAS:
            details = getattr(record, extra, None)
            if isinstance(details, dict) and details.get("workflow_id"):
                fields["workflow_id"] = str(details["workflow_id"])
        fields.update(current_fields())
        for key in FIELDS:
            value = getattr(record, key, None)
            if value:
                fields[key] = str(value)
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            fields["trace_id"] = format(span_context.trace_id, "032x")
        record.install_fields = {k: fields[k] for k in (*FIELDS, "trace_id") if k in fields}
        return True


def _event(record: logging.LogRecord) -> dict[str, Any]:
    event: dict[str, Any] = {
        "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    event.update(getattr(record, "install_fields", {}))
    if record.exc_info:
        event["error"] = logging.Formatter().formatException(record.exc_info)
    return event


def _logfmt_value(value: object) -> str:
    text = str(value)
    if text and not any(c in text for c in ' "=\n\t\\'):
        return text
    return json.dumps(text)


class LogfmtFormatter(logging.Formatter):
    """``key=value`` pairs, values quoted when they contain spaces, quotes or ``=``."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _event(record).items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_event(record), default=str)


class TextFormatter(logging.Formatter):
    """The classic human format, with the install fields appended as ``key=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "install_fields", {})
        if not fields:
            return line
        return line + " " + " ".join(f"{k}={_logfmt_value(v)}" for k, v in fields.items())


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of a ``--log-format`` value."""
    formats: dict[str, type[logging.Formatter]] = {
        "logfmt": LogfmtFormatter,
        "json": JsonFormatter,
        "text": TextFormatter,
    }
    try:
        return formats[log_format.lower()]()
    except KeyError:
        expected = ", ".join(LOG_FORMATS)
        raise ValueError(f"log format {log_format!r}: expected one of {expected}") from None


def install_handler(handler: logging.Handler, log_format: str = "logfmt") -> logging.Handler:
    """Give ``handler`` the install-fields filter and the formatter of ``log_format``."""
    handler.addFilter(InstallFieldsFilter())
    handler.setFormatter(formatter(log_format))
    return handler


def configure_logging(
    level: str = "INFO", log_format: str = "logfmt", stream: TextIO | None = None
) -> None:
    """Replace the root logger's handlers with one structured handler on ``stream`` (stderr)."""
    handler = install_handler(logging.StreamHandler(stream or sys.stderr), log_format)
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
