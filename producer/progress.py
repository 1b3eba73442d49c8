"""A one-line progress display on stderr, rewritten in place with a carriage return.

>>> import io
>>> out = io.StringIO()
>>> p = ProgressLine(out, interval=0.0)
>>> p.show("day 1/2")
>>> p.show("day 2/2")
>>> p.close()
>>> out.getvalue()
'\\rday 1/2\\rday 2/2\\n'
>>> bar(0.5, width=10)
'[#####.....]'
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def bar(fraction: float, width: int = 24) -> str:
    """A text progress bar for ``fraction`` in [0, 1]."""
    n = max(0, min(width, round(fraction * width)))
    return "[" + "#" * n + "." * (width - n) + "]"


class ProgressLine:
    """Shows at most one update per ``interval`` seconds; ``close`` ends the line."""

    def __init__(self, stream: TextIO | None = None, interval: float = 0.2,
                 enabled: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.enabled = enabled
        self._last = float("-inf")
        self._width = 0
        self._shown = False

    def show(self, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        pad = " " * max(0, self._width - len(text))
        self._width = len(text)
        self.stream.write("\r" + text + pad)
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        if self.enabled and self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False
