"""Shared fixtures: a real Kafka-protocol broker (Tansu) and a real PostgreSQL (embedded).

Both are started once per test session on free loopback ports / a temporary directory.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from operators.native import stale
from txwatch.embedded import EmbeddedBroker, EmbeddedPostgres


def pytest_configure(config: pytest.Config) -> None:
    # Python imports a compiled module before its source: after an edit, test the edit
    old = stale()
    if old:
        raise pytest.UsageError(
            f"compiled modules built from other versions of their sources: {', '.join(old)}; "
            "run `make native` (or `make clean` to test the plain Python)")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as b:
        yield b


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    d = tmp_path_factory.mktemp("pg")
    with EmbeddedPostgres(d / "data") as pg:
        yield pg


@pytest.fixture()
def pg(pg_server: EmbeddedPostgres) -> Iterator[str]:
    """A fresh, empty database on the embedded server; yields its URI."""
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_server.uri, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    uri = pg_server.uri.replace("/postgres?", f"/{name}?")
    yield uri
    with psycopg.connect(pg_server.uri, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture()
def topics(broker: EmbeddedBroker) -> dict[str, str]:
    """Fresh, uniquely named topics for one test (4 partitions each)."""
    suffix = uuid.uuid4().hex[:8]
    names = {
        k: f"{k}-{suffix}"
        for k in ("transactions", "labels", "controls", "dlq", "decisions")
    }
    broker.create_topics(names.values(), partitions=4)
    return names
