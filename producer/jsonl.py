"""JSON-lines files: write a simulation (and its labels) fast, read a file back as dicts.

One transaction per line, in time order, in the dataflow's input contract plus ``is_fraud``
and ``fraud_scenario``; labels one per line in ``label_time`` order, in the labels topic's
format (:func:`operators.parse.label_to_json`).

>>> import io
>>> from producer.config import SimConfig
>>> from producer.simulator import Simulation
>>> out, labels = io.StringIO(), io.StringIO()
>>> st = write_jsonl(Simulation(SimConfig(n_customers=100, n_terminals=200, n_days=5)),
...                  out, labels, LabelPolicy(delay_seconds=86400, legit_share=0.05))
>>> st.transactions == out.getvalue().count("\\n")
True
>>> st.labels_fraud == st.frauds
True
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from operators.parse import label_to_json
from operators.records import Label
from producer.labels import LabelPolicy, LabelSchedule, investigated
from producer.simulator import DayBatch, Simulation
from producer.stats import SimStats


def _write_labels(out: TextIO, labels: list[Label], stats: SimStats) -> None:
    for lb in labels:
        out.write(label_to_json(lb).decode())
        out.write("\n")
        if lb.is_fraud:
            stats.labels_fraud += 1
        else:
            stats.labels_legit += 1


def write_jsonl(
    sim: Simulation,
    out: TextIO,
    labels_out: TextIO | None = None,
    policy: LabelPolicy | None = None,
    on_day: Callable[[DayBatch, SimStats], None] | None = None,
) -> SimStats:
    """Write every day of ``sim`` to ``out`` and, with ``labels_out``, its labels.

    Labels carry simulated times: ``label_time = transaction time + policy.delay_seconds``.
    ``on_day(batch, stats)`` is called after each day (progress).
    """
    policy = policy or LabelPolicy()
    schedule = LabelSchedule()
    stats = SimStats()
    t0 = time.perf_counter()
    uid = sim.customers.ids
    tids = sim.terminals.ids
    for batch in sim.days():
        out.writelines(sim.lines(batch))
        stats.add(batch)
        if labels_out is not None:
            f = batch.frame
            _write_labels(labels_out, schedule.pop_due(_dt(batch.day_start)), stats)
            share = policy.legit_share
            for tx, c, t, k, s in zip(sim.transaction_ids(batch), f.cust.tolist(),
                                      f.t.tolist(), f.term.tolist(), f.scen.tolist(),
                                      strict=True):
                if s or investigated(tx, share):
                    when = _dt(batch.day_start + t)
                    schedule.push(Label(tx, uid[c], tids[k], "fraud" if s else "legit", when,
                                        _dt(batch.day_start + t + policy.delay_seconds)))
        stats.elapsed_seconds = time.perf_counter() - t0
        if on_day is not None:
            on_day(batch, stats)
    if labels_out is not None:
        _write_labels(labels_out, schedule.drain(), stats)
    stats.elapsed_seconds = time.perf_counter() - t0
    return stats


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """The records of a JSON-lines file, one dict per non-empty line, lazily.

    A line that is not a JSON object raises ``ValueError`` naming the file and line.
    """
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{n}: not valid JSON: {e}") from e
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{n}: not a JSON object")
            yield obj
