"""The examples in the docstrings of the flow's packages run (the producer's have their own
test in test_simulator.py).

A module compiled by mypyc keeps no docstrings (``operators.native``): its examples are run
from its source, loaded as a plain module beside the compiled one."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

from operators.native import BUILT

PACKAGES = ("operators", "dataflow", "sinks", "txwatch")
ROOT = Path(__file__).resolve().parent.parent


def _with_docstrings(name: str) -> ModuleType:
    """The module, or, when it runs compiled, a plain copy loaded from its source."""
    mod = importlib.import_module(name)
    source = ROOT / (name.replace(".", "/") + ".py")
    if name not in BUILT or mod.__doc__ is not None or not source.is_file():
        return mod
    # (a flat name as long as the real one: what the examples pickle is the same size)
    plain_name = name.replace(".", "_")
    if plain_name in sys.modules:
        return sys.modules[plain_name]
    spec = importlib.util.spec_from_file_location(plain_name, source)
    assert spec is not None and spec.loader is not None
    plain = importlib.util.module_from_spec(spec)
    sys.modules[plain_name] = plain  # (dataclasses look their module up by name)
    spec.loader.exec_module(plain)
    return plain


def _modules_with_examples() -> list[str]:
    names = []
    for pkg in PACKAGES:
        for m in pkgutil.walk_packages(importlib.import_module(pkg).__path__, f"{pkg}."):
            mod = _with_docstrings(m.name)
            if any(not ex.options.get(doctest.SKIP)
                   for t in doctest.DocTestFinder().find(mod) for ex in t.examples):
                names.append(m.name)
    return sorted(names)


def test_compiled_modules_keep_their_examples():
    # (every compiled module with examples in its source is found, compiled or not)
    names = _modules_with_examples()
    for name in ("operators.models.logistic", "operators.ordering", "operators.sharding",
                 "operators.detector", "operators.parse", "operators.records"):
        assert name in names


@pytest.mark.parametrize("name", _modules_with_examples())
def test_docstring_examples(name: str) -> None:
    mod = _with_docstrings(name)
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS, report=True)
    assert res.attempted > 0 and res.failed == 0
