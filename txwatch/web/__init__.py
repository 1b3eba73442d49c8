"""Alert review: ``txwatch serve``, pages and a JSON API over the alerts table.

Public surface: :func:`create_app` builds the application; :func:`publish_label` and
:func:`publish_control` publish an analyst's label or snooze to Kafka from Python.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PublishError", "create_app", "publish_control", "publish_label"]


def __getattr__(name: str) -> Any:
    # imported on first use (PEP 562): FastAPI and psycopg take about half a second to
    # import, which every other command (``txwatch --help`` builds every sub-command's
    # parser, ``txwatch serve``'s among them) would otherwise pay
    if name == "create_app":
        from txwatch.web.app import create_app

        return create_app
    if name in ("PublishError", "publish_control", "publish_label"):
        from txwatch.web import labels

        return getattr(labels, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
