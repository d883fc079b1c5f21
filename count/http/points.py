"""Validating an insert body and turning it into columns, vectorised where it can be.

The fast path pulls the three fields of every point with C-level ``map``/``itemgetter`` and
checks types and ranges on whole columns. Only when that finds a problem does a slow pass
walk the points to name the first bad one, so errors say which point and why.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from operator import itemgetter
from typing import Any, NamedTuple, NoReturn

import numpy as np
import orjson

from count.errors import BadRequest
from count.storage.writes import TIMESTAMP_MAX_MS

# A trailing '/' would be lost in the URL of /query/range/{series}, so a name may not end in one.
SERIES_NAME_RE = re.compile(r"[A-Za-z0-9._\-/:]*[A-Za-z0-9._\-:]")
_SERIES, _TIMESTAMP, _VALUE = itemgetter("series"), itemgetter("timestamp"), itemgetter("value")
# Names already checked in this worker, so a batch of known series skips the regex; cleared
# when full, which only costs re-checking.
_CHECKED_NAMES: set[str] = set()
CHECKED_NAMES_MAX = 100_000
_SMALL_BATCH = 64


class PointColumns(NamedTuple):
    names: list[str]
    idx: np.ndarray  # uint32 index into names, per point
    ts: np.ndarray  # int64
    val: np.ndarray  # float64


def check_series_name(name: object, length_max: int) -> str:
    """Return the name if it is a valid series name, else raise BadRequest saying why."""
    if not isinstance(name, str) or not name:
        raise BadRequest("series must be a non-empty string")
    if len(name.encode()) > length_max:
        raise BadRequest(f"series name longer than {length_max} bytes (MAX_SERIES_NAME_LENGTH)")
    if not SERIES_NAME_RE.fullmatch(name):
        raise BadRequest(
            f"series name {name[:64]!r} may only hold letters, digits, '.', '_', '-', '/' and ':'"
            " and may not end in '/'")
    return name


def _check_point(i: int, point: Any, length_max: int) -> None:
    """Raise BadRequest naming point ``i`` if it is not a valid point."""
    where = f"point {i}: "
    if not isinstance(point, dict):
        raise BadRequest(where + 'expected an object {"series", "timestamp", "value"}')
    for field in ("series", "timestamp", "value"):
        if field not in point:
            raise BadRequest(where + f"missing field {field!r}")
    try:
        check_series_name(point["series"], length_max)
    except BadRequest as exc:
        raise BadRequest(where + str(exc)) from None
    ts = point["timestamp"]
    if type(ts) is not int or not 0 <= ts <= TIMESTAMP_MAX_MS:
        raise BadRequest(where + f"timestamp must be an integer 0..{TIMESTAMP_MAX_MS} (Unix ms)")
    value = point["value"]
    if type(value) not in (int, float):
        raise BadRequest(where + "value must be a number")
    try:
        finite = math.isfinite(float(value))
    except OverflowError:
        finite = False
    if not finite:
        raise BadRequest(where + "value must be a finite number (no NaN or infinity)")


def _slow_check(points: list[Any], length_max: int) -> NoReturn:
    for i, point in enumerate(points):
        _check_point(i, point, length_max)
    raise BadRequest("invalid points")  # unreachable unless the fast path disagrees


def _count_check(count: int, batch_points_max: int) -> None:
    if not count:
        raise BadRequest("the array of points is empty")
    if count > batch_points_max:
        raise BadRequest(f"{count} points in one request; at most {batch_points_max} "
                         "(MAX_BATCH_POINTS)")


def _columnar_fields(data: dict[str, Any], batch_points_max: int
                     ) -> tuple[str | list[Any], list[Any], list[Any]]:
    """The three columns of a columnar body, checked for shape (not yet for values)."""
    series, stamps, values = data.get("series"), data.get("timestamps"), data.get("values")
    if not isinstance(stamps, list) or not isinstance(values, list):
        raise BadRequest('a columnar body needs "timestamps" and "values" arrays')
    if len(values) != len(stamps) or (isinstance(series, list) and len(series) != len(stamps)):
        raise BadRequest('"series" (when an array), "timestamps" and "values" must be '
                         "equally long")
    if not isinstance(series, (str, list)):
        raise BadRequest('"series" must be a series name or an array of them')
    _count_check(len(stamps), batch_points_max)
    return series, stamps, values


def parse_points(body: bytes, batch_points_max: int, name_length_max: int) -> PointColumns:
    """Parse an insert body; raise BadRequest on anything invalid.

    Accepted: one point object, an array of point objects, or the columnar form
    ``{"series": name or [names], "timestamps": [...], "values": [...]}``, which needs no
    object per point and so parses several times faster.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if isinstance(data, dict) and "timestamps" in data:
        series, stamps, values = _columnar_fields(data, batch_points_max)
        per_point = series if isinstance(series, list) else [series] * len(stamps)

        def slow() -> NoReturn:
            _slow_check([{"series": n, "timestamp": t, "value": v}
                         for n, t, v in zip(per_point, stamps, values, strict=True)],
                        name_length_max)
    else:
        points = [data] if isinstance(data, dict) else data
        if not isinstance(points, list):
            raise BadRequest("body must be a point object or an array of points "
                             "(or the columnar form)")
        _count_check(len(points), batch_points_max)

        def slow() -> NoReturn:
            _slow_check(points, name_length_max)

        try:
            series = list(map(_SERIES, points))
            stamps = list(map(_TIMESTAMP, points))
            values = list(map(_VALUE, points))
        except (TypeError, KeyError):
            slow()
    return _columns(series, stamps, values, name_length_max, slow)


def _columns(series: str | list[Any], stamps: list[Any], values: list[Any],
             name_length_max: int, slow: Callable[[], NoReturn]) -> PointColumns:
    """Checked numpy columns from the three field lists; ``slow`` names the first bad point."""
    one_series = isinstance(series, str)
    if (set(map(type, stamps)) != {int} or not set(map(type, values)) <= {int, float}
            or (not one_series and set(map(type, series)) != {str})):
        slow()
    try:
        ts = np.array(stamps, dtype=np.int64)
        val = np.array(values, dtype=np.float64)  # an int beyond float64 is an OverflowError
    except OverflowError:
        slow()
    # orjson refuses NaN, Infinity and overflowing numbers, so every value is finite here.
    if len(stamps) <= _SMALL_BATCH:  # numpy's reductions cost microseconds each
        low, high = min(stamps), max(stamps)
    else:
        low, high = int(ts.min()), int(ts.max())
    if low < 0 or high > TIMESTAMP_MAX_MS:
        slow()
    names: list[str] = [series] if isinstance(series, str) else list(dict.fromkeys(series))
    unchecked = [name for name in names if name not in _CHECKED_NAMES]
    for name in unchecked:
        # the pattern admits ASCII only, so characters are bytes
        if len(name) > name_length_max or not SERIES_NAME_RE.fullmatch(name):
            slow()
    if len(_CHECKED_NAMES) + len(unchecked) > CHECKED_NAMES_MAX:
        _CHECKED_NAMES.clear()
    _CHECKED_NAMES.update(unchecked)
    if one_series:
        return PointColumns(names, np.zeros(len(stamps), np.uint32), ts, val)
    position = {name: i for i, name in enumerate(names)}
    idx = np.fromiter(map(position.__getitem__, series), np.uint32, count=len(series))
    return PointColumns(names, idx, ts, val)
