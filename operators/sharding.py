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
