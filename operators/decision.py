"""Decisions: score and threshold in, allow / review / block out, with reasons.

>>> decide_severity(2.0, 3.5, 8.0), decide_severity(4.0, 3.5, 8.0), decide_severity(9.0, 3.5, 8.0)
('allow', 'review', 'block')
"""

from __future__ import annotations

from operators.records import Severity


def decide_severity(score: float, threshold: float, block_threshold: float) -> Severity:
    if score >= block_threshold:
        return "block"
    if score >= threshold:
        return "review"
    return "allow"
