"""``txwatch cluster``: run and supervise the processes of one Bytewax cluster.

A Bytewax cluster is N processes of W worker threads each (N × W workers). Every process runs
``python -m bytewax.run dataflow -i K -a "host:p0;host:p1;..." -w W``; they connect to each other
and spread the flow's keys over all workers. The processes live and die together: when one
dies (a crash, ``kill -9``) the others stop within a second, so the supervisor restarts the
*whole* cluster, with exponential backoff, and counts the restarts. With a recovery directory,
every restart resumes from the last snapshot (Kafka offsets and the stages' state) instead of
from the beginning of the topics.

:class:`Cluster` is the reusable core (tests, ``txwatch bench --processes``)::

    c = Cluster(processes=2, workers_per_process=2, env=env, recovery_dir="/var/lib/txwatch/rec")
    c.start()
    outcome = c.wait()      # supervises: restarts on failure, returns when all exit 0
    c.stop()                # SIGINT to every process group, SIGKILL after a timeout

What each process gets:

* ``TXWATCH_METRICS_PORT`` = metrics base + K (0 stays 0: off);
* ``BYTEWAX_DATAFLOW_API_PORT`` = API base + K when ``BYTEWAX_DATAFLOW_API_ENABLED`` is true;
* with recovery: ``-r DIR -s S -b B`` and ``TXWATCH_RECOVERY_DIR=DIR`` (the stages then snapshot
  their state). Missing recovery partitions are created first with
  ``python -m bytewax.recovery DIR P``.

See docs/scaling.md for partitions, workers, processes and recovery.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from txwatch.embedded import free_port

log = logging.getLogger("txwatch.cluster")

DEFAULT_RECOVERY_PARTITIONS = 16
"""Recovery partitions created when a recovery directory has none (``TXWATCH_RECOVERY_PARTITIONS``
overrides). Size it for the largest cluster you will run: each partition is one SQLite file
that one worker writes at a time, so more workers than partitions contend on the files."""

DEFAULT_API_PORT = 3030
"""Bytewax's own API/metrics port (``BYTEWAX_DATAFLOW_API_PORT``) of process 0."""


class Outcome(enum.IntEnum):
    """How :meth:`Cluster.wait` ended."""

    FINISHED = 0
    """Every process of a generation exited 0 (finite input, ``TXWATCH_KAFKA_TAIL=false``)."""
    FAILED = 1
    """A process failed and ``max_restarts`` restarts were already spent."""
    STOPPED = 2
    """:meth:`Cluster.stop` was called (a signal, a test)."""


def recovery_partitions_present(recovery_dir: str | os.PathLike[str]) -> int:
    """How many Bytewax recovery partitions ``recovery_dir`` holds (0 if none or missing)."""
    d = Path(recovery_dir)
    return len(list(d.glob("part-*.sqlite3"))) if d.is_dir() else 0


def committed_epoch(recovery_dir: str | os.PathLike[str]) -> int | None:
    """The last epoch whose snapshots every recovery partition has committed (a restart resumes
    just after it), or None when nothing is committed yet (a restart starts from scratch).

    Reads the partitions' ``commits`` table (Bytewax 0.21's SQLite layout), read-only.
    """
    import sqlite3

    epochs = []
    for part in sorted(Path(recovery_dir).glob("part-*.sqlite3")):
        try:
            with contextlib.closing(sqlite3.connect(f"file:{part}?mode=ro", uri=True,
                                                    timeout=1.0)) as c:
                epochs += [int(r[0]) for r in c.execute("SELECT commit_epoch FROM commits")]
        except sqlite3.Error:
            return None
    return min(epochs) if epochs else None


def init_recovery_dir(recovery_dir: str | os.PathLike[str], partitions: int,
                      python: str = sys.executable) -> bool:
    """Create ``partitions`` recovery partitions in ``recovery_dir`` unless it already has some.

    Returns True when it created them. Existing partitions are never touched: they hold the
    state to resume from (their number is fixed at creation).
    """
    if partitions < 1:
        raise ValueError(f"recovery partitions must be at least 1, not {partitions}")
    if recovery_partitions_present(recovery_dir):
        return False
    Path(recovery_dir).mkdir(parents=True, exist_ok=True)
    res = subprocess.run(  # noqa: S603 - our interpreter, fixed module
        [python, "-m", "bytewax.recovery", str(recovery_dir), str(partitions)],
        capture_output=True, text=True, check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(f"could not create recovery partitions in {recovery_dir}: "
                           f"{res.stderr.strip()[-2000:]}")
    log.info("created %d recovery partitions in %s", partitions, recovery_dir)
    return True


def _truthy(v: str | None) -> bool:
    return (v or "").strip().lower() in ("1", "true", "yes", "on")


class Cluster:
    """The N processes of one Bytewax cluster on this host, supervised together.

    Parameters
    ----------
    processes, workers_per_process
        N processes of W worker threads: N × W workers in all. Parallelism is bounded by the
        input topic's partitions (one partition is read by one worker) and by the logical
        shards (``TXWATCH_LOGICAL_SHARDS``) of the stateful stages.
    env
        Environment of the processes (default: this process's). ``TXWATCH_*`` settings are
        read from it: ``TXWATCH_METRICS_PORT`` (metrics base), ``TXWATCH_RECOVERY_DIR`` and
        ``TXWATCH_SNAPSHOT_INTERVAL_SECONDS`` when the arguments below are None.
    recovery_dir
        Shared Bytewax recovery directory; None (and no ``TXWATCH_RECOVERY_DIR``) runs without
        recovery: a restart then re-reads the topics from the beginning.
    recovery_partitions
        Partitions to create when ``recovery_dir`` has none.
    snapshot_interval, backup_interval
        ``-s`` and ``-b`` in seconds (recovery only). ``-s`` is also the epoch length: on a
        crash, up to one interval of input is processed (and output) again. ``-b`` keeps
        superseded snapshots that long (default: one snapshot interval).
    base_port
        First port of the cluster's own connections (process K uses base + K); None picks
        free ports at every start. Unused with one process.
    metrics_port, api_port
        Bases of the per-process metrics ports (default from ``env``; 0 turns them off) and of
        Bytewax's API port (used when ``BYTEWAX_DATAFLOW_API_ENABLED`` is true in ``env``).
    log_dir
        Append each process's output to ``log_dir/process-K.log``; None: inherit ours.
    max_restarts
        Give up (:attr:`Outcome.FAILED`) after this many restarts; None never gives up.
    backoff, backoff_max, healthy_after
        Restart delays double from ``backoff`` up to ``backoff_max`` seconds while processes
        keep dying; a generation that ran ``healthy_after`` seconds resets the delay.
    stop_timeout
        Seconds :meth:`stop` waits after SIGINT before it sends SIGKILL.
    flow, cwd, python
        The Bytewax import string, the processes' working directory and interpreter.
    kill_on_parent_death
        Linux: the processes get SIGKILL when the thread that started them dies (even by
        ``kill -9`` of the supervisor). Start and :meth:`wait` from a thread that lives as long
        as the cluster (restarts start processes from the :meth:`wait` thread).
    """

    def __init__(
        self,
        processes: int = 1,
        workers_per_process: int = 1,
        *,
        flow: str = "dataflow",
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        recovery_dir: str | os.PathLike[str] | None = None,
        recovery_partitions: int | None = None,
        snapshot_interval: float | None = None,
        backup_interval: float | None = None,
        host: str = "127.0.0.1",
        base_port: int | None = None,
        metrics_port: int | None = None,
        api_port: int | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        max_restarts: int | None = None,
        backoff: float = 1.0,
        backoff_max: float = 30.0,
        healthy_after: float = 60.0,
        stop_timeout: float = 20.0,
        python: str = sys.executable,
        kill_on_parent_death: bool = False,
    ) -> None:
        if processes < 1 or workers_per_process < 1:
            raise ValueError("need at least one process and one worker per process")
        self.processes = processes
        self.workers_per_process = workers_per_process
        self.flow = flow
        self.env = dict(os.environ if env is None else env)
        self.cwd = str(cwd) if cwd is not None else None
        rdir = recovery_dir if recovery_dir is not None else self.env.get("TXWATCH_RECOVERY_DIR")
        self.recovery_dir = str(Path(rdir).resolve()) if rdir else None
        self.recovery_partitions = recovery_partitions or int(
            self.env.get("TXWATCH_RECOVERY_PARTITIONS") or DEFAULT_RECOVERY_PARTITIONS)
        self.snapshot_interval = float(
            snapshot_interval if snapshot_interval is not None
            else self.env.get("TXWATCH_SNAPSHOT_INTERVAL_SECONDS") or 10.0)
        if self.snapshot_interval <= 0:
            raise ValueError("the snapshot interval must be positive")
        self.backup_interval = (self.snapshot_interval if backup_interval is None
                                else float(backup_interval))
        self.host = host
        self.base_port = base_port
        self.metrics_port = (int(self.env.get("TXWATCH_METRICS_PORT") or 9100)
                             if metrics_port is None else metrics_port)
        self.api_enabled = _truthy(self.env.get("BYTEWAX_DATAFLOW_API_ENABLED"))
        self.api_port = (int(self.env.get("BYTEWAX_DATAFLOW_API_PORT") or DEFAULT_API_PORT)
                         if api_port is None else api_port)
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.max_restarts = max_restarts
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.healthy_after = healthy_after
        self.stop_timeout = stop_timeout
        self.python = python
        self.kill_on_parent_death = kill_on_parent_death

        self.restarts = 0
        """Whole-cluster restarts so far."""
        self.generation = 0
        """Starts so far (1 after :meth:`start`)."""
        self.exit_codes: list[list[int]] = []
        """Exit codes of every generation that ended, in order."""
        self.started_at: list[float] = []
        """Wall-clock start time (``time.time()``) of every generation, in order."""
        self._procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []
        self._started_at = 0.0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._rng = random.Random()

    # --- what the processes get ---------------------------------------------------------------
    def metrics_urls(self) -> list[str]:
        """The metrics endpoint of each process (empty when metrics are off)."""
        if not self.metrics_port:
            return []
        mhost = self.env.get("TXWATCH_METRICS_HOST") or "127.0.0.1"
        return [f"http://{mhost}:{self.metrics_port + k}/metrics" for k in range(self.processes)]

    def command(self, k: int, addresses: Sequence[str]) -> list[str]:
        """The command line of process ``k``."""
        cmd = [self.python, "-m", "bytewax.run", self.flow, "-w", str(self.workers_per_process)]
        if self.processes > 1:
            cmd += ["-i", str(k), "-a", ";".join(addresses)]
        if self.recovery_dir:
            cmd += ["-r", self.recovery_dir, "-s", _secs(self.snapshot_interval),
                    "-b", _secs(self.backup_interval)]
        return cmd

    def process_env(self, k: int) -> dict[str, str]:
        """The environment of process ``k``."""
        env = dict(self.env)
        # bytewax.run reads these as defaults of its flags: ours must win
        for var in ("BYTEWAX_PROCESS_ID", "BYTEWAX_ADDRESSES", "BYTEWAX_WORKERS_PER_PROCESS",
                    "BYTEWAX_RECOVERY_DIRECTORY", "BYTEWAX_SNAPSHOT_INTERVAL",
                    "BYTEWAX_RECOVERY_BACKUP_INTERVAL"):
            env.pop(var, None)
        env["TXWATCH_METRICS_PORT"] = str(self.metrics_port + k if self.metrics_port else 0)
        if self.api_enabled:
            env["BYTEWAX_DATAFLOW_API_PORT"] = str(self.api_port + k)
        else:
            # Bytewax starts its API server when the variable is set at all, even to "false"
            env.pop("BYTEWAX_DATAFLOW_API_ENABLED", None)
        if self.recovery_dir:
            env["TXWATCH_RECOVERY_DIR"] = self.recovery_dir
        else:
            env.pop("TXWATCH_RECOVERY_DIR", None)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _addresses(self) -> list[str]:
        if self.processes == 1:
            return []
        if self.base_port is not None:
            ports = [self.base_port + k for k in range(self.processes)]
        else:
            ports = []
            while len(ports) < self.processes:
                p = free_port(self.host)
                if p not in ports:
                    ports.append(p)
        return [f"{self.host}:{p}" for p in ports]

    # --- life cycle ----------------------------------------------------------------------------
    def start(self) -> Cluster:
        """Create the recovery partitions if missing, then start the processes."""
        if self.recovery_dir:
            init_recovery_dir(self.recovery_dir, self.recovery_partitions, self.python)
        self._stop.clear()
        self._spawn()
        return self

    def _spawn(self) -> None:
        with self._lock:
            self.generation += 1
            addresses = self._addresses()
            preexec = _die_with_parent if self.kill_on_parent_death else None
            self._close_logs()
            procs = []
            for k in range(self.processes):
                out: Any = None
                if self.log_dir is not None:
                    self.log_dir.mkdir(parents=True, exist_ok=True)
                    f = open(self.log_dir / f"process-{k}.log", "ab")  # noqa: SIM115
                    f.write(f"--- txwatch cluster: generation {self.generation}, process {k}"
                            f" of {self.processes} ---\n".encode())
                    f.flush()
                    self._logs.append(f)
                    out = f
                procs.append(subprocess.Popen(  # noqa: S603 - our interpreter and module
                    self.command(k, addresses), env=self.process_env(k), cwd=self.cwd,
                    stdout=out, stderr=out, start_new_session=True, preexec_fn=preexec,
                ))
            self._procs = procs
            self._started_at = time.monotonic()
            self.started_at.append(time.time())
        log.info("cluster generation %d: %d process(es) × %d worker(s)%s, pids %s, "
                 "restarts so far %d", self.generation, self.processes,
                 self.workers_per_process,
                 f", recovery in {self.recovery_dir}" if self.recovery_dir else "",
                 [p.pid for p in procs], self.restarts)

    def pids(self) -> list[int]:
        with self._lock:
            return [p.pid for p in self._procs]

    def poll(self) -> list[int | None]:
        """Exit code of each process of the current generation (None: running)."""
        with self._lock:
            return [p.poll() for p in self._procs]

    def running(self) -> bool:
        return any(rc is None for rc in self.poll())

    def wait(self, timeout: float | None = None, poll_interval: float = 0.1) -> Outcome:
        """Supervise until the cluster finishes, gives up or is stopped.

        When a process exits with a non-zero code (or a signal), the rest of its generation
        is killed and the whole cluster is started again after the backoff delay. Raises
        ``TimeoutError`` after ``timeout`` seconds (the cluster keeps running).
        """
        if not self._procs:
            raise RuntimeError("the cluster was not started")
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = self.backoff
        while True:
            if self._stop.is_set():
                return Outcome.STOPPED
            rcs = self.poll()
            if rcs and all(rc == 0 for rc in rcs):
                self.exit_codes.append([0] * len(rcs))
                self._close_logs()
                log.info("cluster finished: every process exited 0 (restarts: %d)",
                         self.restarts)
                return Outcome.FINISHED
            failed = [(k, rc) for k, rc in enumerate(rcs) if rc not in (None, 0)]
            if failed:
                lived = time.monotonic() - self._started_at
                self._terminate(grace=min(5.0, self.stop_timeout))
                self.exit_codes.append([rc if rc is not None else -9 for rc in self.poll()])
                if self._stop.is_set():
                    return Outcome.STOPPED
                what = ", ".join(f"process {k} {_describe(rc)}" for k, rc in failed)
                if self.max_restarts is not None and self.restarts >= self.max_restarts:
                    log.error("cluster failed (%s) after %d restart(s): giving up", what,
                              self.restarts)
                    self._close_logs()
                    return Outcome.FAILED
                if lived >= self.healthy_after:
                    delay = self.backoff
                log.warning("cluster generation %d failed after %.1f s (%s): restarting the "
                            "whole cluster in %.1f s (restart %d), %s", self.generation, lived,
                            what, delay, self.restarts + 1, self._resume_point())
                if self._stop.wait(delay):
                    return Outcome.STOPPED
                delay = min(self.backoff_max, delay * 2)
                with self._lock:
                    if self._stop.is_set():
                        return Outcome.STOPPED
                    self.restarts += 1
                    self._spawn()
                continue
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"cluster still running after {timeout} s")
            self._stop.wait(poll_interval)

    def _resume_point(self) -> str:
        if not self.recovery_dir:
            return "from the beginning of the topics (no recovery)"
        epoch = committed_epoch(self.recovery_dir)
        if epoch is None:
            return "from the beginning (no snapshot committed yet)"
        return f"from the snapshot of epoch {epoch}"

    def kill_one(self, index: int | None = None, sig: int = signal.SIGKILL,
                 generation: int | None = None) -> int | None:
        """Send ``sig`` (default SIGKILL) to one running process (``index``, or one at random)
        and return its index. The supervisor (:meth:`wait`) sees the death and restarts.

        Returns None, and kills nothing, when no process is running or when ``generation`` is
        given and is no longer the current one (the cluster restarted meanwhile).
        """
        with self._lock:
            if generation is not None and generation != self.generation:
                return None
            alive = [k for k, p in enumerate(self._procs) if p.poll() is None]
            if not alive or (index is not None and index not in alive):
                return None
            k = index if index is not None else self._rng.choice(alive)
            pid = self._procs[k].pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        log.warning("sent signal %d to process %d (pid %d)", sig, k, pid)
        return k

    def stop(self, timeout: float | None = None) -> None:
        """Stop supervising and stop every process: SIGINT to each process group (Bytewax
        stops its workers, sinks flush), SIGKILL after ``timeout`` (default ``stop_timeout``);
        returns when none is left."""
        self._stop.set()
        with self._lock:
            self._terminate(self.stop_timeout if timeout is None else timeout,
                            sig=signal.SIGINT)
            self._close_logs()

    def _terminate(self, grace: float, sig: int = signal.SIGTERM) -> None:
        with self._lock:
            procs = list(self._procs)
            for p in procs:
                if p.poll() is None:
                    _signal_group(p, sig)
            deadline = time.monotonic() + grace
            for p in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=max(0.0, deadline - time.monotonic()))
            for p in procs:
                if p.poll() is None:  # never signal a reaped pid: it may have been reused
                    _signal_group(p, signal.SIGKILL)
                    p.wait()

    def _close_logs(self) -> None:
        for f in self._logs:
            with contextlib.suppress(OSError):
                f.close()
        self._logs = []

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(p: subprocess.Popen[bytes], sig: int) -> None:
    # every process was started in its own session: its pid is its process group id
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, sig)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the child gets SIGKILL when the supervisor dies, even by ``kill -9``."""
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _describe(rc: int | None) -> str:
    if rc is None:
        return "running"
    if rc < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-rc).name}"
        return f"killed by signal {-rc}"
    return f"exited with {rc}"


def _children_cpu() -> float:
    """User + system CPU seconds of this process's ended (waited-for) children."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _secs(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


# --- command line ------------------------------------------------------------------------------
DESCRIPTION = """\
Start and supervise the N processes of one Bytewax cluster running the txwatch dataflow.

Partitions, workers, processes:
  The input topic's partitions are the unit of input parallelism: each partition is read by
  exactly one worker, so more workers than partitions leaves workers without input (they
  still run stateful stages). The stateful stages are keyed by logical shards
  (TXWATCH_LOGICAL_SHARDS, default 16): each shard, and so each user's state, lives on
  exactly one worker. A worker is a thread; one process shares one interpreter lock, so
  add processes (--processes) rather than workers per process for CPU speed-up.
  Results do not depend on the number of workers.

Processes:
  Process K runs `python -m bytewax.run dataflow -i K -a "host:p0;..." -w W` and serves its
  metrics on TXWATCH_METRICS_PORT + K (Bytewax's API on BYTEWAX_DATAFLOW_API_PORT + K when
  BYTEWAX_DATAFLOW_API_ENABLED=true). When any process dies, the others stop too; the
  supervisor restarts the whole cluster with exponential backoff and logs a restart counter.
  It exits 0 when every process exits 0 (finite input: TXWATCH_KAFKA_TAIL=false), and on
  SIGINT/SIGTERM stops every process (SIGKILL after --stop-timeout).

Recovery:
  With --recovery-dir (or TXWATCH_RECOVERY_DIR) the processes snapshot their state (Kafka
  offsets, the stages' state, the database sink's backlog) into that shared directory every
  TXWATCH_SNAPSHOT_INTERVAL_SECONDS; a restart resumes from the last snapshot, re-processing
  at most one epoch of input (one interval when live, more while catching up a backlog):
  decisions may be published twice, alert rows never (the database sink upserts). To add
  workers, stop the cluster and start it with more processes on the same directory. The
  directory's partitions are created when missing (--recovery-partitions, fixed at creation:
  size it for the largest cluster you will run). A snapshot from a release with another state
  version is refused: warm-start by replaying history into a fresh directory. Without
  recovery, a restart re-reads the topics from the beginning. See docs/scaling.md.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "cluster", help="run the dataflow on N supervised processes (scale-out, recovery)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--processes", "-n", type=int, required=True,
                   help="processes of the cluster (N)")
    p.add_argument("--workers-per-process", "-w", type=int, default=1,
                   help="worker threads per process (W, default 1): N × W workers in all")
    p.add_argument("--recovery-dir",
                   help="shared Bytewax recovery directory (default TXWATCH_RECOVERY_DIR; "
                   "none: no recovery)")
    p.add_argument("--recovery-partitions", type=int, default=None,
                   help="recovery partitions to create when the directory has none (default "
                   f"TXWATCH_RECOVERY_PARTITIONS or {DEFAULT_RECOVERY_PARTITIONS})")
    p.add_argument("--snapshot-interval", type=float, default=None,
                   help="seconds between snapshots, the epoch length (default "
                   "TXWATCH_SNAPSHOT_INTERVAL_SECONDS)")
    p.add_argument("--backup-interval", type=float, default=None,
                   help="seconds to keep superseded snapshots (default: one snapshot interval)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address the processes use to reach each other (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None,
                   help="cluster port of process 0, process K uses PORT + K (default: free "
                   "ports picked at every start)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="metrics port of process 0, process K uses it + K (default "
                   "TXWATCH_METRICS_PORT; 0: off)")
    p.add_argument("--api-port", type=int, default=None,
                   help=f"Bytewax API port of process 0 when BYTEWAX_DATAFLOW_API_ENABLED=true "
                   f"(default BYTEWAX_DATAFLOW_API_PORT or {DEFAULT_API_PORT})")
    p.add_argument("--log-dir", default=None,
                   help="write process K's output to LOG_DIR/process-K.log (default: ours)")
    p.add_argument("--max-restarts", type=int, default=None,
                   help="give up (exit 1) after this many restarts (default: never)")
    p.add_argument("--backoff-max", type=float, default=30.0,
                   help="longest delay between restarts, in seconds (default 30)")
    p.add_argument("--stop-timeout", type=float, default=20.0,
                   help="seconds to wait for a clean stop before SIGKILL (default 20)")
    p.add_argument("--flow", default="dataflow",
                   help="Bytewax import string of the flow (default: dataflow)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.processes < 1 or args.workers_per_process < 1:
        print("txwatch cluster: --processes and --workers-per-process must be at least 1",
              file=sys.stderr)
        return 2
    cluster = Cluster(
        args.processes, args.workers_per_process, flow=args.flow,
        recovery_dir=args.recovery_dir, recovery_partitions=args.recovery_partitions,
        snapshot_interval=args.snapshot_interval, backup_interval=args.backup_interval,
        host=args.host, base_port=args.port, metrics_port=args.metrics_port,
        api_port=args.api_port, log_dir=args.log_dir, max_restarts=args.max_restarts,
        backoff_max=args.backoff_max, stop_timeout=args.stop_timeout,
        kill_on_parent_death=True,
    )
    got: dict[str, int] = {}

    def on_signal(signum: int, frame: Any) -> None:
        got.setdefault("signal", signum)
        # stop() runs in its own thread: the main thread may hold the cluster's lock
        threading.Thread(target=cluster.stop, name="cluster-stop").start()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    t0 = time.monotonic()
    cpu0 = _children_cpu()
    try:
        cluster.start()
        outcome = cluster.wait()
    finally:
        cluster.stop()
        for s, h in old.items():
            signal.signal(s, h)
    elapsed = time.monotonic() - t0
    log.info("cluster %s after %.1f s (processes' CPU time %.1f s), %d restart(s)",
             outcome.name.lower(), elapsed, _children_cpu() - cpu0, cluster.restarts)
    if outcome is Outcome.STOPPED:
        return 128 + got.get("signal", signal.SIGINT)
    return int(outcome)
