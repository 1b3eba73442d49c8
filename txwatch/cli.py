"""The ``txwatch`` command line: one sub-command per task, each with ``--help``.

Sub-commands live next to what they drive and register themselves here through a
``register(subparsers)`` function, so this module stays a table of contents.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that contribute sub-commands, in the order ``--help`` lists them.
COMMAND_MODULES = (
    "txwatch.commands.demo",
    "producer.cli",
    "txwatch.commands.db",
    "txwatch.commands.alerts",
    "txwatch.commands.replay",
    "txwatch.commands.evaluate",
    "txwatch.commands.cluster",
    "txwatch.commands.bench",
    "txwatch.web.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="txwatch",
        description=(
            "Real-time anomaly and fraud detection for card transactions, on Bytewax.\n"
            "Settings come from TXWATCH_* environment variables (see README)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # that command is not built yet
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
