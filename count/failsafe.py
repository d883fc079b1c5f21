"""Errors the node survives in production and a test must not.

A bug in background work or in a reply callback must not take a node down: it is logged and
the node carries on. In strict mode (``COUNT_STRICT=1``, which the tests and the simulation
set) the same error is raised instead, so that no test passes over a swallowed bug.
"""

from __future__ import annotations

import logging
import os

_strict = os.environ.get("COUNT_STRICT", "") == "1"


def set_strict(on: bool) -> None:
    global _strict
    _strict = on


def strict() -> bool:
    return _strict


def survive(log: logging.Logger, message: str, *args: object) -> None:
    """Call from an ``except`` block: log the error and carry on, or re-raise when strict."""
    if _strict:
        raise  # noqa: PLE0704 - re-raises the exception being handled by the caller
    log.exception(message, *args)
