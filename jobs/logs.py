"""Log lines a person can follow: one format for every process (producer, worker, Celery itself).

Every log call in the project passes `extra={"job_id": ..., "item_id": ...}` where it concerns a job or an
item. The text format prints those fields after the message as `job=... item=...`, so that `grep job=<id>`
finds every line of a job across workers; the JSON format (`log_format = "json"`) writes one object per
line for a log collector, with `job_id` and `item_id` as fields of their own.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal

from celery import signals

#: Names the text format gives to the fields of `extra`; others keep their own.
TEXT_NAMES = {"job_id": "job", "item_id": "item"}

#: Third-party loggers whose INFO lines say nothing an operator acts on (alembic names each of its plugins
#: whenever a process migrates the embedded database).
QUIETER = {"alembic.runtime.plugins": logging.WARNING}

#: Attributes every LogRecord has: anything else on a record came from `extra`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a log call passed in `extra`, `job_id` and `item_id` first."""
    fields = {name: value for name, value in vars(record).items() if name not in _RECORD_ATTRIBUTES}
    ordered: dict[str, Any] = {name: fields.pop(name) for name in ("job_id", "item_id") if name in fields}
    ordered.update(fields)
    return ordered


def _utc(created: float, *, milliseconds: bool) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{stamp}.{int(created % 1 * 1000):03d}Z" if milliseconds else f"{stamp}Z"


def text_value(value: object) -> str:
    """A field value as it appears after `key=`: quoted (JSON string rules) when it holds a space, `=` or
    a quote, or is empty, so that every line splits back into the same fields."""
    text = str(value)
    if not text or any(char.isspace() or char in '="' or not char.isprintable() for char in text):
        return json.dumps(text, ensure_ascii=False)
    return text


class TextFormatter(logging.Formatter):
    """`2026-12-07T21:15:21Z INFO workers.chunk: message job=... item=...`, then the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        """One line (more only for a traceback or a message of several lines)."""
        stamp = _utc(record.created, milliseconds=False)
        line = f"{stamp} {record.levelname} {record.name}: {record.getMessage()}"
        # Only plain values: Celery passes whole task contexts as `data`, which its message already says.
        fields = [
            f"{TEXT_NAMES.get(name, name)}={text_value(value)}"
            for name, value in extra_fields(record).items()
            if isinstance(value, str | int | float | bool)
        ]
        if fields:
            line += " " + " ".join(fields)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, job_id, item_id, other fields of `extra`,
    and `exc_info` (the traceback as text) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        entry: dict[str, Any] = {
            "time": _utc(record.created, milliseconds=True),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "job_id": None,
            "item_id": None,
        }
        entry.update(extra_fields(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class _NoFolderBrokerHost(logging.Filter):
    """Drops kombu's warning that a URL has no host name: the embedded folder broker (`filesystem://`) never
    has one, so it would be printed by every command that talks to it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No hostname was supplied")


_FOLDER_BROKER_FILTER = _NoFolderBrokerHost()


class _ProjectHandler(logging.StreamHandler):
    """The root handler configure_logging installs (told apart from handlers others add, such as pytest's)."""


def configure_logging(level: str = "INFO", fmt: Literal["text", "json"] = "text") -> None:
    """Send every log record of this process to stderr in `fmt`, from `level` up.

    Idempotent: a second call replaces the handler of the first. Celery's worker keeps this configuration
    (it would otherwise give its own loggers handlers and formats of their own).
    """
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', not {fmt!r}")
    root = logging.getLogger()
    root.setLevel(level.upper())
    for handler in [h for h in root.handlers if isinstance(h, _ProjectHandler)]:
        root.removeHandler(handler)
    handler = _ProjectHandler(sys.stderr)
    handler.setFormatter(TextFormatter() if fmt == "text" else JsonFormatter())
    root.addHandler(handler)
    for name, quieter in QUIETER.items():  # at DEBUG, everything shows
        logging.getLogger(name).setLevel(quieter if root.level > logging.DEBUG else logging.NOTSET)
    kombu_connection = logging.getLogger("kombu.connection")
    if _FOLDER_BROKER_FILTER not in kombu_connection.filters:
        kombu_connection.addFilter(_FOLDER_BROKER_FILTER)
    logging.captureWarnings(True)
    signals.setup_logging.connect(_keep_logging, weak=False, dispatch_uid="ovis-batch-logging")


def _keep_logging(**_: Any) -> None:
    """Celery's worker configures logging only when nobody answers its `setup_logging` signal: answering
    it keeps the root handler above for every Celery logger (task loggers included, which Celery would
    otherwise give a handler of their own that never reaches the root) and keeps stdout unredirected."""
