"""The txwatch dataflow: ``python -m bytewax.run dataflow`` runs a worker.

``flow`` is built from the ``TXWATCH_*`` settings when first accessed; building opens no
connection (sources and sinks connect on the workers).
"""

from __future__ import annotations

from typing import Any

from dataflow.build import FlowIO, build_flow

__all__ = ["FlowIO", "build_flow", "flow"]


def __getattr__(name: str) -> Any:
    if name == "flow":
        from txwatch.observability import setup_logging
        from txwatch.settings import get_settings

        settings = get_settings()
        setup_logging(settings)
        f = build_flow(settings)
        globals()["flow"] = f
        return f
    raise AttributeError(name)
