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
