"""Parsing and validation of the input contract: bytes in, :class:`Txn` or a reason out.

Pure functions: no Kafka, no clock unless given one.

>>> from txwatch.settings import Settings
>>> p = TxnParser(Settings(replay=True))
>>> t = p.parse(b'{"transaction_id": "t1", "user_id": "u1", "amount": 12.5,'
...             b' "timestamp": "2018-04-01T10:00:00Z"}')
>>> (t.user_id, str(t.amount_base), t.timestamp.isoformat())
('u1', '12.5', '2018-04-01T10:00:00+00:00')
>>> try:
...     p.parse(b'{"user_id": "u1"}')
... except InvalidMessage as e:
...     print(e)
missing field: transaction_id
"""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from operators.records import Control, Label, Txn
from txwatch.settings import Settings

MAX_ID_LEN = 128
MAX_STR_LEN = 64


class InvalidMessage(ValueError):
    """The message breaks the input contract; ``str(e)`` is the reason written to the DLQ."""


def _loads(raw: bytes, max_bytes: int) -> dict[str, Any]:
    if not raw:
        raise InvalidMessage("empty message")
    if len(raw) > max_bytes:
        raise InvalidMessage(f"message too large: {len(raw)} bytes > {max_bytes}")
    try:
        obj = orjson.loads(raw)  # strict RFC 8259: NaN and Infinity are not JSON
    except orjson.JSONDecodeError as e:
        msg = str(e)
        if "UTF-8" in msg:
            raise InvalidMessage("not valid UTF-8") from e
        if "depth limit" in msg:
            raise InvalidMessage("JSON nested too deeply") from e
        raise InvalidMessage(f"not valid JSON: {msg[:80]}") from e
    if not isinstance(obj, dict):
        raise InvalidMessage(f"not a JSON object: {type(obj).__name__}")
    return obj


def _req_str(obj: dict[str, Any], key: str, max_len: int = MAX_ID_LEN) -> str:
    if key not in obj or obj[key] is None:
        raise InvalidMessage(f"missing field: {key}")
    return _str(obj[key], key, max_len)


def _str(v: Any, key: str, max_len: int) -> str:
    if not isinstance(v, str):
        raise InvalidMessage(f"wrong type for {key}: {type(v).__name__}, expected string")
    if not v or len(v) > max_len:
        raise InvalidMessage(f"bad length for {key}: {len(v)} (1..{max_len})")
    return v


def _opt_str(obj: dict[str, Any], key: str, max_len: int = MAX_ID_LEN) -> str | None:
    v = obj.get(key)
    return None if v is None else _str(v, key, max_len)


def _number(v: Any, key: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise InvalidMessage(f"wrong type for {key}: {type(v).__name__}, expected number")
    f = float(v)
    if not math.isfinite(f):
        raise InvalidMessage(f"{key} is not finite")
    return f


def parse_amount(v: Any) -> Decimal:
    """A finite, non-negative amount as a Decimal (from a JSON number or numeric string)."""
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise InvalidMessage(f"wrong type for amount: {type(v).__name__}, expected number")
    if isinstance(v, str) and len(v) > 32:
        raise InvalidMessage("amount string too long")
    try:
        d = Decimal(str(v))
    except InvalidOperation as e:
        raise InvalidMessage(f"amount is not a number: {str(v)[:32]!r}") from e
    if not d.is_finite():
        raise InvalidMessage("amount is not finite")
    if d < 0:
        raise InvalidMessage("amount is negative")
    if d > Decimal("1e12"):
        raise InvalidMessage("amount out of range")
    return d


def parse_timestamp(v: Any, key: str = "timestamp") -> tuple[datetime, int | None]:
    """An aware UTC datetime and the UTC offset in minutes the text carried (None for epochs)."""
    if isinstance(v, str):
        if len(v) > 40:
            raise InvalidMessage(f"{key} string too long")
        try:
            dt = datetime.fromisoformat(v)
        except ValueError as e:
            raise InvalidMessage(f"{key} is not ISO-8601: {v[:40]!r}") from e
        off = dt.utcoffset()
        if off is None:
            raise InvalidMessage(f"{key} has no UTC offset: {v[:40]!r}")
        return dt.astimezone(UTC), int(off.total_seconds() // 60)
    f = _number(v, key)
    try:
        return datetime.fromtimestamp(f, tz=UTC), None
    except (OverflowError, OSError, ValueError) as e:
        raise InvalidMessage(f"{key} out of range") from e


class TxnParser:
    """Validates transactions against the input contract with the bounds of ``settings``."""

    def __init__(self, settings: Settings, clock: Any = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.rates = {k.upper(): Decimal(v) for k, v in settings.currency_rates.items()}

    def parse(self, raw: bytes, received_at: float = 0.0, kafka_ts: float | None = None) -> Txn:
        return self.from_object(self.load(raw), received_at, kafka_ts)

    def load(self, raw: bytes) -> dict[str, Any]:
        """The message as a JSON object (:meth:`parse` is ``from_object(load(raw))``: a
        caller that also reads other fields of the message decodes it once)."""
        return _loads(raw, self.settings.max_message_bytes)

    def from_object(self, obj: dict[str, Any], received_at: float = 0.0,
                    kafka_ts: float | None = None) -> Txn:
        """The transaction of a decoded message (see :meth:`load`)."""
        s = self.settings
        tx_id = _req_str(obj, "transaction_id")
        user_id = _req_str(obj, "user_id")
        if "amount" not in obj or obj["amount"] is None:
            raise InvalidMessage("missing field: amount")
        amount = parse_amount(obj["amount"])
        if "timestamp" not in obj or obj["timestamp"] is None:
            raise InvalidMessage("missing field: timestamp")
        ts, offset = parse_timestamp(obj["timestamp"])
        if not s.replay:
            if ts < s.min_timestamp:
                raise InvalidMessage(f"timestamp before {s.min_timestamp.isoformat()}")
            latest = datetime.fromtimestamp(self.clock(), tz=UTC) + timedelta(
                seconds=s.max_future_seconds
            )
            if ts > latest:
                raise InvalidMessage("timestamp too far in the future")
        currency = _opt_str(obj, "currency", 3) or s.default_currency
        currency = currency.upper()
        rate = self.rates.get(currency)
        if rate is None:
            raise InvalidMessage(f"unknown currency: {currency!r}")
        country = _opt_str(obj, "country", 2)
        if country is not None and not (len(country) == 2 and country.isalpha()):
            raise InvalidMessage(f"country is not ISO 3166 alpha-2: {country!r}")
        lat = obj.get("lat")
        lon = obj.get("lon")
        if lat is not None:
            lat = _number(lat, "lat")
            if not -90.0 <= lat <= 90.0:
                raise InvalidMessage("lat out of range")
        if lon is not None:
            lon = _number(lon, "lon")
            if not -180.0 <= lon <= 180.0:
                raise InvalidMessage("lon out of range")
        if (lat is None) != (lon is None):
            raise InvalidMessage("lat and lon must come together")
        return Txn(
            transaction_id=tx_id,
            user_id=user_id,
            amount=amount,
            timestamp=ts,
            currency=currency,
            amount_base=(amount * rate).quantize(Decimal("0.0001")).normalize()
            if rate != 1
            else amount,
            merchant_id=_opt_str(obj, "merchant_id"),
            terminal_id=_opt_str(obj, "terminal_id"),
            merchant_category=_opt_str(obj, "merchant_category", 8),
            country=country.upper() if country else None,
            lat=lat,
            lon=lon,
            channel=_opt_str(obj, "channel", 16),
            utc_offset_minutes=offset,
            received_at=received_at,
            kafka_ts=kafka_ts,
        )


def parse_label(raw: bytes, max_bytes: int = 16_384) -> Label:
    """Parse a label message (the producer's and the review page's format).

    >>> parse_label(b'{"transaction_id": "t1", "user_id": "u1", "terminal_id": "T9",'
    ...   b' "label": "fraud", "transaction_time": "2018-04-01T10:00:00Z",'
    ...   b' "label_time": "2018-04-08T10:00:00Z"}').is_fraud
    True
    """
    obj = _loads(raw, max_bytes)
    label = _req_str(obj, "label", 8)
    if label not in ("fraud", "legit"):
        raise InvalidMessage(f"label must be 'fraud' or 'legit': {label!r}")
    for key in ("transaction_time", "label_time"):
        if obj.get(key) is None:
            raise InvalidMessage(f"missing field: {key}")
    return Label(
        transaction_id=_req_str(obj, "transaction_id"),
        user_id=_req_str(obj, "user_id"),
        terminal_id=_opt_str(obj, "terminal_id"),
        label=label,  # type: ignore[arg-type]
        transaction_time=parse_timestamp(obj["transaction_time"], "transaction_time")[0],
        label_time=parse_timestamp(obj["label_time"], "label_time")[0],
    )


def label_to_json(lb: Label) -> bytes:
    """Serialise a label in the wire format (inverse of :func:`parse_label`)."""
    return json.dumps(
        {
            "transaction_id": lb.transaction_id,
            "user_id": lb.user_id,
            "terminal_id": lb.terminal_id,
            "label": lb.label,
            "transaction_time": lb.transaction_time.isoformat().replace("+00:00", "Z"),
            "label_time": lb.label_time.isoformat().replace("+00:00", "Z"),
        }
    ).encode()


def parse_control(raw: bytes) -> Control:
    """Parse a control message: ``{"kind": "snooze", "scope": "user"|"terminal", "target",
    "until", "issued_at"}``."""
    obj = _loads(raw, 4096)
    kind = _req_str(obj, "kind", 16)
    if kind != "snooze":
        raise InvalidMessage(f"unknown control kind: {kind!r}")
    scope = _req_str(obj, "scope", 16)
    if scope not in ("user", "terminal"):
        raise InvalidMessage(f"unknown snooze scope: {scope!r}")
    for key in ("until", "issued_at"):
        if obj.get(key) is None:
            raise InvalidMessage(f"missing field: {key}")
    return Control(
        kind="snooze",
        scope=scope,  # type: ignore[arg-type]
        target=_req_str(obj, "target"),
        until=parse_timestamp(obj["until"], "until")[0],
        issued_at=parse_timestamp(obj["issued_at"], "issued_at")[0],
    )
