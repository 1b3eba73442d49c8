"""The docker compose stack, its image and Grafana's files, checked without a Docker engine.

docker-compose.yml is validated against the Compose Specification's JSON schema (vendored in
tests/data, see its README) after the same variable interpolation compose does with .env, and
every cross-reference a typo would break is followed: mounted and built paths, the worker
cluster's addresses and ports against prometheus.yml, data source uids against the dashboards,
credentials against .env.example.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import psycopg
import pytest
import yaml

from txwatch.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
ONE_SHOTS = {"kafka-init", "migrate", "recovery-init"}
WORKERS = ("worker-0", "worker-1")

_VAR = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}"
                  r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*)|(?P<dollar>\$))")


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def interpolate(value: Any, env: dict[str, str], used: set[str]) -> Any:
    """Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR:?error}, $VAR and $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, used) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, used) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m["dollar"]:
            return "$"
        name = m["braced"] or m["plain"]
        used.add(name)
        op, arg = m["op"], m["arg"]
        if name in env and (env[name] or not (op or "").startswith(":")):
            return env[name]
        if op and op.endswith("-"):
            return arg
        raise KeyError(f"${{{name}}} is not set ({arg or 'no default'})")

    return _VAR.sub(sub, value)


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file(ROOT / ".env.example")


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any], env_example: dict[str, str]) -> dict[str, Any]:
    return interpolate(raw, env_example, set())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def test_schema_is_the_vendored_compose_spec() -> None:
    schema = json.loads(SCHEMA.read_text())
    assert schema["title"] == "Compose Specification"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert (ROOT / "tests" / "data" / "LICENSE.compose-spec").read_text().count("Apache License")
    assert "compose-spec.json" in (ROOT / "tests" / "data" / "README.md").read_text()


def test_compose_file_is_valid_against_the_compose_spec(compose: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
    )


def test_the_validator_rejects_a_broken_service(compose: dict[str, Any]) -> None:
    """The schema check above has teeth: a misspelt key fails it."""
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    broken = json.loads(json.dumps(compose))
    broken["services"]["web"]["depends_on"]["migrate"]["condtion"] = "x"
    assert list(validator.iter_errors(broken))


def test_every_variable_comes_from_env_example_and_every_credential_is_a_variable(
    raw: dict[str, Any], env_example: dict[str, str]
) -> None:
    used: set[str] = set()
    interpolate(raw, env_example, used)
    assert used <= set(env_example), f"not in .env.example: {used - set(env_example)}"
    provisioning = "".join(
        re.sub(r"#.*", "", p.read_text())
        for p in (ROOT / "grafana" / "provisioning").rglob("*.yml")
    )
    grafana_vars = set(re.findall(r"\$\{?([A-Z_]+)", provisioning))
    unused = set(env_example) - used
    assert not unused, f".env.example defines unused variables: {unused}"
    # Whatever Grafana's provisioning reads must be in Grafana's environment.
    grafana_env = set(raw["services"]["grafana"]["environment"])
    assert grafana_vars and grafana_vars <= grafana_env
    for name, svc in raw["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"PASSWORD|TOKEN|SECRET", key):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), (name, key, value)
            if key.endswith("DATABASE_URL"):
                assert "${POSTGRES_PASSWORD:?" in value, (name, key)
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        interpolate(raw, {k: v for k, v in env_example.items() if k != "POSTGRES_PASSWORD"},
                    set())


def test_env_file_is_ignored_and_its_example_is_not() -> None:
    def ignored(path: str) -> bool:
        r = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, check=False)
        return r.returncode == 0

    assert ignored(".env")
    assert not ignored(".env.example")
    dockerignore = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                              if ln.strip() and not ln.lstrip().startswith("#")]
    assert {".env", ".git", ".venv"} <= set(dockerignore)


def test_images_are_pinned(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        image = svc.get("image")
        assert image, f"{name} has no image (a build needs a tag too)"
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and re.search(r"\d", tag), (name, image)
    base = re.search(r"^FROM\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base[1]), base


def test_long_running_services_have_healthchecks_and_dependencies_have_conditions(
    services: dict[str, Any],
) -> None:
    for name, svc in services.items():
        if name in ONE_SHOTS:
            assert svc.get("restart") == "no", name
            assert "healthcheck" not in svc
        else:
            assert svc.get("restart") in {"unless-stopped", "on-failure", "always"}, name
            if name != "producer":  # a client with no port: its restart policy is its check
                assert svc["healthcheck"]["test"], name
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on needs the long form with conditions"
        for dep, spec in deps.items():
            assert dep in services, (name, dep)
            cond = spec["condition"]
            if dep in ONE_SHOTS:
                assert cond == "service_completed_successfully", (name, dep)
            else:
                assert cond == "service_healthy" and "healthcheck" in services[dep], (name, dep)
    # Prometheus must keep running (and alerting) while the workers are down.
    assert not set(services["prometheus"].get("depends_on") or {}) & set(WORKERS)


def test_every_mounted_or_built_path_exists(compose: dict[str, Any]) -> None:
    services, named = compose["services"], set(compose["volumes"])
    checked = 0
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            context = ROOT / build["context"]
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
            checked += 1
        for vol in svc.get("volumes") or []:
            source = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
                checked += 1
            else:
                assert source in named, f"{name} mounts undeclared volume {source}"
    assert checked >= 6


def test_dockerfile_copies_existing_paths_and_installs_the_project() -> None:
    text = (ROOT / "Dockerfile").read_text()
    copies = re.findall(r"^COPY\s+(.+)$", text, re.M)
    sources = [s for line in copies for s in shlex.split(line)[:-1]]
    assert sources
    for s in sources:
        assert (ROOT / s).exists(), f"Dockerfile copies {s}, which does not exist"
    assert re.search(r"pip install \.", text)
    assert re.search(r"^USER\s+(?!root)\w+", text, re.M)
    # Everything the package build needs is copied (pyproject's packages and readme).
    for pkg in ("txwatch", "dataflow", "operators", "sinks", "producer"):
        assert pkg in sources
    for pkg in ("txwatch", "dataflow", "operators", "sinks", "producer"):
        assert pkg not in [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                              if ln.strip() and not ln.lstrip().startswith("#")]


def _command(svc: dict[str, Any]) -> list[str]:
    cmd = svc["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


def test_the_workers_form_one_bytewax_cluster(services: dict[str, Any]) -> None:
    addresses = set()
    for i, name in enumerate(WORKERS):
        svc = services[name]
        cmd = _command(svc)
        assert cmd[:4] == ["python", "-m", "bytewax.run", "dataflow"], cmd
        assert f"-i{i}" in cmd
        assert cmd.count("-a") == 1, "-a must be given once: ONE semicolon-separated string"
        addr = cmd[cmd.index("-a") + 1]
        addresses.add(addr)
        hosts = [a.rsplit(":", 1)[0] for a in addr.split(";")]
        assert hosts == list(WORKERS), addr
        assert hosts[i] == svc["hostname"] == name
        # Recovery: -r on the shared volume, with the snapshot and backup intervals.
        assert cmd[cmd.index("-r") + 1] == "/recovery" and "-s" in cmd and "-b" in cmd
        assert "recovery:/recovery" in svc["volumes"]
        env = svc["environment"]
        assert env["BYTEWAX_DATAFLOW_API_ENABLED"] == "true"
        assert env["BYTEWAX_DATAFLOW_API_PORT"] == "3030"
        assert env["TXWATCH_METRICS_HOST"] == "0.0.0.0"
        assert env["TXWATCH_KAFKA_BROKERS"] == "kafka:9092"
        assert env["TXWATCH_DATABASE_URL"].startswith("postgresql://")
    assert len(addresses) == 1, "both processes need the same address list"
    ports = {services[w]["environment"]["TXWATCH_METRICS_PORT"] for w in WORKERS}
    assert len(ports) == 2, "each process has its own TXWATCH_METRICS_PORT"
    init = " ".join(_command(services["recovery-init"]))
    assert "bytewax.recovery /recovery" in init and "test -e /recovery/part-0" in init


def test_prometheus_scrapes_both_endpoints_of_every_worker(services: dict[str, Any]) -> None:
    prom = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    expected = {
        "txwatch": {(w, services[w]["environment"]["TXWATCH_METRICS_PORT"]) for w in WORKERS},
        "bytewax": {(w, services[w]["environment"]["BYTEWAX_DATAFLOW_API_PORT"])
                    for w in WORKERS},
    }
    for job, want in expected.items():
        got = set()
        for sc in jobs[job]["static_configs"]:
            for t in sc["targets"]:
                host, port = t.rsplit(":", 1)
                assert sc["labels"]["process"] == host
                got.add((host, port))
        assert got == want, job
    mounts = services["prometheus"]["volumes"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    assert any(m.startswith("./prometheus/rules:/etc/prometheus/rules") for m in mounts)
    assert prom["rule_files"] == ["rules/*.yml"]


def test_topics_match_the_settings_and_the_dlq_has_a_retention(
    services: dict[str, Any],
) -> None:
    s = Settings()
    init = services["kafka-init"]
    script = init["command"][0]
    topics = re.search(r"for topic in ([^;]+);", script)
    assert topics
    assert set(topics[1].split()) == {
        s.transactions_topic, s.labels_topic, s.controls_topic, s.decisions_topic, s.dlq_topic
    }
    assert init["environment"]["PARTITIONS"] == str(s.topic_partitions)
    assert f"--entity-name {s.dlq_topic}" in script and "retention.ms=$DLQ_RETENTION_MS" in script
    retention_ms = int(init["environment"]["DLQ_RETENTION_MS"])
    assert retention_ms == s.dead_letters_retention_days * 86_400_000
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_services_run_the_documented_commands(services: dict[str, Any]) -> None:
    assert _command(services["migrate"]) == ["txwatch", "db", "migrate"]
    assert _command(services["producer"]) == [
        "txwatch", "produce", "--rate", "200", "--history-days", "3"
    ]
    assert _command(services["web"]) == ["txwatch", "serve"]
    assert services["web"]["environment"]["TXWATCH_WEB_HOST"] == "0.0.0.0"
    for name in ("migrate", "producer", "web", *WORKERS, "recovery-init"):
        assert services[name]["image"] == services["worker-0"]["image"]
        assert services[name]["build"]["context"] == "."
    doc = (ROOT / "docker-compose.yml").read_text()
    assert "txwatch cluster --processes 2" in doc


# --- Grafana --------------------------------------------------------------------------------


def _dashboards() -> dict[str, dict[str, Any]]:
    return {
        p.name: json.loads(p.read_text())
        for p in sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
    }


def test_dashboard_files_are_generated_from_build_dashboards() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "grafana" / "build_dashboards.py"), "--check"],
        capture_output=True, text=True, check=False,
    )
    assert r.returncode == 0, r.stderr


def test_grafana_provisioning_matches_compose_and_the_dashboards(
    services: dict[str, Any],
) -> None:
    prov = ROOT / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "datasources.yml").read_text())["datasources"]
    uids = {d["uid"]: d["type"] for d in ds}
    assert uids == {"prometheus": "prometheus", "postgres": "grafana-postgresql-datasource"}
    assert "password" not in json.dumps([d.get("jsonData", {}) for d in ds]).lower()
    providers = yaml.safe_load((prov / "dashboards" / "dashboards.yml").read_text())["providers"]
    mounts = dict(m.split(":")[:2] for m in services["grafana"]["volumes"] if m.startswith("."))
    assert mounts["./grafana/dashboards"] == providers[0]["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(providers[0]["options"]["path"] + "/")
    assert (ROOT / "grafana" / "dashboards" / Path(home).name).is_file()

    boards = _dashboards()
    assert {b["title"] for b in boards.values()} == {"txwatch — pipeline", "txwatch — detection"}
    for name, board in boards.items():
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), name
        variables = {v["name"] for v in board["templating"]["list"]}
        assert "process" in variables
        for panel in board["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, (name, panel["title"])
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] in uids, (name, panel["title"])
            assert panel["targets"], (name, panel["title"])
            for t in panel["targets"]:
                assert t["datasource"]["uid"] == panel["datasource"]["uid"]
                text = t.get("expr") or t.get("rawSql")
                assert text, (name, panel["title"])
                for var in re.findall(r"\$(\w+)", text):
                    assert var in variables or var.startswith("__"), (panel["title"], var)
    assert "worker" in {v["name"] for v in boards["pipeline.json"]["templating"]["list"]}
    assert any(p["type"] == "table" and p["datasource"]["uid"] == "postgres"
               for p in boards["detection.json"]["panels"])


@pytest.mark.integration
def test_grafana_reader_role_and_the_dashboard_sql(pg: str, pg_server: Any) -> None:
    """The postgres init script makes a role that reads the migrated tables and writes none,
    and every SQL panel runs as that role on the real schema."""
    from sinks.migrate import migrate

    info = psycopg.conninfo.conninfo_to_dict(pg)
    pg_bin = Path(pg_server.server.bin_path)  # the embedded server's own psql
    assert (pg_bin / "psql").is_file()
    env = {
        **os.environ, "PATH": f"{pg_bin}:{os.environ['PATH']}", "PGHOST": str(info["host"]),
        "POSTGRES_USER": str(info["user"]), "POSTGRES_DB": str(info["dbname"]),
        "GRAFANA_DB_USER": "grafana reader", "GRAFANA_DB_PASSWORD": "it's-a-secret",
    }
    if info.get("port"):
        env["PGPORT"] = str(info["port"])
    script = ROOT / "grafana" / "postgres-init" / "10-grafana-reader.sh"
    r = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    # The tables are created after the role (compose runs migrate later).
    migrate(pg)
    with psycopg.connect(pg, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO alerts (transaction_id, user_id, event_time, amount, currency,"
            " amount_base, score, threshold, severity, model_version, worker)"
            " VALUES ('t1', 'u1', now(), 10, 'EUR', 10, 5.5, 3.5, 'review', 'm', 'w')"
        )
    reader = psycopg.conninfo.make_conninfo(pg, user="grafana reader")
    sql_panels = [
        t["rawSql"]
        for board in _dashboards().values()
        for p in board["panels"] if p["type"] != "row"
        for t in p["targets"] if "rawSql" in t
    ]
    assert len(sql_panels) >= 2
    with psycopg.connect(reader, autocommit=True) as conn:
        for sql in sql_panels:
            rows = conn.execute(sql).fetchall()  # type: ignore[call-overload]
            assert rows, sql
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM alerts")
