"""Logical shards: a fixed, stable mapping of ids to shard keys.

Results depend on the number of logical shards (a setting), never on the number of workers:
shards are Bytewax keys, and Bytewax spreads keys over whatever workers there are.
``crc32`` is stable across processes and runs (Python's ``hash()`` of a str is not).

>>> shard_of("user-42", 8)
3
>>> user_key("user-42", 8), terminal_key(None, 8)
('u3', 't0')
"""

from __future__ import annotations

import zlib
from typing import Any

from operators.ordering import Watermark
from operators.records import Label, Txn

_CACHE: dict[str, int] = {}


def shard_of(value: str, shards: int) -> int:
    h = _CACHE.get(value)
    if h is None:
        h = zlib.crc32(value.encode())
        if len(_CACHE) > 200_000:  # bounded memo of the hot ids
            _CACHE.clear()
        _CACHE[value] = h
    return h % shards


class ShardKeys:
    """``prefix + shard number`` of ids, memoised per flow (the routing steps ask for the
    key of every item; this is one dict lookup for an id seen before).

    >>> ShardKeys("u", 8)("user-42"), ShardKeys("t", 8)(None)
    ('u3', 't0')
    """

    __slots__ = ("_keys", "prefix", "shards")

    MAX = 200_000
    """Ids remembered before the memo starts again (bounds its memory)."""

    def __init__(self, prefix: str, shards: int) -> None:
        self.prefix = prefix
        self.shards = shards
        self._keys: dict[str | None, str] = {}

    def __call__(self, value: str | None) -> str:
        k = self._keys.get(value)
        if k is None:
            if len(self._keys) >= self.MAX:
                self._keys.clear()
            k = self._keys[value] = f"{self.prefix}{shard_of(value or '', self.shards)}"
        return k


def user_key(user_id: str, shards: int) -> str:
    return f"u{shard_of(user_id, shards)}"


def terminal_key(terminal_id: str | None, shards: int) -> str:
    return f"t{shard_of(terminal_id or '', shards)}"


def all_user_keys(shards: int) -> list[str]:
    return [f"u{i}" for i in range(shards)]


def all_terminal_keys(shards: int) -> list[str]:
    return [f"t{i}" for i in range(shards)]


class TerminalRoute:
    """The terminal stage's input from a batch of the sources' items: each Txn and Label as
    ``(terminal shard key, item)``; the batch's latest watermark of each origin, packed, to
    every terminal shard after the items (:func:`send_marks`); anything else (controls go
    to the user stage another way) is not routed here.

    >>> from datetime import UTC, datetime
    >>> from decimal import Decimal
    >>> t = Txn("t1", "u1", Decimal(1), datetime(2018, 4, 1, tzinfo=UTC), "EUR", Decimal(1),
    ...         terminal_id="T7")
    >>> TerminalRoute(2)([t, Watermark("p0", 5.0, 1)]) == [("t0", t),
    ...     ("t0", ("w", "t0", (("p0", 5.0, 1),))), ("t1", ("w", "t1", (("p0", 5.0, 1),)))]
    True
    """

    def __init__(self, shards: int) -> None:
        self.key = ShardKeys("t", shards)
        self.keys = all_terminal_keys(shards)

    def __call__(self, xs: list[Any]) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        marks: dict[str, Watermark] = {}
        key = self.key
        for x in xs:
            tp = type(x)
            if tp is Txn or tp is Label:
                out.append((key(x.terminal_id), x))
            elif tp is Watermark:
                marks[x.origin] = x
        send_marks(marks, self.keys, out)
        return out


class UserRoute:
    """The user stage's input from the terminal stage's output: each ``("t", Txn, features)``
    and ``("l", Label)`` by user shard key; each terminal shard's latest watermark, packed, to
    every user shard after the items (each terminal shard sends one after each of its
    batches: broadcast one by one, they made 16 x 16 items per source watermark).

    >>> from datetime import UTC, datetime
    >>> lb = Label("t1", "u1", "T7", "fraud", datetime(2018, 4, 1, tzinfo=UTC),
    ...            datetime(2018, 4, 8, tzinfo=UTC))
    >>> UserRoute(1)([("t3", ("l", lb)), ("t3", ("w", Watermark("t3", 9.0, 16)))]) == [
    ...     ("u0", ("l", lb)), ("u0", ("w", "u0", (("t3", 9.0, 16),)))]
    True
    """

    def __init__(self, shards: int) -> None:
        self.key = ShardKeys("u", shards)
        self.keys = all_user_keys(shards)

    def __call__(self, kvs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        marks: dict[str, Watermark] = {}
        key = self.key
        for kv in kvs:
            item = kv[1]
            kind = item[0]
            if kind == "t" or kind == "l":
                out.append((key(item[1].user_id), item))
            elif kind == "w":
                wm: Watermark = item[1]
                marks[wm.origin] = wm
        send_marks(marks, self.keys, out)
        return out


def send_marks(marks: dict[str, Watermark], keys: list[str], out: list[Any]) -> None:
    """A batch's latest watermark of each origin, to every shard key as one item
    ``(key, ("w", key, ((origin, ts, origins), ...)))``, after the batch's items (a watermark
    sent later only releases later, never in another order; one item per shard, not one per
    origin, is what crosses between processes, pickled)."""
    if marks:
        packed = tuple([(w.origin, w.ts, w.origins) for w in marks.values()])
        for k in keys:
            out.append((k, ("w", k, packed)))
