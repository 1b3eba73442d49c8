"""The README stays true: every setting and every command is documented, and the
documented commands exist with a --help."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from txwatch.cli import build_parser
from txwatch.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_readme():
    missing = [f"TXWATCH_{n.upper()}" for n in Settings.model_fields
               if f"TXWATCH_{n.upper()}" not in README]
    assert not missing, f"README lacks {missing}"


def test_readme_commands_exist_and_every_command_is_documented():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    commands = set(sub.choices)
    documented = set(re.findall(r"`txwatch (\w+)", README))
    assert documented <= commands, documented - commands
    assert commands <= documented, commands - documented


def test_help_of_every_command():
    for cmd in ("demo", "replay", "evaluate", "db", "alerts", "simulate", "produce"):
        out = subprocess.run([sys.executable, "-m", "txwatch.cli", cmd, "--help"],
                             capture_output=True, text=True, check=False)
        assert out.returncode == 0 and "usage: txwatch" in out.stdout, (cmd, out.stderr)
