"""Compiles the per-event hot path with mypyc (the mypy project's compiler of type-annotated
Python to C extensions) when it is available, and the few extensions written in C; without
them txwatch runs the same modules as plain Python, with the same results, about 1.4x slower
(docs/benchmarks.md, "Compiled").

The lists are ``operators.native.COMPILED`` (mypyc) and ``operators.native.EXTENSIONS`` (C).
``TXWATCH_PURE_PYTHON=1`` builds without compiling. Everything else about the package is in
pyproject.toml.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from operators.native import COMPILED, EXTENSIONS, write_manifest


def _ext_modules() -> list:
    if os.environ.get("TXWATCH_PURE_PYTHON") == "1":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("txwatch: mypyc not installed, building pure Python", file=sys.stderr)
        return []
    paths = [m.replace(".", "/") + ".py" for m in COMPILED]
    write_manifest(os.path.dirname(os.path.abspath(__file__)))
    hand = [Extension(m, [src], extra_compile_args=["-O2"]) for m, src in EXTENSIONS.items()]
    return [*mypycify(["--ignore-missing-imports", "--follow-imports=skip", *paths],
                      opt_level="3", group_name="operators._native"), *hand]


setup(ext_modules=_ext_modules())
