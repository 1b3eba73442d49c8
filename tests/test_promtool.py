"""Prometheus configuration and rules: promtool's checks and unit tests, and static checks that
every metric name used by the rules and dashboards is one that txwatch or bytewax exports.

Needs promtool (Debian's prometheus package; ``make test`` installs it through
scripts/ensure-debian-packages.sh). Without it these tests fail, saying so.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from prometheus_client import CollectorRegistry, ProcessCollector

from txwatch.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
PROM = ROOT / "prometheus"
ENSURE = ROOT / "scripts" / "ensure-debian-packages.sh"


def _load_render() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "render_dashboards", ROOT / "scripts" / "render_dashboards.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


rd = _load_render()


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: run scripts/ensure-debian-packages.sh "
                    "prometheus (make test does)")
    return path


def run(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]


def rule_files() -> list[str]:
    files = sorted(str(p) for p in (PROM / "rules").glob("*.yml"))
    assert files
    return files


def test_prometheus_config_is_valid(promtool: str) -> None:
    r = run(promtool, "check", "config", str(PROM / "prometheus.yml"))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert f"{len(rule_files())} rule files found" in out


def test_rules_are_valid(promtool: str) -> None:
    r = run(promtool, "check", "rules", *rule_files())
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(rd.rule_expressions())} rules found" in r.stdout + r.stderr


def test_rules_pass_their_unit_tests(promtool: str) -> None:
    tests = sorted(str(p) for p in (PROM / "tests").glob("*.yml"))
    assert tests
    r = run(promtool, "test", "rules", *tests, cwd=PROM / "tests")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


def test_promtool_rejects_a_broken_rule_and_a_wrong_expectation(
    promtool: str, tmp_path: Path
) -> None:
    """The checks above have teeth."""
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(\n")
    assert run(promtool, "check", "rules", str(bad)).returncode != 0
    test = yaml.safe_load((PROM / "tests" / "txwatch_test.yml").read_text())
    test["rule_files"] = [str(p) for p in rule_files()]
    case = next(t for t in test["tests"] if t["name"].startswith("a process not ready"))
    case["alert_rule_test"][-1]["exp_alerts"][0]["exp_labels"]["process"] = "worker-0"
    test["tests"] = [case]
    wrong = tmp_path / "wrong_test.yml"
    wrong.write_text(yaml.safe_dump(test))
    r = run(promtool, "test", "rules", str(wrong))
    assert r.returncode != 0 and "FAILED" in r.stdout + r.stderr


def _alerts() -> dict[str, dict]:
    out = {}
    for path in rule_files():
        for group in yaml.safe_load(Path(path).read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    out[rule["alert"]] = rule
    return out


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for path in (PROM / "tests").glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check["exp_alerts"] else silent).add(check["alertname"])
    alerts = set(_alerts())
    assert len(alerts) >= 10
    assert alerts - firing == set(), "never shown firing"
    assert alerts - silent == set(), "never shown silent"


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_has_severity_summary_and_a_runbook_section() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    anchors = {_slug(h) for h in re.findall(r"^#+\s+(.+)$", doc, re.M)}
    for name, rule in _alerts().items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        runbook = rule["annotations"]["runbook"]
        page, _, anchor = runbook.partition("#")
        assert page == "docs/operations.md", name
        assert anchor in anchors, f"{name}: no section #{anchor} in docs/operations.md"
        assert name in doc


def test_metric_name_extraction() -> None:
    names = rd.metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="y",le="1.0"}[5m])))'
        " / on () group_left b:rec * 1000 > scalar(max(c_total offset 1h)) and d"
    )
    assert names == {"a_bucket", "b:rec", "c_total", "d"}
    assert rd.metric_names('sum(rate(x_total{process=~"$process"}[$__rate_interval]))') == {
        "x_total"
    }
    assert rd.to_promql('rate(x{p=~"$process"}[$__rate_interval]) $__range', "10s", "5m") == (
        'rate(x{p=~".*"}[10s]) 5m'
    )


def _catalogue() -> set[str]:
    """Every sample name txwatch's metrics (and the process collector) can export."""
    reg = CollectorRegistry()
    Metrics.create(reg)
    ProcessCollector(registry=reg)
    names = set()
    for fam in reg.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
        names.update(fam.name + s for s in suffixes.get(fam.type, [""]))
    return names


def _bytewax_has(name: str) -> bool:
    import bytewax.run  # bytewax is a namespace package: no bytewax.__file__

    base = re.sub(r"^bytewax_|_(total|bucket|count|sum)$", "", name)
    pkg = Path(bytewax.run.__file__).parent
    for f in [*pkg.glob("_bytewax*.so"), *pkg.rglob("*.py")]:
        if base.encode() in f.read_bytes():
            return True
    return False


def test_every_metric_used_is_in_the_catalogue_or_bytewax() -> None:
    used: dict[str, str] = {}
    for board in rd.load_dashboards().values():
        for q in rd.panel_queries(board):
            if q.kind == "promql":
                used.update((n, f"{q.dashboard}: {q.panel}") for n in rd.metric_names(q.text))
        for expr in rd.variable_queries(board):
            used.update((n, board["title"]) for n in rd.metric_names(expr))
    rules = rd.rule_expressions()
    for rule, expr in rules.items():
        used.update((n, rule) for n in rd.metric_names(expr))
    catalogue = _catalogue()
    unknown = {}
    for name, where in used.items():
        if ":" in name:
            ok = name in rules  # a recording rule of ours
        elif name.startswith("bytewax_"):
            ok = _bytewax_has(name)
        else:
            ok = name in catalogue or name == "up"
        if not ok:
            unknown[name] = where
    assert not unknown, f"not exported by txwatch or bytewax: {unknown}"
    assert {"txwatch_decision_latency_seconds_bucket", "bytewax_kafka_consumer_lag"} <= set(used)
    # Whatever is recorded is also used (no dead recording rules).
    recorded = {r for r in rules if ":" in r}
    used_recorded = {n for n in used if ":" in n}
    assert recorded <= used_recorded, recorded - used_recorded


def test_bytewax_lag_gauge_has_the_labels_the_rules_aggregate_by() -> None:
    from bytewax.connectors.kafka import BYTEWAX_CONSUMER_LAG_GAUGE

    assert set(BYTEWAX_CONSUMER_LAG_GAUGE._labelnames) == {"step_id", "topic", "partition"}
    assert "sum by (topic) (bytewax_kafka_consumer_lag)" in rules_text()


def rules_text() -> str:
    return "".join(Path(p).read_text() for p in rule_files())


# --- scripts/ensure-debian-packages.sh -------------------------------------------------------


def _as_nobody() -> list[str]:
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_ensure_packages_does_nothing_when_binaries_are_there() -> None:
    r = run("bash", str(ENSURE), "prometheus:promtool", "coreutils:ls")
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r


def test_ensure_packages_without_root_names_what_to_install() -> None:
    r = run(*_as_nobody(), "bash", str(ENSURE), "coreutils:ls", "txwatch-nopkg:txwatch-nobin")
    assert r.returncode == 1
    assert "txwatch-nopkg" in r.stderr and "root" in r.stderr
    assert "coreutils" not in r.stderr.split("Run:")[1]
    assert run("bash", str(ENSURE), "Bad;name").returncode == 2
    assert run("bash", str(ENSURE)).returncode == 2


def _stub_apt(tmp_path: Path, succeed: bool) -> dict[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    apt = bindir / "apt-get"
    create = f'printf "#!/bin/sh\\n" > "{bindir}/txwatch-nobin"; chmod +x "{bindir}/txwatch-nobin"'
    apt.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> "{tmp_path}/calls"\n'
        + (f'case "$1" in install) {create};; esac\nexit 0\n' if succeed
           else 'case "$1" in update) exit 0;; esac\n'
                'echo "E: Unable to locate package txwatch-nopkg"; exit 100\n')
    )
    apt.chmod(apt.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}


def test_ensure_packages_installs_missing_ones_with_apt(tmp_path: Path) -> None:
    env = _stub_apt(tmp_path, succeed=True)
    r = run("bash", str(ENSURE), "prometheus:promtool", "txwatch-nopkg:txwatch-nobin", env=env)
    assert r.returncode == 0, r.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls == ["install -y -q --no-install-recommends txwatch-nopkg"]
    assert "installed Debian package(s): txwatch-nopkg" in r.stderr


def test_ensure_packages_reports_apt_failures(tmp_path: Path) -> None:
    env = _stub_apt(tmp_path, succeed=False)
    r = run("bash", str(ENSURE), "txwatch-nopkg:txwatch-nobin", env=env)
    assert r.returncode == 1
    assert "could not install: txwatch-nopkg" in r.stderr
    assert "Unable to locate package" in r.stderr
    # It tried, updated the package lists once, and tried again.
    calls = (tmp_path / "calls").read_text().splitlines()
    assert [c.split()[0] for c in calls] == ["install", "update", "install"]


def test_the_operations_doc_lists_every_txwatch_metric() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    reg = CollectorRegistry()
    Metrics.create(reg)
    for fam in reg.collect():
        shown = fam.name + ("_total" if fam.type == "counter" else "")
        assert f"| `{shown}` | {fam.type} |" in doc, shown
