"""Keeps Python's cyclic garbage collector off the long-lived state.

The stages hold hundreds of thousands of long-lived objects (users, terminals, transactions
waiting for their label) and allocate several short-lived ones per event. CPython's full
collections walk *every* tracked object each time the old generation has grown by a quarter:
with a growing state that is one walk of the whole state for every 25 % of growth, about an
eighth of the flow's CPU in measurements. :func:`tick`, called once per batch, moves what has
survived so far to the permanent generation (:func:`gc.freeze`) every ``FREEZE_EVERY``
seconds, so later collections only walk what is new; objects there are still freed by
reference counting as usual. Only garbage *cycles* among frozen objects would wait: every
``SWEEP_EVERY`` seconds everything is unfrozen and collected once, then frozen again.

>>> tick(now=0.0) in ("freeze", "sweep", None)
True
"""

from __future__ import annotations

import gc
import time

FREEZE_EVERY = 5.0
"""Wall-clock seconds between two freezes of the surviving objects."""
SWEEP_EVERY = 3600.0
"""Wall-clock seconds between two full collections of everything (frozen objects too): one
walk of the whole state, as CPython would do anyway each time the state grows by a quarter."""

_STATE = {"freeze": float("-inf"), "sweep": float("-inf")}


def tick(now: float | None = None) -> str | None:
    """Freeze (or sweep) when due; returns what was done, ``None`` most of the time."""
    t = time.monotonic() if now is None else now
    if t - _STATE["freeze"] < FREEZE_EVERY:
        return None
    _STATE["freeze"] = t
    if t - _STATE["sweep"] >= SWEEP_EVERY:
        _STATE["sweep"] = t
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        return "sweep"
    gc.freeze()
    return "freeze"
