"""The txwatch dataflow: ``python -m bytewax.run dataflow`` runs a worker.

``flow`` is built from the ``TXWATCH_*`` settings when first accessed; building opens no
connection (sources and sinks connect on the workers).
"""

from __future__ import annotations

from typing import Any

from dataflow.build import FlowIO, build_flow, tune_gc

__all__ = ["FlowIO", "build_flow", "flow"]


def __getattr__(name: str) -> Any:
    if name == "flow":
        from txwatch.observability import setup_logging
        from txwatch.settings import get_settings

        settings = get_settings()
        setup_logging(settings)
        _log_native()
        f = build_flow(settings)
        tune_gc(settings)
        globals()["flow"] = f
        return f
    raise AttributeError(name)


def _log_native() -> None:
    """Say whether the hot path runs compiled, and warn of modules compiled before an edit."""
    import logging

    from operators.native import stale, summary

    log = logging.getLogger("txwatch.dataflow")
    log.info("per-event modules: %s (operators.native)", summary())
    old = stale()
    if old:
        log.warning("compiled modules built from other versions of their sources run stale "
                    "code: %s; rebuild them with `make native`", ", ".join(old))
