"""Durations on the command line: ``N`` followed by ``s``, ``m``, ``h`` or ``d``.

>>> parse_duration("30s"), parse_duration("10m"), parse_duration("2h"), parse_duration("7d")
(30.0, 600.0, 7200.0, 604800.0)
>>> parse_duration("1.5h")
5400.0
>>> parse_duration("45")            # a bare number is seconds
45.0
>>> parse_duration("0s")
0.0
>>> parse_duration("7 days")
Traceback (most recent call last):
...
ValueError: not a duration: '7 days' (expected N followed by s, m, h or d, e.g. 30s or 7d)
"""

from __future__ import annotations

import argparse
import math
import re

UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*$")


def parse_duration(text: str) -> float:
    """Seconds in ``text`` (``N`` + ``s|m|h|d``; no unit means seconds); never negative."""
    m = _DURATION.match(text)
    if m is None:
        raise ValueError(
            f"not a duration: {text!r} (expected N followed by s, m, h or d, e.g. 30s or 7d)"
        )
    value = float(m.group(1)) * UNIT_SECONDS[m.group(2) or "s"]
    if not math.isfinite(value):
        raise ValueError(f"duration out of range: {text!r}")
    return value


def duration_arg(text: str) -> float:
    """:func:`parse_duration` as an argparse ``type``: a bad duration is a usage error.

    >>> duration_arg("2d")
    172800.0
    >>> duration_arg("3x")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: not a duration: '3x' (expected N followed by s, m, h or d, ...)
    """
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def format_duration(seconds: float) -> str:
    """The largest whole unit that expresses ``seconds`` exactly.

    >>> format_duration(604800), format_duration(30), format_duration(90)
    ('7d', '30s', '90s')
    """
    for unit in ("d", "h", "m"):
        n = seconds / UNIT_SECONDS[unit]
        if n >= 1 and n == int(n):
            return f"{int(n)}{unit}"
    return f"{seconds:g}s"
