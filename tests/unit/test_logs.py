"""Log lines as a person reads them (text) and as a log collector reads them (JSON), Celery's included."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery.app.log import Logging
from celery.utils.log import get_task_logger

from jobs.broker import make_celery
from jobs.logs import QUIETER, JsonFormatter, TextFormatter, configure_logging
from tests.helpers import embedded_settings

JOB_ID = "ab12cd34ef56ab12cd34ef56ab12cd34"
#: 2026-12-07T21:15:21.250Z
CREATED = 1796678121.25


def record(
    message: str = "item %s failed",
    *args: object,
    level: int = logging.WARNING,
    exc_info: bool = False,
    **extra: object,
) -> logging.LogRecord:
    """A record as `logging.getLogger("workers.chunk").log(...)` makes it."""
    info = None
    if exc_info:
        try:
            raise ValueError("broken")
        except ValueError:
            info = sys.exc_info()
    made = logging.getLogger("workers.chunk").makeRecord(
        "workers.chunk", level, "chunk.py", 1, message, args, info, extra=extra
    )
    made.created = CREATED
    return made


@pytest.fixture
def root_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Whatever configure_logging does to the root logger and Celery's state is undone afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quieter = {name: logging.getLogger(name).level for name in QUIETER}
    monkeypatch.setattr(warnings, "filters", list(warnings.filters))
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, previous in quieter.items():
        logging.getLogger(name).setLevel(previous)
    logging.captureWarnings(False)


def test_text_line_has_time_level_logger_message_then_fields() -> None:
    line = TextFormatter().format(
        record("item %s failed: %s", "foo/bar.jpg", "invalid_image", job_id=JOB_ID, item_id="foo/bar.jpg")
    )

    assert line == (
        f"2026-12-07T21:15:21Z WARNING workers.chunk: item foo/bar.jpg failed: invalid_image "
        f"job={JOB_ID} item=foo/bar.jpg"
    )


def test_text_values_with_spaces_or_equals_are_quoted_so_fields_split_back() -> None:
    line = TextFormatter().format(
        record("submitted", job_id=JOB_ID, item_id='my photo=1 "a".jpg', items=3, source="s3://b/in/")
    )

    fields = line.split(": submitted ", 1)[1]
    assert fields == f'job={JOB_ID} item="my photo=1 \\"a\\".jpg" items=3 source=s3://b/in/'


def test_text_leaves_out_structures_and_keeps_the_traceback_on_following_lines() -> None:
    line = TextFormatter().format(record("bug", exc_info=True, job_id=JOB_ID, data={"args": [1, 2]}))

    first, *rest = line.splitlines()
    assert first == f"2026-12-07T21:15:21Z WARNING workers.chunk: bug job={JOB_ID}"
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ValueError: broken"


def test_json_is_one_object_per_line_with_the_traceback_as_a_field() -> None:
    line = JsonFormatter().format(
        record("item %s failed", "a b", level=logging.ERROR, exc_info=True, job_id=JOB_ID, item_id="a b")
    )

    assert "\n" not in line
    entry = json.loads(line)
    assert entry["time"] == "2026-12-07T21:15:21.250Z"
    assert (entry["level"], entry["logger"]) == ("ERROR", "workers.chunk")
    assert entry["message"] == "item a b failed"
    assert (entry["job_id"], entry["item_id"]) == (JOB_ID, "a b")
    assert entry["exc_info"].startswith("Traceback (most recent call last):")
    assert entry["exc_info"].endswith("ValueError: broken")


def test_json_has_job_and_item_fields_on_every_line() -> None:
    entry = json.loads(JsonFormatter().format(record("worker ready", level=logging.INFO)))

    assert entry["job_id"] is None and entry["item_id"] is None
    assert "exc_info" not in entry


@pytest.mark.usefixtures("root_logging")
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_configure_logging_sends_every_logger_to_stderr_once(
    fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info", fmt)  # type: ignore[arg-type]
    configure_logging("info", fmt)  # type: ignore[arg-type]
    logging.getLogger("jobs.submit").info("submitted job %s", JOB_ID, extra={"job_id": JOB_ID})
    logging.getLogger("workers.chunk").debug("not shown")
    logging.getLogger("alembic.runtime.plugins").info("setup plugin alembic.autogenerate.schemas")

    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    if fmt == "json":
        assert json.loads(lines[0])["job_id"] == JOB_ID
    else:
        assert lines[0].endswith(f"INFO jobs.submit: submitted job {JOB_ID} job={JOB_ID}")


@pytest.mark.usefixtures("root_logging")
def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="'text' or 'json'"):
        configure_logging("INFO", "yaml")  # type: ignore[arg-type]


@pytest.mark.usefixtures("root_logging")
def test_celery_worker_logging_goes_through_the_project_handler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("CELERY_LOG_LEVEL", "CELERY_LOG_FILE", "_MP_FORK_LOGLEVEL_", "_MP_FORK_LOGFILE_"):
        monkeypatch.setenv(name, "")
    monkeypatch.setenv("_MP_FORK_LOGFORMAT_", "")
    monkeypatch.setattr(Logging, "_setup", False)
    configure_logging("INFO", "text")
    app = make_celery(embedded_settings(tmp_path))
    task_logger = get_task_logger("workers.tasks")
    task_handlers = list(task_logger.handlers)
    stdout = sys.stdout

    # What `celery worker` does at start, with the same arguments.
    custom = app.log.setup(logging.INFO, None, redirect_stdouts=False, colorize=False, hostname="w@h")
    logging.getLogger("celery.worker.consumer.connection").info("Connected to redis://127.0.0.1:6379/0")
    task_logger.warning("chunk retried", extra={"job_id": JOB_ID})

    assert custom, "Celery configured logging itself: the setup_logging receiver is not connected"
    assert task_logger.handlers == task_handlers and task_logger.propagate
    assert sys.stdout is stdout, "Celery redirected stdout"
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith(" INFO celery.worker.consumer.connection: Connected to redis://127.0.0.1:6379/0")
    assert lines[1].endswith(f" WARNING workers.tasks: chunk retried job={JOB_ID}")
    assert len(lines) == 2, lines
