"""The input contract: what is accepted, what is dead-lettered and why."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.parse import InvalidMessage, TxnParser, parse_control, parse_label
from txwatch.settings import Settings

NOW = datetime(2024, 6, 1, tzinfo=UTC).timestamp()


def parser(**kw) -> TxnParser:
    return TxnParser(Settings(**kw), clock=lambda: NOW)


def msg(**fields) -> bytes:
    base = {"transaction_id": "t1", "user_id": "u1", "amount": 10.5,
            "timestamp": "2024-05-31T12:00:00Z"}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def test_valid_minimal_and_optional_fields():
    t = parser().parse(msg(merchant_id="M1", terminal_id="T1", merchant_category="5411",
                           country="fr", lat=48.8, lon=2.3, channel="pos", is_fraud=1))
    assert t.amount == Decimal("10.5") and t.amount_base == Decimal("10.5")
    assert t.timestamp == datetime(2024, 5, 31, 12, tzinfo=UTC)
    assert (t.country, t.currency, t.lat, t.channel) == ("FR", "EUR", 48.8, "pos")
    assert not hasattr(t, "is_fraud")


def test_offsets_epoch_and_currency_conversion():
    p = parser(currency_rates={"EUR": 1, "USD": "0.5"})
    t = p.parse(msg(timestamp="2024-05-31T14:00:00+02:00", currency="usd", amount=3))
    assert t.timestamp == datetime(2024, 5, 31, 12, tzinfo=UTC)
    assert t.utc_offset_minutes == 120
    assert (t.currency, t.amount, t.amount_base) == ("USD", Decimal("3"), Decimal("1.5"))
    e = p.parse(msg(timestamp=1717156800))
    assert e.timestamp == datetime(2024, 5, 31, 12, tzinfo=UTC) and e.utc_offset_minutes is None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty message"),
        (b"\xff\xfe", "not valid UTF-8"),
        (b"{", "not valid JSON"),
        (b"[1]", "not a JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, "message too large"),
        (msg(transaction_id=...), "missing field: transaction_id"),
        (msg(user_id=...), "missing field: user_id"),
        (msg(amount=...), "missing field: amount"),
        (msg(timestamp=...), "missing field: timestamp"),
        (msg(user_id=5), "wrong type for user_id"),
        (msg(amount=True), "wrong type for amount"),
        (msg(amount=-0.01), "amount is negative"),
        (b'{"transaction_id":"t","user_id":"u","amount":NaN,"timestamp":1717156800}',
         "not valid JSON"),
        (b'{"transaction_id":"t","user_id":"u","amount":Infinity,"timestamp":1717156800}',
         "not valid JSON"),
        (msg(amount="NaN"), "amount is not finite"),
        (msg(amount="-Infinity"), "amount is not finite"),
        (msg(amount=1e300), "amount out of range"),
        (msg(timestamp="2024-05-31T12:00:00"), "no UTC offset"),
        (msg(timestamp="1999-12-31T23:59:59Z"), "timestamp before"),
        (msg(timestamp="2024-06-03T00:00:00Z"), "too far in the future"),
        (msg(currency="XXX"), "unknown currency"),
        (msg(country="FRA"), "bad length for country"),
        (msg(lat=91, lon=0), "lat out of range"),
        (msg(lat=1), "lat and lon must come together"),
        (msg(user_id="u" * 500), "bad length for user_id"),
    ],
)
def test_rejections_have_clear_reasons(raw, reason):
    with pytest.raises(InvalidMessage, match=reason):
        parser(max_message_bytes=16_384).parse(raw)


def test_deep_json_is_rejected_not_crashing():
    raw = b'{"a":' * 5000 + b"1" + b"}" * 5000
    with pytest.raises(InvalidMessage, match=r"nested too deeply|too large"):
        parser(max_message_bytes=10**6).parse(raw)


def test_replay_turns_timestamp_bounds_off():
    t = parser(replay=True).parse(msg(timestamp="1990-01-01T00:00:00Z"))
    assert t.timestamp.year == 1990


def test_labels_and_controls():
    lb = parse_label(json.dumps({
        "transaction_id": "t1", "user_id": "u1", "terminal_id": None, "label": "legit",
        "transaction_time": "2024-01-01T00:00:00Z", "label_time": "2024-01-08T00:00:00Z",
    }).encode())
    assert not lb.is_fraud and lb.terminal_id is None
    with pytest.raises(InvalidMessage, match="label must be"):
        parse_label(b'{"transaction_id":"t","user_id":"u","label":"maybe",'
                    b'"transaction_time":1,"label_time":2}')
    c = parse_control(b'{"kind":"snooze","scope":"terminal","target":"T1",'
                      b'"until":"2024-01-02T00:00:00Z","issued_at":"2024-01-01T00:00:00Z"}')
    assert (c.scope, c.target) == ("terminal", "T1")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_fail_cleanly(raw):
    try:
        t = parser().parse(raw)
    except InvalidMessage as e:
        assert str(e)
    else:
        assert t.amount >= 0 and t.timestamp.tzinfo is not None


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(
    st.sampled_from(["transaction_id", "user_id", "amount", "timestamp", "currency", "lat",
                     "lon", "country", "terminal_id"]),
    json_values, max_size=9))
def test_any_json_object_parses_or_fails_cleanly(obj):
    raw = json.dumps(obj).encode()
    try:
        t = parser().parse(raw)
    except InvalidMessage as e:
        assert str(e)
    else:
        assert math.isfinite(float(t.amount_base)) and t.amount_base >= 0
        assert isinstance(t.transaction_id, str) and isinstance(t.user_id, str)


def test_records_pickle_as_the_frozen_records_of_earlier_releases():
    """Snapshots hold Txn and Label objects: their state is the list of field values that the
    frozen dataclasses of state version 7's first releases wrote, both ways."""
    import copyreg
    import io
    import pickle
    from dataclasses import fields
    from datetime import UTC, datetime
    from decimal import Decimal

    from operators.records import Label, Txn

    ts = datetime(2018, 4, 1, 12, tzinfo=UTC)
    t = Txn("t1", "u1", Decimal("12.50"), ts, "EUR", Decimal("12.50"), terminal_id="T1")
    lb = Label("t1", "u1", "T1", "fraud", ts, ts)
    for rec in (t, lb):
        state = rec.__getstate__()
        assert state == [getattr(rec, f.name) for f in fields(rec)]  # the frozen format
        fresh = type(rec).__new__(type(rec))
        fresh.__setstate__(state)
        assert fresh == rec == pickle.loads(pickle.dumps(rec))
    assert pickle.loads(pickle.dumps(t)).ts_seconds == ts.timestamp()
    # pickled one at a time between processes: no class looked up by name but the record's
    # own constructor (a Decimal or a datetime costs one each), and the times' offsets kept
    off = datetime.fromisoformat("2018-04-01T14:00:00+02:00")
    t2 = Txn("t2", "u1", Decimal("0.10"), off, "EUR", Decimal("0.10"), utc_offset_minutes=120)
    for rec in (t, lb, t2):
        wire = pickle.dumps(rec)
        assert b"decimal" not in wire and b"datetime" not in wire
        back = pickle.loads(wire)
        assert back == rec and [getattr(back, f.name) for f in fields(back)] == [
            getattr(rec, f.name) for f in fields(rec)]
        assert back.__getstate__() == rec.__getstate__()
    assert pickle.loads(pickle.dumps(t2)).timestamp.utcoffset() == off.utcoffset()

    class Earlier(pickle.Pickler):
        """Pickles a record as the frozen dataclasses of earlier releases did: the class
        (``copyreg.__newobj__``: ``cls.__new__(cls)``), then the list of field values."""

        def reducer_override(self, obj: object) -> object:
            if type(obj) in (Txn, Label):
                return (copyreg.__newobj__, (type(obj),), obj.__getstate__())
            return NotImplemented

    for rec in (t, lb, t2):
        buf = io.BytesIO()
        Earlier(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(rec)
        assert b"_txn" not in buf.getvalue() and b"_label" not in buf.getvalue()
        assert pickle.loads(buf.getvalue()) == rec


def test_every_record_pickles_and_comes_back_equal():
    """Records cross between processes pickled (Bytewax), the compiled classes as the plain
    ones: frozen ones included, which a compiled class cannot unpickle field by field."""
    import pickle
    from datetime import UTC, datetime
    from decimal import Decimal

    from operators.records import Control, DeadLetter, Decision, Label, Reason, Txn

    ts = datetime(2018, 4, 1, 12, tzinfo=UTC)
    t = Txn("t1", "u1", Decimal("12.50"), ts, "EUR", Decimal("12.50"), terminal_id="T1")
    r = Reason("amount_spike", "amount 5.3x this user's 30-day mean", 5.3)
    records = [
        t, Label("t1", "u1", "T1", "fraud", ts, ts), r,
        Decision(t, 4.2, 3.5, "review", (r,), {"amount": 12.5}, {"anomaly": 4.2}, "txw-x",
                 worker="w", decided_at=1.5, snoozed=True, extra={"k": 1}),
        Control("snooze", "user", "u1", ts, ts),
        DeadLetter(b"{bad", "not JSON", "transactions", 3, 17, ts),
    ]
    for rec in records:
        back = pickle.loads(pickle.dumps(rec, protocol=pickle.HIGHEST_PROTOCOL))
        assert type(back) is type(rec) and back == rec
