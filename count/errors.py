"""The one exception tree of Count: every error a client can see, with its HTTP status.

The node process replies with (status, message) for these; the HTTP workers turn them back
into the same classes, and one Falcon handler renders any of them as ``{"error": message}``.
"""

from __future__ import annotations


class CountError(Exception):
    """Base of every error with a client-facing status."""

    status = 500


class BadRequest(CountError):
    status = 400


class RangeTooLarge(BadRequest):
    """A read whose range holds more points than one reply may carry."""

    def __init__(self, points_max: int) -> None:
        super().__init__(f"the range holds more than {points_max} points: narrow it "
                         "(MAX_QUERY_POINTS)")


class NotFound(CountError):
    status = 404


class Conflict(CountError):
    """The cluster's state does not allow it now (a membership change is in flight)."""

    status = 409


class PayloadTooLarge(CountError):
    status = 413


class Unavailable(CountError):
    """The node cannot answer now (node process gone or slow, quorum not reached)."""

    status = 503


class DiskFull(CountError):
    """The disk (or LMDB map at its limit) has no room for the write; reads still work."""

    status = 507


_BY_STATUS = {cls.status: cls for cls in (BadRequest, NotFound, Conflict, PayloadTooLarge, Unavailable,
                                          DiskFull)}


def error_for_status(status: int, message: str) -> CountError:
    """The exception for a status received from the node process."""
    return _BY_STATUS.get(status, CountError)(message)
