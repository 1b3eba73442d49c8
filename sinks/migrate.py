"""Apply the versioned SQL migrations in ``migrations/`` idempotently.

Each ``NNNN_name.sql`` runs once, in its own transaction, under an advisory lock so that
several workers starting together do not race; applied versions are recorded in
``schema_migrations``.

>>> sorted(p.name for p in migration_files())[0]
'0001_alerts.sql'
"""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg

import migrations

log = logging.getLogger(__name__)
LOCK_ID = 0x7478_7761  # "txwa": advisory lock key of the migrator


def migration_files() -> list[Path]:
    return sorted(Path(migrations.__file__).parent.glob("[0-9][0-9][0-9][0-9]_*.sql"))


def migrate(dsn: str, connect_timeout: float = 10.0) -> list[str]:
    """Apply pending migrations; returns the versions applied now (empty when up to date)."""
    applied_now: list[str] = []
    with psycopg.connect(dsn, autocommit=True, connect_timeout=int(connect_timeout)) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_ID,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            for path in migration_files():
                version = path.stem
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute(path.read_text())  # our own files, no parameters
                    conn.execute(
                        "INSERT INTO schema_migrations (version) VALUES (%s)", (version,)
                    )
                log.info("applied migration %s", version)
                applied_now.append(version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_ID,))
    return applied_now
