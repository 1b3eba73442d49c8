"""The examples in the docstrings of the flow's packages run (the producer's have their own
test in test_simulator.py)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

PACKAGES = ("operators", "dataflow", "sinks", "txwatch")


def _modules_with_examples() -> list[str]:
    names = []
    for pkg in PACKAGES:
        for m in pkgutil.walk_packages(importlib.import_module(pkg).__path__, f"{pkg}."):
            mod = importlib.import_module(m.name)
            if any(not ex.options.get(doctest.SKIP)
                   for t in doctest.DocTestFinder().find(mod) for ex in t.examples):
                names.append(m.name)
    return sorted(names)


@pytest.mark.parametrize("name", _modules_with_examples())
def test_docstring_examples(name: str) -> None:
    mod = importlib.import_module(name)
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS, report=True)
    assert res.attempted > 0 and res.failed == 0
