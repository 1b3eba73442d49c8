"""Choosing the detector from settings (see :mod:`operators.scoring` for the interface)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from operators.scoring import Detector, ZScoreDetector
from txwatch.settings import Settings


def make_detector_factory(settings: Settings) -> Callable[[Any], Detector]:
    """A picklable-state factory: ``factory(snapshot_or_None) -> Detector``."""
    min_history = settings.min_history

    def factory(state: Any) -> Detector:
        return ZScoreDetector(min_history=min_history, state=state)

    return factory
