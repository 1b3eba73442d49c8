"""The librdkafka settings given to flows on the embedded broker."""

import json

from txwatch.embedded import EMBEDDED_KAFKA_CONFIG, embedded_kafka_extra, flow_env

TOPICS = dict.fromkeys(("transactions", "labels", "controls", "dlq", "decisions"), "t")


def test_flows_on_the_embedded_broker_do_not_wait_out_each_fetch(monkeypatch):
    monkeypatch.delenv("TXWATCH_KAFKA_EXTRA_CONFIG", raising=False)
    env = flow_env("127.0.0.1:1", "postgresql:///x", TOPICS)
    assert json.loads(env["TXWATCH_KAFKA_EXTRA_CONFIG"]) == EMBEDDED_KAFKA_CONFIG
    assert int(EMBEDDED_KAFKA_CONFIG["fetch.wait.max.ms"]) < 100


def test_the_users_own_kafka_settings_are_kept_and_win(monkeypatch):
    own = {"fetch.wait.max.ms": "100", "security.protocol": "SSL"}
    monkeypatch.setenv("TXWATCH_KAFKA_EXTRA_CONFIG", json.dumps(own))
    assert json.loads(embedded_kafka_extra()) == own
    assert json.loads(embedded_kafka_extra({})) == EMBEDDED_KAFKA_CONFIG


def test_starting_the_embedded_services_prints_nothing_alarming(capfd, tmp_path, monkeypatch):
    # what `make demo` shows first: no client's "Connection refused" while the broker starts,
    # no platformdirs warning about XDG_RUNTIME_DIR from the embedded database
    import warnings

    from txwatch.embedded import EmbeddedBroker, EmbeddedPostgres

    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    with EmbeddedBroker() as broker:
        broker.create_topics(["t"], partitions=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pg = EmbeddedPostgres(tmp_path / "pg").start()
        pg.stop()
    err = capfd.readouterr().err
    assert "Connection refused" not in err and "FAIL" not in err
    assert not [w for w in caught if "XDG_RUNTIME_DIR" in str(w.message)]
