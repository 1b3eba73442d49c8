"""Scorers: what turns a transaction's features into a score, higher = more suspicious.

A :class:`Detector` lives in each logical user shard (see :mod:`operators.stages`). It holds
the shard's shared models (population, supervised) and scores each user with that user's own
state. The contract, which every detector keeps:

1. ``score()`` is called *before* ``learn()`` for the same transaction;
2. ``learn_label()`` receives delayed labels only once the stream's event time passed them;
3. detectors never read ``is_fraud`` or ``fraud_scenario`` (they never reach them).

>>> from operators.user import UserState
>>> d = ZScoreDetector(min_history=3)
>>> u = UserState()
>>> for a in (10.0, 11.0, 12.0, 10.5):
...     f = u.features(0.0, a); _ = d.score(u, f); d.learn(u, f, 0.0); u.learn(0.0, a)
>>> score, comps = d.score(u, u.features(0.0, 80.0))
>>> score > 10
True
"""

from __future__ import annotations

from typing import Any, Protocol

from operators.user import UserState


class Detector(Protocol):
    """The scorer interface of the user stage."""

    version: str

    def score(self, user: UserState, features: dict[str, float]) -> tuple[float, dict[str, float]]:
        """Score a transaction (features computed before the user learned it). Returns the
        score and per-component scores (model name → score; ``maturity`` in [0, 1])."""
        ...

    def learn(self, user: UserState, features: dict[str, float], score: float) -> None:
        """Learn a transaction after it was scored."""
        ...

    def keep(self, features: dict[str, float], components: dict[str, float]) -> Any:
        """What to keep of a scored transaction until its label arrives (None: nothing)."""
        ...

    def learn_label(self, kept: Any, is_fraud: bool) -> None:
        """Learn a delayed label for a transaction, given what :meth:`keep` returned."""
        ...

    def snapshot(self) -> Any:
        """Picklable state of the shared models."""
        ...


class ZScoreDetector:
    """The walking skeleton's scorer: the robust z-score of the amount against the user's
    own history (median and MAD of recent amounts); users with less than ``min_history``
    transactions score 0 (no baseline yet)."""

    version = "zscore-1"

    def __init__(self, min_history: int = 5, state: Any = None) -> None:
        self.min_history = min_history

    def score(self, user: UserState, features: dict[str, float]) -> tuple[float, dict[str, float]]:
        maturity = min(1.0, user.n / self.min_history)
        z = max(0.0, features.get("amt_robust_z", 0.0)) if maturity >= 1.0 else 0.0
        return z, {"zscore": z, "maturity": maturity}

    def learn(self, user: UserState, features: dict[str, float], score: float) -> None:
        return None

    def keep(self, features: dict[str, float], components: dict[str, float]) -> Any:
        return None

    def learn_label(self, kept: Any, is_fraud: bool) -> None:
        return None

    def snapshot(self) -> Any:
        return None
