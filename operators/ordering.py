"""Event-time ordering: a bounded reorder buffer released by watermarks.

Stages that are not keyed by the Kafka key (terminals, population models) see events from
many partitions and workers, in an arrival order that depends on timing. To keep results
independent of timing and of the number of workers, they buffer events and process them in
``(event time, kind, id)`` order once a *watermark* has passed them.

Watermarks are data, not clocks: every source partition emits :class:`Watermark` items
saying "everything I emit from now on has event time >= ts" (its highest event time minus
the allowed lateness). A stage's watermark is the minimum over the origins it expects, so
what it releases depends only on the input, never on arrival timing. An event that arrives
behind the watermark is *late*: it is counted and processed at once, never dropped.

>>> buf = EventTimeBuffer(origins=2)
>>> buf.push((5.0, 1, "b"), "B")
>>> buf.push((3.0, 1, "a"), "A")
>>> buf.advance("p0", 4.0)
[]
>>> buf.advance("p1", 10.0)
['A']
>>> buf.drain()
['B']
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass
from typing import Any

SortKey = tuple[float, int, str]
NEVER_EXPIRES = float("inf")
"""The arrival of an item that no hold timeout releases, only a watermark (see ``push``)."""


@dataclass(frozen=True, slots=True)
class Watermark:
    """No event from ``origin`` will have an event time below ``ts`` (seconds since epoch),
    except late ones. ``origins`` is how many origins the receiving stage must hear from."""

    origin: str
    ts: float
    origins: int


class EventTimeBuffer:
    """A heap of ``(sort_key, arrival, item)`` released in sort-key order up to the watermark.

    ``origins`` is the number of distinct origins whose watermarks bound the stage: until all
    have reported, nothing is released by watermark (only by :meth:`drain` or :meth:`expire`).
    """

    __slots__ = ("_first", "_heap", "_marks", "_n", "origins", "watermark")

    def __init__(self, origins: int) -> None:
        self.origins = origins
        self._heap: list[tuple[SortKey, int, float, Any]] = []
        self._marks: dict[str, float] = {}
        self._n = 0
        self._first: float | None = None  # a lower bound of the oldest buffered arrival
        self.watermark = float("-inf")

    def __len__(self) -> int:
        return len(self._heap)

    def is_late(self, ts: float) -> bool:
        return ts < self.watermark

    def push(self, key: SortKey, item: Any, arrived: float = 0.0) -> None:
        """Buffer ``item``. ``arrived`` (wall clock) starts its hold; ``NEVER_EXPIRES`` for an
        item that only a watermark may release (labels: an expired hold moves the stage's
        watermark up to the item's event time, and a label's is later than its transaction,
        which may still be on its way from a lagging partition)."""
        self._n += 1
        if self._first is None or arrived < self._first:
            self._first = arrived
        heapq.heappush(self._heap, (key, self._n, arrived, item))

    def advance(self, origin: str, ts: float, origins: int | None = None) -> list[Any]:
        """Record a watermark from ``origin`` and return the items it releases, in order."""
        if origins is not None:
            self.origins = origins
        if ts > self._marks.get(origin, float("-inf")):
            self._marks[origin] = ts
        if len(self._marks) < self.origins:
            return []
        wm = min(self._marks.values())
        if wm > self.watermark:
            self.watermark = wm
        return self.release(self.watermark)

    def release(self, upto: float) -> list[Any]:
        out = []
        heap = self._heap
        while heap and heap[0][0][0] <= upto:
            out.append(heapq.heappop(heap)[3])
        if not heap:
            self._first = None
        return out

    def oldest_arrival(self) -> float | None:
        """A lower bound of the wall-clock arrival of the oldest buffered item that a hold
        timeout may release: O(1), exact again after each :meth:`expire`; ``None`` if none."""
        if not self._heap or self._first is None or self._first == NEVER_EXPIRES:
            return None
        return self._first

    def expire(self, arrived_before: float) -> list[Any]:
        """Release, in order, everything up to the latest event time among items that have
        waited since before ``arrived_before`` (wall clock): bounds latency when an origin
        goes quiet. Only used in live mode; reproducible runs set the hold very large."""
        limit = max((h[0][0] for h in self._heap if h[2] < arrived_before), default=None)
        out = []
        if limit is not None:
            if limit > self.watermark:
                self.watermark = limit
            out = self.release(limit)
        self._first = min((h[2] for h in self._heap), default=None)
        return out

    def drain(self) -> list[Any]:
        out = [h[3] for h in sorted(self._heap)]
        self._heap.clear()
        self._first = None
        return out

    def snapshot(self) -> dict[str, Any]:
        return {
            "heap": [(h[0], h[1], NEVER_EXPIRES if h[2] == NEVER_EXPIRES else 0.0, h[3])
                     for h in self._heap],
            "marks": dict(self._marks),
            "n": self._n,
            "watermark": self.watermark,
            "origins": self.origins,
        }

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> EventTimeBuffer:
        b = cls(snap["origins"])
        now = time.time()  # held items keep waiting from the restart on
        b._heap = [(h[0], h[1], NEVER_EXPIRES if h[2] == NEVER_EXPIRES else now, h[3])
                   for h in snap["heap"]]
        b._first = min((h[2] for h in b._heap), default=None)
        heapq.heapify(b._heap)
        b._marks = dict(snap["marks"])
        b._n = snap["n"]
        b.watermark = snap["watermark"]
        return b
