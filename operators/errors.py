"""Errors the stages raise for their callers to catch, in a module of their own: the stages
are compiled, and a compiled class cannot derive from a built-in exception.

>>> issubclass(IncompatibleSnapshot, RuntimeError)
True
"""

from __future__ import annotations


class IncompatibleSnapshot(RuntimeError):
    """A recovery snapshot was written by a release with another state layout."""
