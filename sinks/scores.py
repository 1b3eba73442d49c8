"""A JSONL sink of every decision, one line per valid transaction (``txwatch replay``).

>>> decision_line  # doctest: +ELLIPSIS
<function decision_line at ...>
"""

from __future__ import annotations

import threading
from typing import IO, Any

import orjson
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from operators.records import Decision


def decision_line(d: Decision) -> str:
    return orjson.dumps(
        {
            "transaction_id": d.txn.transaction_id,
            "user_id": d.txn.user_id,
            "timestamp": d.txn.timestamp.isoformat().replace("+00:00", "Z"),
            "score": d.score,
            "alert": d.is_alert,
            "severity": d.severity,
            "reasons": [r.as_dict() for r in d.reasons],
            "components": d.components,
        }
    ).decode()


class _Part(StatelessSinkPartition[Any]):
    def __init__(self, sink: JsonLinesSink) -> None:
        self.sink = sink

    def write_batch(self, items: list[Any]) -> None:
        text = "".join(self.sink.fmt(x) + "\n" for x in items)
        with self.sink.lock:
            self.sink.fh.write(text)

    def close(self) -> None:
        with self.sink.lock:
            self.sink.fh.flush()


class JsonLinesSink(DynamicSink[Any]):
    """Writes ``fmt(item)`` lines to one open file; shared by the workers of one process."""

    def __init__(self, fh: IO[str], fmt: Any = decision_line) -> None:
        self.fh = fh
        self.fmt = fmt
        self.lock = threading.Lock()

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Part:
        return _Part(self)
