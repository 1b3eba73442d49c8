"""The flow's setting of Python's cycle collector (``TXWATCH_GC_THRESHOLD``)."""

import gc
import os
import subprocess
import sys

import pytest

from dataflow.build import tune_gc
from txwatch.settings import Settings


@pytest.fixture
def restore_gc():
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)
    gc.unfreeze()


def test_the_setting_sets_the_young_generation_threshold_and_freezes(restore_gc):
    gc.set_threshold(700, 10, 10)
    gc.unfreeze()
    tune_gc(Settings(gc_threshold=12_345))
    assert gc.get_threshold() == (12_345, 50, 100)
    assert gc.get_freeze_count() > 0  # what existed then is out of every later collection


def test_zero_keeps_pythons_own_settings(restore_gc):
    gc.set_threshold(700, 10, 10)
    gc.unfreeze()
    tune_gc(Settings(gc_threshold=0))
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


def test_a_negative_threshold_is_refused():
    with pytest.raises(ValueError, match="gc_threshold"):
        Settings(gc_threshold=-1)


def test_the_worker_entry_point_tunes_its_process():
    # `python -m bytewax.run dataflow` takes `dataflow.flow` (the Kafka flow's build asks
    # the broker for its partitions: a stand-in flow here, the entry point's own code runs)
    env = {**os.environ, "TXWATCH_GC_THRESHOLD": "23456", "TXWATCH_METRICS_PORT": "0"}
    code = ("import gc, dataflow; dataflow.build_flow = lambda s: 'flow'; "
            "assert dataflow.flow == 'flow'; print(gc.get_threshold()[0])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.split()[-1] == "23456"


def test_a_replay_collects_less_often_unless_the_setting_is_given(monkeypatch):
    from txwatch.commands.replay import REPLAY_GC_THRESHOLD, replay_settings

    monkeypatch.delenv("TXWATCH_GC_THRESHOLD", raising=False)
    assert Settings().gc_threshold == 50_000  # the worker's
    assert replay_settings(Settings()).gc_threshold == REPLAY_GC_THRESHOLD > 50_000
    monkeypatch.setenv("TXWATCH_GC_THRESHOLD", "23456")
    assert replay_settings(Settings()).gc_threshold == 23_456
    assert replay_settings(Settings(), gc_threshold=0).gc_threshold == 0
