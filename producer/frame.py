"""One simulated day's transactions as columns (numpy arrays), before numbering.

>>> import numpy as np
>>> f = DayFrame.empty()
>>> g = DayFrame(cust=np.array([1, 2]), t=np.array([50, 10]), cents=np.array([100, 250]),
...              term=np.array([7, 8]), scen=np.array([0, 1]))
>>> h = DayFrame.concat([f, g]).sorted_by_time()
>>> h.t.tolist(), h.cust.tolist()
([10, 50], [2, 1])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]


@dataclass(slots=True)
class DayFrame:
    """Columns of one day's transactions.

    ``t`` is seconds after midnight UTC of the day (0..86399), ``cents`` the amount in euro
    cents, ``term`` a terminal index, ``scen`` the fraud scenario (0 = legitimate).
    """

    cust: IntArray
    t: IntArray
    cents: IntArray
    term: IntArray
    scen: IntArray

    def __len__(self) -> int:
        return len(self.t)

    @classmethod
    def empty(cls) -> DayFrame:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, z.copy(), z.copy(), z.copy(), z.copy())

    def take(self, idx: npt.NDArray[np.int64] | npt.NDArray[np.bool_]) -> DayFrame:
        """The rows selected by an index or mask array."""
        return DayFrame(*(getattr(self, f.name)[idx] for f in fields(self)))

    @classmethod
    def concat(cls, frames: Sequence[DayFrame]) -> DayFrame:
        frames = [f for f in frames if len(f)]
        if not frames:
            return cls.empty()
        if len(frames) == 1:
            return frames[0]
        return cls(*(np.concatenate([getattr(f, fl.name) for f in frames]).astype(np.int64)
                     for fl in fields(cls)))

    def sorted_by_time(self) -> DayFrame:
        """Rows in time order; ties keep their order (stable)."""
        return self.take(np.argsort(self.t, kind="stable"))
