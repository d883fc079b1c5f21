"""Unit tests for count.logfilter: the RUST_LOG-style filter syntax and installing it."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import re

import pytest

from count.logfilter import LogFilterError, install_log_filter, parse_log_filter

OFF = logging.CRITICAL + 10


@pytest.mark.parametrize(("text", "expected"), [
    ("info", (logging.INFO, {})),
    ("debug", (logging.DEBUG, {})),
    ("trace", (logging.DEBUG, {})),
    ("warn", (logging.WARNING, {})),
    ("warning", (logging.WARNING, {})),
    ("error", (logging.ERROR, {})),
    ("off", (OFF, {})),
    ("INFO", (logging.INFO, {})),
    (" Debug ", (logging.DEBUG, {})),
    ("", (logging.INFO, {})),
    (",,", (logging.INFO, {})),
    ("count.storage=debug,info", (logging.INFO, {"count.storage": logging.DEBUG})),
    ("info,count.storage=debug", (logging.INFO, {"count.storage": logging.DEBUG})),
    ("count.storage=debug", (logging.INFO, {"count.storage": logging.DEBUG})),
    ("count::cluster=debug", (logging.INFO, {"count.cluster": logging.DEBUG})),
    ("count::storage::engine=trace,warn",
     (logging.WARNING, {"count.storage.engine": logging.DEBUG})),
    (" count.http = error , count.storage=WARN , error ",
     (logging.ERROR, {"count.http": logging.ERROR, "count.storage": logging.WARNING})),
    ("count=off,debug", (logging.DEBUG, {"count": OFF})),
])
def test_parse_log_filter(text, expected):
    assert parse_log_filter(text) == expected


def test_later_directives_win():
    assert parse_log_filter("debug,error") == (logging.ERROR, {})
    assert parse_log_filter("a=debug,a=error") == (logging.INFO, {"a": logging.ERROR})
    # a Rust path and its dotted spelling are the same logger
    assert parse_log_filter("a::b=debug,a.b=warn") == (logging.INFO, {"a.b": logging.WARNING})


@pytest.mark.parametrize("text", [
    "verbose", "count.storage=loud", "info,chatty", "count=", "5", "count.storage:debug",
])
def test_unknown_level_raises(text):
    with pytest.raises(LogFilterError, match="unknown level"):
        parse_log_filter(text)


@pytest.mark.parametrize("text", ["=debug", " =info", "info,=warn"])
def test_missing_target_raises(text):
    with pytest.raises(LogFilterError, match="missing target"):
        parse_log_filter(text)


def test_log_filter_error_is_a_value_error():
    assert issubclass(LogFilterError, ValueError)


# -- install_log_filter ----------------------------------------------------------------------

_TOUCHED = ("count", "count.storage", "count.cluster", "count.http", "count.other", "unit.x")


@contextlib.contextmanager
def preserved_logging():
    """Put the root handlers and the levels back as they were (inside the test's own phase,
    so that pytest's capture handlers for this phase are the ones restored)."""
    root = logging.getLogger()
    saved_handlers = root.handlers[:]
    saved_root_level = root.level
    saved_levels = {name: logging.getLogger(name).level for name in _TOUCHED}
    try:
        yield
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_root_level)
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


def keeps_logging(test):
    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        with preserved_logging():
            return test(*args, **kwargs)
    return wrapper


@keeps_logging
def test_install_sets_levels_on_the_right_loggers(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    install_log_filter("count.storage=debug,count::cluster=error,warn", "node")
    assert logging.getLogger().level == logging.WARNING
    assert logging.getLogger("count.storage").level == logging.DEBUG
    assert logging.getLogger("count.cluster").level == logging.ERROR
    # loggers not named keep inheriting from the root
    assert logging.getLogger("count.http").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("count.storage.engine").getEffectiveLevel() == logging.DEBUG


@keeps_logging
def test_install_replaces_root_handlers_with_one_stderr_handler(monkeypatch):
    logging.getLogger().addHandler(logging.NullHandler())
    logging.getLogger().addHandler(logging.NullHandler())
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    install_log_filter("info", "http-1")
    handlers = logging.getLogger().handlers
    assert len(handlers) == 1
    assert isinstance(handlers[0], logging.StreamHandler)
    assert handlers[0].stream is stream


@keeps_logging
def test_installed_filter_filters_and_formats(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    install_log_filter("count.storage=debug,info", "node")
    logging.getLogger("count.storage").debug("flushed %d points", 5)
    logging.getLogger("count.other").debug("hidden debug")
    logging.getLogger("count.other").info("shown info")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    stamp = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "
    assert re.match(stamp + r"DEBUG \[node\] count\.storage: flushed 5 points$", lines[0]), lines
    assert re.match(stamp + r"INFO \[node\] count\.other: shown info$", lines[1]), lines


@keeps_logging
def test_off_silences_everything(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    install_log_filter("off", "node")
    logging.getLogger("unit.x").critical("not shown")
    assert stream.getvalue() == ""


@keeps_logging
def test_install_rejects_bad_filter_without_changing_logging(monkeypatch):
    root = logging.getLogger()
    before_handlers, before_level = root.handlers[:], root.level
    monkeypatch.setattr("sys.stderr", io.StringIO())
    with pytest.raises(LogFilterError):
        install_log_filter("count=shout", "node")
    assert root.handlers == before_handlers
    assert root.level == before_level


@keeps_logging
def test_timestamps_are_utc_with_milliseconds(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    install_log_filter("info", "w1")
    handler = logging.getLogger().handlers[0]
    record = logging.makeLogRecord({
        "name": "count.x", "levelno": logging.WARNING, "levelname": "WARNING",
        "msg": "hello %s", "args": ("there",), "created": 86_400.042, "msecs": 42.0,
    })
    assert handler.format(record) == "1970-01-02T00:00:00.042Z WARNING [w1] count.x: hello there"
