"""Event time and pacing of a record stream: replayed, live, or history then live.

Every function takes and returns an iterator of transaction dicts (as made by
:func:`producer.simulator.iter_transactions` or read by :func:`producer.jsonl.read_jsonl`) and
is lazy: a live timestamp is taken when the consumer pulls the record, right before it is sent.
Waits use ``stop_event.wait`` so a set event ends the stream at once.

* :func:`replay_stream`: simulated timestamps; as fast as possible, at ``rate`` records per
  second, or one simulated day per ``seconds_per_day`` seconds.
* :func:`live_stream`: timestamps are the wall-clock time of sending (live mode).
* :func:`history_then_live`: the first days at full speed with timestamps moved (and
  optionally compressed) so that they end now, then live.

>>> from producer.config import SimConfig
>>> from producer.simulator import iter_transactions
>>> cfg = SimConfig(n_customers=50, n_terminals=100, n_days=3)
>>> now = epoch_of("2030-01-01T00:00:00Z")
>>> out = list(history_then_live(iter_transactions(cfg), history_days=2, now=now, rate=None,
...                              clock=lambda: now + 5))
>>> hist = [r for r in out if epoch_of(r["timestamp"]) < now]
>>> all(now - 2 * 86400 <= epoch_of(r["timestamp"]) for r in hist)
True
>>> {r["timestamp"] for r in out[len(hist):]}
{'2030-01-01T00:00:05Z'}
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

Record = dict[str, Any]
DAY = 86400.0


def epoch_of(timestamp: str) -> float:
    """Unix seconds of an ISO-8601 timestamp with an offset or ``Z``.

    >>> epoch_of("2018-04-01T00:00:00Z")
    1522540800.0
    """
    dt = datetime.fromisoformat(timestamp)
    if dt.tzinfo is None:
        raise ValueError(f"timestamp without offset: {timestamp!r}")
    return dt.timestamp()


def iso_utc(epoch: float) -> str:
    """ISO-8601 UTC with ``Z``; milliseconds (truncated, never later than ``epoch``) only when
    the time has a fraction.

    >>> iso_utc(1522540800), iso_utc(1522540800.25), iso_utc(1522540800.0009)
    ('2018-04-01T00:00:00Z', '2018-04-01T00:00:00.250Z', '2018-04-01T00:00:00Z')
    """
    ms = math.floor(epoch * 1000)
    dt = datetime.fromtimestamp(ms // 1000, tz=UTC)
    frac = ms % 1000
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac:03d}Z" if frac else "Z")


def _wait(seconds: float, stop_event: threading.Event | None) -> bool:
    """Sleep; False when ``stop_event`` was set (before or during the wait)."""
    if stop_event is not None:
        return not stop_event.wait(seconds) if seconds > 0 else not stop_event.is_set()
    if seconds > 0:
        time.sleep(seconds)
    return True


def rate_limited(records: Iterable[Record], rate: float,
                 stop_event: threading.Event | None = None) -> Iterator[Record]:
    """At most ``rate`` records per second on average (record ``i`` not before ``i / rate``
    seconds after the first); the next record is pulled only when its slot has come."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    it = iter(records)
    t0 = time.monotonic()
    for i in itertools.count():
        if not _wait(t0 + i / rate - time.monotonic(), stop_event):
            return
        rec = next(it, None)
        if rec is None:
            return
        yield rec


def paced(records: Iterable[Record], seconds_per_day: float,
          stop_event: threading.Event | None = None) -> Iterator[Record]:
    """Released in step with their event times, one simulated day per ``seconds_per_day``."""
    if seconds_per_day <= 0:
        raise ValueError("seconds_per_day must be positive")
    scale = seconds_per_day / DAY
    t0 = ev0 = None
    for rec in records:
        ev = epoch_of(rec["timestamp"])
        if t0 is None or ev0 is None:
            t0, ev0 = time.monotonic(), ev
        if not _wait(t0 + (ev - ev0) * scale - time.monotonic(), stop_event):
            return
        yield rec


def _paced(records: Iterable[Record], rate: float | None, seconds_per_day: float | None,
           stop_event: threading.Event | None) -> Iterator[Record]:
    if rate is not None and seconds_per_day is not None:
        raise ValueError("give a rate or seconds_per_day, not both")
    if rate is not None:
        return rate_limited(records, rate, stop_event)
    if seconds_per_day is not None:
        return paced(records, seconds_per_day, stop_event)
    return iter(records)


def retimed(records: Iterable[Record], fn: Callable[[float], float]) -> Iterator[Record]:
    """Each record with its timestamp ``t`` replaced by ``fn(t)`` (a copy of the dict)."""
    for rec in records:
        yield {**rec, "timestamp": iso_utc(fn(epoch_of(rec["timestamp"])))}


def stamped_now(records: Iterable[Record],
                clock: Callable[[], float] = time.time) -> Iterator[Record]:
    """Each record stamped with ``clock()`` at the moment it is pulled (a copy of the dict)."""
    for rec in records:
        yield {**rec, "timestamp": iso_utc(clock())}


def replay_stream(records: Iterable[Record], *, rate: float | None = None,
                  seconds_per_day: float | None = None,
                  stop_event: threading.Event | None = None) -> Iterator[Record]:
    """Simulated timestamps kept; paced by ``rate`` or ``seconds_per_day``, else full speed."""
    return _paced(records, rate, seconds_per_day, stop_event)


def live_stream(records: Iterable[Record], *, rate: float | None = None,
                seconds_per_day: float | None = None,
                stop_event: threading.Event | None = None,
                clock: Callable[[], float] = time.time) -> Iterator[Record]:
    """Live mode: paced by ``rate`` (uniform) or ``seconds_per_day`` (following the simulated
    inter-arrival times), each record stamped with the wall-clock time it goes out.

    >>> recs = [{"timestamp": "2018-04-01T00:00:00Z"}, {"timestamp": "2018-04-01T00:00:01Z"}]
    >>> [r["timestamp"] for r in live_stream(recs, clock=lambda: 1e9)]
    ['2001-09-09T01:46:40Z', '2001-09-09T01:46:40Z']
    """
    return stamped_now(_paced(records, rate, seconds_per_day, stop_event), clock)


def history_then_live(records: Iterable[Record], *, history_days: float,
                      start: float | None = None, now: float | None = None,
                      compress_history: float | None = None, rate: float | None = None,
                      seconds_per_day: float | None = None,
                      stop_event: threading.Event | None = None,
                      clock: Callable[[], float] = time.time) -> Iterator[Record]:
    """The first ``history_days`` days as fast as possible, then live.

    History timestamps are the simulated ones moved so that the history ends at ``now``
    (default: the wall clock when the first record is pulled); with ``compress_history`` the
    history is also squeezed to ``compress_history`` seconds per simulated day. ``start`` is
    the simulation's first midnight (default: the first record's UTC midnight). The rest is
    :func:`live_stream` with ``rate`` / ``seconds_per_day``.
    """
    it = iter(records)
    first = next(it, None)
    if first is None:
        return
    t_first = epoch_of(first["timestamp"])
    t_start = start if start is not None else t_first - t_first % DAY
    end = t_start + history_days * DAY
    anchor = clock() if now is None else now
    scale = 1.0 if compress_history is None else compress_history / DAY
    pending: Record | None = first
    for rec in itertools.chain([first], it):
        ev = epoch_of(rec["timestamp"])
        if ev >= end:
            pending = rec
            break
        pending = None
        if stop_event is not None and stop_event.is_set():
            return
        yield {**rec, "timestamp": iso_utc(anchor - (end - ev) * scale)}
    if pending is None:
        return
    yield from live_stream(itertools.chain([pending], it), rate=rate,
                           seconds_per_day=seconds_per_day, stop_event=stop_event, clock=clock)
