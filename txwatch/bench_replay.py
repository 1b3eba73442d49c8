"""``txwatch bench --replay FILE``: the speed of ``txwatch replay`` with labels and without,
measured side by side.

Each run is a fresh process (as ``txwatch replay`` is), on the same input, in alternating
order (labels first, then without, then the other way round), so that a machine getting
busier or quieter during the bench weighs on both alike. Reported: the median events per
second of each mode over the runs (and the lowest and highest), per CPU second of the run's
process, peak RSS, the ratio of the two medians, and whether every run of a mode wrote the
same scores (the replay is deterministic: a difference is a bug, not noise).

>>> _modes(2)
[('labels', 'nolabels'), ('nolabels', 'labels')]
"""

from __future__ import annotations

import hashlib
import json
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODES: dict[str, float | None] = {"labels": 7 * 86_400.0, "nolabels": None}
"""The two replays compared, by label delay in seconds: labels 7 days after each transaction
(the default of ``txwatch replay``), and ``--no-labels``."""

_CHILD = """
import json, resource, sys
from txwatch.bench_replay import peak_rss_bytes
from txwatch.commands.replay import run_replay
inp, out, delay = sys.argv[1], sys.argv[2], sys.argv[3]
ru0 = resource.getrusage(resource.RUSAGE_SELF)
r = run_replay(inp, out, label_delay=None if delay == "-" else float(delay), progress=False,
               own_process=True)
ru = resource.getrusage(resource.RUSAGE_SELF)
r["cpu_seconds"] = (ru.ru_utime - ru0.ru_utime) + (ru.ru_stime - ru0.ru_stime)
r["max_rss_bytes"] = peak_rss_bytes()
print(json.dumps(r))
"""


def peak_rss_bytes() -> int:
    """This process's peak resident set: ``VmHWM`` of ``/proc/self/status`` where there is
    one. (Linux's ``ru_maxrss`` of a child starts from its parent's at the fork and survives
    the exec: a replay started by a bench that had just measured a million users' state
    reported their gigabytes as its own.) Elsewhere ``ru_maxrss``.

    >>> peak_rss_bytes() > 0
    True
    """
    import resource

    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru if sys.platform == "darwin" else ru * 1024  # (bytes on macOS, KiB elsewhere)


def _modes(repeats: int) -> list[tuple[str, str]]:
    """The order of the two modes in each of ``repeats`` rounds (alternating)."""
    a, b = tuple(MODES)
    return [(a, b) if i % 2 == 0 else (b, a) for i in range(repeats)]


def head_lines(src: Path, dst: Path, n: int) -> int:
    """Copy the first ``n`` lines of ``src`` to ``dst``; returns how many were copied."""
    k = 0
    with src.open("rb") as f, dst.open("wb") as g:
        for line in f:
            if k >= n:
                break
            g.write(line)
            k += 1
    return k


def scores_digest(path: Path) -> str:
    """A digest of a scores file that ignores the order of its lines (``txwatch replay``
    promises one line per transaction, in any order)."""
    h = hashlib.sha256()
    for line in sorted(path.read_bytes().splitlines()):
        h.update(line)
        h.update(b"\n")
    return h.hexdigest()


def run_one(input_path: Path, scores_path: Path, mode: str) -> dict[str, float]:
    """One ``txwatch replay`` in a fresh process; its figures (see :data:`_CHILD`)."""
    delay = MODES[mode]
    arg = "-" if delay is None else repr(delay)
    proc = subprocess.run(  # noqa: S603 - this interpreter, fixed code
        [sys.executable, "-c", _CHILD, str(input_path), str(scores_path), arg],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"replay ({mode}) failed with {proc.returncode}: "
                           f"{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_replay(input_path: str, lines: int, repeats: int, workdir: Path,
                   log: Callable[[str], None], out: dict[str, Any]) -> None:
    """Measure both modes ``repeats`` times each on the first ``lines`` lines of
    ``input_path`` (0: all of it); the figures go into ``out`` (``replay_*`` keys)."""
    src = Path(input_path)
    if not src.is_file():
        raise FileNotFoundError(f"no such file: {input_path}")
    workdir.mkdir(parents=True, exist_ok=True)
    inp = src
    if lines > 0:
        inp = workdir / "replay-input.jsonl"
        n = head_lines(src, inp, lines)
        log(f"replay bench: the first {n:,} lines of {src}")
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    digests: dict[str, set[str]] = {m: set() for m in MODES}
    for i, order in enumerate(_modes(repeats)):
        for mode in order:
            scores = workdir / f"replay-scores-{mode}.jsonl"
            r = run_one(inp, scores, mode)
            digests[mode].add(scores_digest(scores))
            scores.unlink()
            runs[mode].append(r)
            log(f"replay bench: round {i + 1}/{repeats}, {mode}: {r['lines']:,.0f} lines "
                f"in {r['seconds']:.1f} s ({r['eps']:,.0f}/s)")
    for mode, rs in runs.items():
        eps = [r["eps"] for r in rs]
        out[f"replay_{mode}_eps"] = statistics.median(eps)
        out[f"replay_{mode}_eps_min"] = min(eps)
        out[f"replay_{mode}_eps_max"] = max(eps)
        out[f"replay_{mode}_eps_per_cpu_second"] = statistics.median(
            r["lines"] / max(1e-9, r["cpu_seconds"]) for r in rs)
        out[f"replay_{mode}_max_rss_bytes"] = max(r["max_rss_bytes"] for r in rs)
        # 1.0 when every run of the mode wrote the same scores (a number: JSON output)
        out[f"replay_{mode}_same_scores"] = float(len(digests[mode]) == 1)
    out["replay_lines"] = runs["labels"][0]["lines"]
    out["replay_repeats"] = repeats
    out["ratio_replay_labels_nolabels"] = out["replay_labels_eps"] / out["replay_nolabels_eps"]
