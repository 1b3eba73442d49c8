"""What the command line loads: ``txwatch --help`` builds every sub-command's parser, so the
heavy libraries (FastAPI, psycopg, numpy, river, Bytewax) are imported only by the commands
that use them, when they run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("fastapi", "uvicorn", "psycopg", "psycopg_pool", "numpy", "scipy", "river",
         "sklearn", "matplotlib", "bytewax")


def _loaded_after(code: str) -> list[str]:
    """The heavy modules loaded after running ``code`` in a fresh interpreter."""
    probe = (f"import sys\n{code}\n"
             f"print(__import__('json').dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parent.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_parser_of_every_command_loads_no_heavy_library():
    assert _loaded_after("from txwatch.cli import build_parser\nbuild_parser()") == []


def test_the_review_apps_public_names_load_it_on_first_use():
    assert _loaded_after("import txwatch.web") == []
    assert "fastapi" in _loaded_after("from txwatch.web import create_app")


def test_replay_without_a_database_loads_neither_psycopg_nor_the_web_app(tmp_path):
    tx = tmp_path / "tx.jsonl"
    tx.write_text(json.dumps({
        "transaction_id": "t1", "user_id": "u1", "amount": 12.5,
        "timestamp": "2018-04-01T10:00:00Z", "terminal_id": "T1", "is_fraud": 0}) + "\n")
    scores = tmp_path / "scores.jsonl"
    loaded = _loaded_after(
        "from txwatch.cli import main\n"
        f"assert main(['replay', '--input', {str(tx)!r}, '--scores', {str(scores)!r}]) == 0")
    assert "bytewax" in loaded  # it did run the flow
    # (nor river and SciPy: the supervised model is compiled, operators.models.logistic)
    assert not {"psycopg", "psycopg_pool", "fastapi", "uvicorn", "matplotlib", "river",
                "scipy", "sklearn"} & set(loaded)
    assert len(scores.read_text().splitlines()) == 1
