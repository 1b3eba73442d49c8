"""``txwatch db migrate`` and ``txwatch db prune``."""

from __future__ import annotations

import argparse
import json
import sys

from txwatch.settings import get_settings


def _migrate(args: argparse.Namespace) -> int:
    import psycopg

    from sinks.migrate import migrate

    try:
        applied = migrate(get_settings().dsn())
    except psycopg.OperationalError as e:
        print(f"txwatch db migrate: cannot reach the database (TXWATCH_DATABASE_URL): {e}",
              file=sys.stderr)
        return 2
    print("applied: " + ", ".join(applied) if applied else "database schema is up to date")
    return 0


def _prune(args: argparse.Namespace) -> int:
    import psycopg

    from sinks.retention import prune

    try:
        counts = prune(get_settings().dsn(), get_settings())
    except psycopg.OperationalError as e:
        print(f"txwatch db prune: cannot reach the database (TXWATCH_DATABASE_URL): {e}",
              file=sys.stderr)
        return 2
    print(json.dumps(counts))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("db", help="database schema and retention",
                       description="Manage the alerts database (TXWATCH_DATABASE_URL).")
    dsub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    m = dsub.add_parser("migrate", help="apply pending schema migrations (idempotent)",
                        description="Apply the versioned SQL migrations in migrations/ that "
                        "the database has not seen yet. Safe to run any number of times.")
    m.set_defaults(func=_migrate)
    pr = dsub.add_parser(
        "prune", help="delete alerts and snoozes past their retention",
        description="Delete alerts (with their review audit trail) older than "
        "TXWATCH_ALERTS_RETENTION_DAYS, and snoozes that have ended. Dead letters live in "
        "the dead-letter topic, whose retention.ms txwatch sets from "
        "TXWATCH_DEAD_LETTERS_RETENTION_DAYS when it creates the topic.")
    pr.set_defaults(func=_prune)
