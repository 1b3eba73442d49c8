"""The compiled hot path (mypyc, ``operators.native``) decides exactly as the plain Python.

``make test`` sets ``TXWATCH_REQUIRE_NATIVE=1``: there, every module of ``COMPILED`` must be
the compiled one, and every C extension of ``EXTENSIONS`` built, so these comparisons are
between two different implementations.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from operators.native import BUILT, copy_plain, stale, status, summary
from producer.simulator import SimConfig, iter_transactions

ROOT = Path(__file__).resolve().parents[1]


def test_every_module_is_compiled_when_required():
    st = status()
    assert set(st) == set(BUILT)
    assert not stale(), "conftest refuses stale modules before any test runs"
    if os.environ.get("TXWATCH_REQUIRE_NATIVE") == "1":
        assert st == dict.fromkeys(BUILT, "compiled"), st
        assert summary() == "compiled"
        import operators.models.hst
        import operators.user

        assert not operators.user.__file__.endswith(".py")
        assert operators.models.hst._Router is not None


@pytest.fixture(scope="module")
def pure_tree(tmp_path_factory) -> Path:
    """The sources alone, without any compiled module: what runs without mypyc."""
    dst = tmp_path_factory.mktemp("pure")
    copy_plain(dst)
    return dst


def _run(tree: Path, code: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    res = subprocess.run([sys.executable, "-c", code, *args], cwd=tree, env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


REPLAY = """
import sys
from operators.native import summary
from txwatch.commands.replay import run_replay
run_replay(sys.argv[1], sys.argv[2], label_delay=2 * 86400, workers=1, progress=False)
print(summary())
"""


def test_compiled_and_plain_python_give_identical_decisions(pure_tree, tmp_path):
    src = tmp_path / "tx.jsonl"
    with src.open("w") as f:
        for r in iter_transactions(SimConfig(n_customers=120, n_terminals=240, n_days=30,
                                             seed=11)):
            f.write(json.dumps(r) + "\n")
    a, b = tmp_path / "compiled.jsonl", tmp_path / "pure.jsonl"
    mode_a = _run(ROOT, REPLAY, str(src), str(a)).split()[-1]
    mode_b = _run(pure_tree, REPLAY, str(src), str(b)).split()[-1]
    assert mode_b == "python"
    if os.environ.get("TXWATCH_REQUIRE_NATIVE") == "1":
        assert mode_a == "compiled"

    def rows(p: Path) -> dict[str, tuple]:
        out = {}
        for line in p.open():
            d = json.loads(line)
            out[d["transaction_id"]] = (d["score"], d["alert"], d["severity"],
                                        json.dumps(d["reasons"]), json.dumps(d["components"]))
        return out

    ra, rb = rows(a), rows(b)
    assert len(ra) > 5_000 and ra.keys() == rb.keys()
    assert sum(r[1] for r in ra.values()) > 0  # some alerts to compare
    assert ra == rb  # bit for bit: same floats, alerts, reasons and components


STATE = """
from bench_state import build
print(build().hex())
"""

LOAD = """
import pickle, sys
from operators.native import summary
states = pickle.loads(bytes.fromhex(sys.stdin.read()))
user, term, det = states
from operators.detector import TxwDetector, params_from_settings
from txwatch.settings import Settings
d = TxwDetector(params_from_settings(Settings()), det)
f = user.features(1.75e9, 55.0, terminal="T9", category="5999", country="FR", lat=48.8,
                  lon=2.3)
f.update(term.features(1.75e9))
score, comps = d.score(user, f)
print(repr(score), repr(comps["anomaly"]), summary())
"""

BUILD = '''
import pickle, random
from operators.detector import TxwDetector, params_from_settings
from operators.terminal import TerminalState
from operators.user import UserState
from txwatch.settings import Settings


def build():
    rng = random.Random(3)
    d = TxwDetector(params_from_settings(Settings()))
    u, t = UserState(), TerminalState()
    ts = 1.7e9
    for i in range(400):
        ts += rng.expovariate(1 / 20_000)
        kw = {"terminal": f"T{rng.randrange(6)}", "category": "5411", "country": "BE",
              "lat": 50.8 + rng.random() / 10, "lon": 4.3, "local_hour": None}
        amount = round(rng.lognormvariate(3.5, 0.6), 2)
        f = u.features(ts, amount, **kw)
        f.update(t.features(ts))
        score, comps = d.score(u, f)
        d.learn(u, f, score)
        u.learn(ts, amount, protect=score >= comps["threshold"], **kw)
        t.learn_txn(ts)
        if i % 7 == 0:
            t.apply_label(ts, i % 21 == 0, ts + 86400)
        d.learn_label(d.keep(f, comps), i % 21 == 0)
    return pickle.dumps((u, t, d.snapshot()), protocol=pickle.HIGHEST_PROTOCOL)
'''


def test_snapshots_load_across_compiled_and_plain_python(pure_tree, tmp_path):
    """A snapshot taken by either build restores in the other (same classes, same pickles),
    and the restored state scores the same."""
    helper = tmp_path / "helper"
    helper.mkdir()
    (helper / "bench_state.py").write_text(BUILD)

    def run(tree: Path, code: str, stdin: str = "") -> str:
        env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{helper}"}
        res = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, input=stdin,
                             capture_output=True, text=True, timeout=300, check=False)
        assert res.returncode == 0, res.stderr[-3000:]
        return res.stdout

    blob_c = run(ROOT, STATE).strip()
    blob_p = run(pure_tree, STATE).strip()
    assert pickle.loads(bytes.fromhex(blob_p))[0].n == 400
    results = {(made, loaded): run(tree, LOAD, blob).split()
               for made, blob in (("c", blob_c), ("p", blob_p))
               for loaded, tree in (("c", ROOT), ("p", pure_tree))}
    scores = {k: v[0] for k, v in results.items()}
    assert len(set(scores.values())) == 1, scores
    assert results[("c", "p")][2] == "python"
    if os.environ.get("TXWATCH_REQUIRE_NATIVE") == "1":
        assert results[("p", "c")][2] == "compiled"


def test_installed_package_imports_from_any_directory(tmp_path):
    """As the ``txwatch`` command runs it: no source tree on the path, only the install
    (the compiled modules' shared library must be found inside the package)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run(
        [sys.executable, "-c", "import operators.native as n, operators.user as u; "
         "print(n.summary(), u.UserState().n)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    mode, n = res.stdout.split()
    assert n == "0" and mode == summary()


def test_an_extension_left_by_an_earlier_build_is_reported(tmp_path):
    """An extension of a module no longer in COMPILED would shadow its source: stale() names
    it (the suite and the worker refuse or warn), and `make native` removes it."""
    import importlib.machinery

    from operators import native

    ghost = Path(native.__file__).with_name(
        "decision" + importlib.machinery.EXTENSION_SUFFIXES[0])
    assert not ghost.exists()
    ghost.write_bytes(b"")
    try:
        assert "operators.decision" in native.orphans()
        assert any(m.startswith("operators.decision (no longer compiled") for m in stale())
    finally:
        ghost.unlink()
    assert "operators.decision" not in native.orphans()
