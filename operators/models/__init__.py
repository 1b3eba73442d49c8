"""Compact per-user anomaly models: pure Python and numpy, no Bytewax, no Kafka.

Each model splits into what every user shares (parameters, tree structure) and a small
per-user state that pickles alone:

- :class:`HSTStructure` (shared) and :class:`HSTMasses` (per user): river's Half-Space Trees,
  exactly, in a few hundred bytes per user.
- :class:`OnlineIsolationForest` (shared) and :class:`IForestWindow` (per user): Isolation
  Forest refitted on the user's last points; the forest is a cache, never pickled.
- :class:`P2Quantile` (per user, 95 bytes pickled) and :class:`HistogramQuantile` (global,
  mergeable): running quantiles for adaptive thresholds and alert budgets.

``python -m operators.models.bench`` measures bytes per user and time per event.

>>> s = HSTStructure({"amount": (0.0, 10.0)}, n_trees=10, height=3, window_size=32, seed=1)
>>> m = s.new_masses()
>>> s.score_learn(m, {"amount": 3.0})
0.0
"""

from operators.models.hst import HSTMasses, HSTStructure
from operators.models.iforest import IForestWindow, OnlineIsolationForest, average_path_length
from operators.models.quantile import HistogramQuantile, P2Quantile

__all__ = [
    "HSTMasses",
    "HSTStructure",
    "HistogramQuantile",
    "IForestWindow",
    "OnlineIsolationForest",
    "P2Quantile",
    "average_path_length",
]
