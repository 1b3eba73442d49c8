"""Which modules of the per-event path run compiled, and whether they are current.

``setup.py`` compiles the modules of :data:`COMPILED` with mypyc and builds the hand-written C
of :data:`EXTENSIONS`, into extensions placed beside their sources (``make native`` rebuilds
them after an edit), and records the SHA-256 of each source it compiled in
``native-build.json`` beside this file. Python imports an extension before a source of the
same name, so an extension built from another version of its source would run stale code:
:func:`stale` names them, the test suite refuses to start with any, and the worker logs
them at start.

>>> from operators.native import BUILT, status
>>> sorted(status()) == sorted(BUILT)
True
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil

COMPILED = (
    "operators.records",
    "operators.user",
    "operators.detector",
    "operators.terminal",
    "operators.reasons",
    "operators.models.quantile",
    "operators.models.logistic",
    "operators.parse",
    "operators.ordering",
    "operators.sharding",
    "operators.stages",
)
"""The modules compiled by mypyc, in build order (plain imports: no package state here)."""

EXTENSIONS = {"operators.models._hstroute": "operators/models/_hstroute.c"}
"""Extensions written in C, by module, with their source: what no compiler of Python makes
fast enough (each says why at its top). Each has a pure-Python path beside it that gives the
same results, used when it is not built."""

BUILT = (*COMPILED, *EXTENSIONS)
"""Every module the build makes an extension of."""


MANIFEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native-build.json")
"""``{module: sha256 of the source compiled}``, written by ``setup.py`` at each build."""


def source_hash(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _source(module: str) -> str:
    """The source file an extension of ``module`` is built from (relative to the root)."""
    return EXTENSIONS.get(module) or os.path.join(*module.split(".")) + ".py"


def write_manifest(root: str) -> None:
    """Record the sources being compiled (``setup.py`` calls it before compiling)."""
    hashes = {m: source_hash(os.path.join(root, _source(m))) for m in BUILT}
    with open(MANIFEST, "w") as f:
        json.dump(hashes, f, indent=1, sort_keys=True)


def _paths(module: str) -> tuple[str | None, str]:
    spec = importlib.util.find_spec(module)
    origin = spec.origin if spec is not None else None
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return origin, os.path.join(root, _source(module))


def status() -> dict[str, str]:
    """``{module: "compiled" | "python" | "stale"}`` for every module of :data:`BUILT`
    ("python": not built, its Python runs, or the pure-Python path beside a C extension)."""
    out: dict[str, str] = {}
    built: dict[str, str] | None = None
    for module in BUILT:
        origin, source = _paths(module)
        if origin is None or origin.endswith(".py"):
            out[module] = "python"
            continue
        if built is None:
            try:
                with open(MANIFEST) as f:
                    built = json.load(f)
            except (OSError, ValueError):
                built = {}
        fresh = os.path.exists(source) and built.get(module) == source_hash(source)
        out[module] = "compiled" if fresh else "stale"
    return out


def orphans() -> list[str]:
    """Extensions beside txwatch's sources for modules that are no longer compiled (left by
    an earlier build): Python would import one before its source, running old code."""
    import importlib.machinery

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found = []
    for pkg in ("operators", os.path.join("operators", "models")):
        d = os.path.join(root, pkg)
        for name in sorted(os.listdir(d)):
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                if name.endswith(suffix):
                    module = ".".join([*pkg.split(os.sep), name[: -len(suffix)]])
                    if module not in BUILT and not name.startswith("_native__"):
                        found.append(module)
                    break
    return found


def stale() -> list[str]:
    """The compiled modules whose source changed after they were compiled, and extensions of
    modules no longer compiled (:func:`orphans`, named with a note)."""
    return ([m for m, s in status().items() if s == "stale"]
            + [f"{m} (no longer compiled: a leftover of an earlier build)" for m in orphans()])


def summary() -> str:
    """One word for logs and benchmarks: ``compiled``, ``python``, ``mixed`` or ``stale``."""
    values = set(status().values())
    if "stale" in values:
        return "stale"
    return values.pop() if len(values) == 1 else "mixed"


PACKAGES = ("dataflow", "operators", "sinks", "producer", "txwatch", "migrations")
"""txwatch's top-level packages (pyproject.toml)."""


def copy_plain(dst: str | os.PathLike[str]) -> None:
    """Copy txwatch's sources to ``dst`` without the compiled modules: with ``dst`` first on
    the path (and as the working directory), the same code runs as plain Python. The bench
    and ``tests/test_native.py`` measure and compare the two builds with it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for pkg in PACKAGES:
        shutil.copytree(os.path.join(root, pkg), os.path.join(dst, pkg),
                        ignore=shutil.ignore_patterns("*.so", "__pycache__"))
