"""The message contract (DESIGN.md, part 2) checked one rule at a time against `parse_events`.

Every expectation is written out by hand from the contract text: reasons, UTC instants, the
five-minute future-clock tolerance and the platform list.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from core.contract import parse_events
from tests.helpers import to_ms

# The first partition (CLICKSTREAM_START_DATE's first instant): before every event time below,
# so that no test trips the start-date rule by accident.
START = datetime(2024, 1, 1, tzinfo=UTC)

# The collector's receive time used unless a test needs another one: later than every device
# time below, so that no test trips the future-clock rule by accident.
RECEIVED = datetime(2026, 11, 29, 0, 0, tzinfo=UTC)

VALID = {
    "event_id": "evt-1",
    "event_type": "click",
    "event_time": "2026-11-27T10:15:30Z",
    "device_id": "dev-1",
    "platform": "web",
}


def records(values: list[bytes | None], received: datetime | list[datetime] = RECEIVED):
    stamps = received if isinstance(received, list) else [received] * len(values)
    return pa.table(
        {
            "kafka_timestamp": pa.array([to_ms(s) for s in stamps], pa.int64()).cast(
                pa.timestamp("ms", tz="UTC")
            ),
            "value": pa.array(values, pa.binary()),
        }
    )


def encode(event: dict) -> bytes:
    return json.dumps(event).encode()


def parse_one(value: bytes | None, received: datetime = RECEIVED) -> dict:
    rows = parse_events(records([value], received), start=START).to_pylist()
    assert len(rows) == 1
    return rows[0]


def event(**changes) -> dict:
    """VALID with `changes` applied; a value of `...` removes the field."""
    result = dict(VALID)
    for name, value in changes.items():
        if value is ...:
            result.pop(name, None)
        else:
            result[name] = value
    return result


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


# --- validity rules -------------------------------------------------------------------------


def test_a_valid_event_has_no_reason_and_typed_fields():
    value = encode(
        event(
            user_id="u-1",
            session_id="s-1",
            page="/home",
            app_version="3.2.1",
            ad_id="ad-9",
            position_ms=1234,
            schema_version=2,
            properties={"a": 1},
        )
    )
    row = parse_one(value)
    assert row["reason"] is None
    assert row["event_id"] == "evt-1"
    assert row["event_type"] == "click"
    assert row["device_id"] == "dev-1"
    assert row["user_id"] == "u-1"
    assert row["session_id"] == "s-1"
    assert row["page"] == "/home"
    assert row["app_version"] == "3.2.1"
    assert row["ad_id"] == "ad-9"
    assert row["position_ms"] == 1234
    assert row["schema_version"] == 2
    assert json.loads(row["properties"]) == {"a": 1}
    assert row["event_time"] == utc(2026, 11, 27, 10, 15, 30)
    assert row["event_hour"] == utc(2026, 11, 27, 10)
    assert row["clock_corrected"] is False
    # The input columns are kept as they were.
    assert row["value"] == value
    assert row["kafka_timestamp"] == RECEIVED


def test_schema_version_defaults_to_one():
    assert parse_one(encode(VALID))["schema_version"] == 1


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param(None, "null_value", id="null-value"),
        pytest.param(b"", "not_json", id="empty-bytes"),
        pytest.param(b"hello", "not_json", id="not-json"),
        pytest.param(b'{"event_id": "x",', "not_json", id="truncated-json"),
        pytest.param(b"\xff\xfe\xfa", "not_json", id="invalid-utf8"),
        pytest.param(b'{"event_id": "\xff"}', "not_json", id="invalid-utf8-inside-json"),
        pytest.param(b"[1, 2]", "not_object", id="array"),
        pytest.param(b'"text"', "not_object", id="string"),
        pytest.param(b"42", "not_object", id="number"),
        pytest.param(b"null", "not_object", id="json-null"),
        pytest.param(b"true", "not_object", id="json-bool"),
    ],
)
def test_unreadable_values(value, reason):
    assert parse_one(value)["reason"] == reason


@pytest.mark.parametrize("name", ["event_id", "event_type", "event_time", "device_id"])
@pytest.mark.parametrize("absent", [..., None, ""], ids=["missing", "json-null", "empty-string"])
def test_missing_required_field(name, absent):
    assert parse_one(encode(event(**{name: absent})))["reason"] == f"missing_field:{name}"


@pytest.mark.parametrize("name", ["event_id", "event_type", "event_time", "device_id"])
@pytest.mark.parametrize(
    "wrong", [17, 1.5, True, ["x"], {"x": 1}], ids=["int", "float", "bool", "array", "object"]
)
def test_wrong_typed_required_field(name, wrong):
    assert parse_one(encode(event(**{name: wrong})))["reason"] == f"wrong_type:{name}"


@pytest.mark.parametrize("event_type", ["purchase", "PLAY", "Click", "page-view", " click"])
def test_unknown_event_type(event_type):
    assert parse_one(encode(event(event_type=event_type)))["reason"] == "unknown_event_type"


@pytest.mark.parametrize(
    "event_type", ["page_view", "click", "play", "pause", "seek", "ad_impression", "heartbeat"]
)
def test_every_known_event_type_is_valid(event_type):
    row = parse_one(encode(event(event_type=event_type, title_id="t-1", campaign_id="c-1")))
    assert row["reason"] is None
    assert row["event_type"] == event_type


@pytest.mark.parametrize("event_type", ["play", "pause", "seek"])
@pytest.mark.parametrize("title_id", [..., None, ""], ids=["missing", "json-null", "empty"])
def test_title_events_need_a_title_id(event_type, title_id):
    row = parse_one(encode(event(event_type=event_type, title_id=title_id)))
    assert row["reason"] == "missing_title_id"


@pytest.mark.parametrize("event_type", ["play", "pause", "seek"])
def test_title_events_with_a_title_id_are_valid(event_type):
    row = parse_one(encode(event(event_type=event_type, title_id="t-42")))
    assert row["reason"] is None
    assert row["title_id"] == "t-42"


@pytest.mark.parametrize("campaign_id", [..., None, ""], ids=["missing", "json-null", "empty"])
def test_ad_impression_needs_a_campaign_id(campaign_id):
    row = parse_one(encode(event(event_type="ad_impression", campaign_id=campaign_id)))
    assert row["reason"] == "missing_campaign_id"


def test_ad_impression_with_a_campaign_id_is_valid():
    row = parse_one(encode(event(event_type="ad_impression", campaign_id="c-7")))
    assert row["reason"] is None
    assert row["campaign_id"] == "c-7"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("user_id", 5),
        ("user_id", {"id": 5}),
        ("user_id", False),
        ("session_id", ["s"]),
        ("ad_id", True),
        ("page", 3.5),
        ("app_version", 12),
        ("position_ms", "abc"),
        ("position_ms", 1.5),
        ("position_ms", {"ms": 1}),
        ("schema_version", "two"),
        ("properties", "not an object"),
        ("properties", [1, 2]),
        ("title_id", 9),  # optional for a click
        ("campaign_id", False),  # optional for a click
    ],
)
def test_optional_fields_with_wrong_types_are_invalid(name, value):
    # `user_id: false` is not a user. (A wrong-typed platform is `other`, still valid: see
    # test_platform_normalisation.)
    assert parse_one(encode(event(**{name: value})))["reason"] == f"wrong_type:{name}"


@pytest.mark.parametrize("name", ["user_id", "session_id", "position_ms", "properties"])
def test_optional_fields_may_be_null(name):
    assert parse_one(encode(event(**{name: None})))["reason"] is None


def test_optional_wrong_types_are_not_taken_as_values():
    row = parse_one(encode(event(position_ms="abc", schema_version="two", properties=[1])))
    assert row["reason"] == "wrong_type:position_ms"
    assert row["position_ms"] is None
    assert row["schema_version"] == 1
    assert row["properties"] is None


@pytest.mark.parametrize(
    "extra",
    [
        {"colour": "blue"},
        {"nested": {"a": [1, 2, {"b": None}]}},
        {"event_id_2": 1, "EVENT_TYPE": "nope"},
        {"": "empty key"},
    ],
)
def test_unknown_top_level_fields_do_not_invalidate(extra):
    row = parse_one(encode({**VALID, **extra}))
    assert row["reason"] is None
    assert row["event_id"] == "evt-1"


def test_each_row_keeps_its_own_reason_and_order():
    values = [
        encode(VALID),
        None,
        b"{",
        encode(event(event_type="play")),
        encode(event(event_id="evt-2")),
    ]
    reasons = parse_events(records(values), start=START).column("reason").to_pylist()
    assert reasons == [None, "null_value", "not_json", "missing_title_id", None]


# --- event_time: RFC 3339 -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-27T10:15:30Z", utc(2026, 11, 27, 10, 15, 30)),
        ("2026-11-27T10:15:30z", utc(2026, 11, 27, 10, 15, 30)),
        ("2026-11-27t10:15:30Z", utc(2026, 11, 27, 10, 15, 30)),
        ("2026-11-27T10:15:30+00:00", utc(2026, 11, 27, 10, 15, 30)),
        ("2026-11-27T10:15:30-00:00", utc(2026, 11, 27, 10, 15, 30)),
        ("2026-11-27T10:15:30+05:30", utc(2026, 11, 27, 4, 45, 30)),
        ("2026-11-27T10:15:30-08:00", utc(2026, 11, 27, 18, 15, 30)),
        ("2026-11-27T23:30:00.125-08:00", utc(2026, 11, 28, 7, 30, 0, 125000)),
        ("2026-11-28T01:00:00+02:00", utc(2026, 11, 27, 23, 0, 0)),
        ("2026-11-27T10:15:30.1Z", utc(2026, 11, 27, 10, 15, 30, 100000)),
        ("2026-11-27T10:15:30.123Z", utc(2026, 11, 27, 10, 15, 30, 123000)),
        ("2026-11-27T10:15:30.123456Z", utc(2026, 11, 27, 10, 15, 30, 123456)),
        ("2026-11-27T10:15:30.123456+05:30", utc(2026, 11, 27, 4, 45, 30, 123456)),
        # Nanoseconds go beyond the microsecond storage: truncated, never rounded into the
        # next second (or the next hour).
        ("2026-11-27T10:15:30.123456789Z", utc(2026, 11, 27, 10, 15, 30, 123456)),
        ("2026-11-27T10:59:59.999999999Z", utc(2026, 11, 27, 10, 59, 59, 999999)),
        ("2026-11-27T10:15:30.123456789-08:00", utc(2026, 11, 27, 18, 15, 30, 123456)),
        ("2024-02-29T12:00:00Z", utc(2024, 2, 29, 12)),
    ],
)
def test_rfc3339_event_time_in_utc(text, expected):
    row = parse_one(encode(event(event_time=text)))
    assert row["reason"] is None
    assert row["event_time"] == expected
    assert row["event_time"].utcoffset() == timedelta(0)
    assert row["event_hour"] == expected.replace(minute=0, second=0, microsecond=0)
    assert row["clock_corrected"] is False


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-27",  # date only
        "2026-11-27T10:15:30",  # no offset
        "2026-11-27T10:15:30.123",  # no offset, with a fraction
        "2026-11-27T10:15",  # no seconds
        "10:15:30Z",  # time only
        "2026-11-27T10:15:30+0530",  # offset without a colon
        "2026-11-27T10:15:30 UTC",
        "2026-11-27T10:15:30Z trailing",
        "2026-02-30T10:15:30Z",  # no such day
        "2026-11-27T25:15:30Z",  # no such hour
        "27/11/2026 10:15:30Z",
        "1795773600",
        "yesterday",
    ],
)
def test_unparseable_event_time(text):
    assert parse_one(encode(event(event_time=text)))["reason"] == "unparseable_event_time"


def test_event_time_is_utc_whatever_the_process_time_zone():
    """The lake is UTC: the machine's local zone must not leak into event times."""
    previous = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        row = parse_one(encode(event(event_time="2026-11-27T10:15:30Z")))
        corrected = parse_one(
            encode(event(event_time="2026-11-27T12:00:00Z")), received=utc(2026, 11, 27, 10)
        )
    finally:
        if previous is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = previous
        time.tzset()
    assert row["event_time"] == utc(2026, 11, 27, 10, 15, 30)
    assert row["event_hour"] == utc(2026, 11, 27, 10)
    assert corrected["clock_corrected"] is True
    assert corrected["event_time"] == utc(2026, 11, 27, 10)


# --- future clock ---------------------------------------------------------------------------

K = utc(2026, 11, 27, 11, 58)  # the receive time; K + 5 min = 12:03:00


@pytest.mark.parametrize(
    ("text", "corrected", "event_time"),
    [
        # Exactly 5 minutes ahead: within tolerance, kept as sent (hour 12).
        ("2026-11-27T12:03:00Z", False, utc(2026, 11, 27, 12, 3)),
        ("2026-11-27T12:03:00.000Z", False, utc(2026, 11, 27, 12, 3)),
        # One millisecond more: corrected to the receive time (hour 11).
        ("2026-11-27T12:03:00.001Z", True, K),
        # The same instants written with offsets.
        ("2026-11-27T13:03:00+01:00", False, utc(2026, 11, 27, 12, 3)),
        ("2026-11-27T04:03:00.001-08:00", True, K),
        # Far in the future.
        ("2027-01-01T00:00:00Z", True, K),
        # In the past, or exactly the receive time: kept.
        ("2026-11-27T11:58:00Z", False, K),
        ("2026-11-20T08:00:00Z", False, utc(2026, 11, 20, 8)),
    ],
)
def test_future_clock_rule(text, corrected, event_time):
    row = parse_one(encode(event(event_time=text)), received=K)
    assert row["reason"] is None
    assert row["clock_corrected"] is corrected
    assert row["event_time"] == event_time
    assert row["event_hour"] == event_time.replace(minute=0, second=0, microsecond=0)


@pytest.mark.parametrize(
    ("event_time", "received", "reason"),
    [
        ("2023-12-31T23:59:59.999999Z", RECEIVED, "before_start_date"),
        ("2024-01-01T01:00:00+01:00", RECEIVED, None),  # exactly the start
        # A device clock in the future takes the receive time, and that decides.
        ("2030-01-01T00:00:00Z", utc(2023, 12, 31, 23), "before_start_date"),
    ],
)
def test_events_before_the_start_date_are_invalid(event_time, received, reason):
    assert parse_one(encode(event(event_time=event_time)), received)["reason"] == reason


def test_future_clock_one_microsecond_over_is_corrected():
    row = parse_one(encode(event(event_time="2026-11-27T12:03:00.000001Z")), received=K)
    assert row["clock_corrected"] is True
    assert row["event_time"] == K


def test_future_clock_uses_each_rows_own_receive_time():
    values = [encode(event(event_time="2026-11-27T12:10:00Z"))] * 2
    table = parse_events(records(values, [K, utc(2026, 11, 27, 12, 6)]), start=START)
    assert table.column("clock_corrected").to_pylist() == [True, False]
    assert table.column("event_time").to_pylist() == [K, utc(2026, 11, 27, 12, 10)]
    assert table.column("event_hour").to_pylist() == [utc(2026, 11, 27, 11), utc(2026, 11, 27, 12)]


def test_an_invalid_event_is_not_marked_corrected():
    row = parse_one(encode(event(event_type="nope", event_time="2027-01-01T00:00:00Z")), K)
    assert row["reason"] == "unknown_event_type"
    assert row["clock_corrected"] is False


# --- platform -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("platform", "expected"),
    [
        ("web", "web"),
        ("ios", "ios"),
        ("android", "android"),
        ("tv", "tv"),
        ("stb", "stb"),
        ("WEB", "web"),
        ("iOS", "ios"),
        ("Android", "android"),
        ("TV", "tv"),
        ("Stb", "stb"),
        ("smart-tv", "other"),
        ("windows", "other"),
        ("other", "other"),
        ("", "other"),
        (None, "other"),
        (..., "other"),
        (7, "other"),
    ],
)
def test_platform_normalisation(platform, expected):
    row = parse_one(encode(event(platform=platform)))
    assert row["reason"] is None
    assert row["platform"] == expected


# --- device clocks with sent_at -------------------------------------------------------------
# K is the receive time (11:58:00). With sent_at, the device's offset K - sent_at is removed once
# it exceeds 60 s: event_time + (K - sent_at). Each expectation below is that sum done by hand.


@pytest.mark.parametrize(
    ("event_time", "sent_at", "corrected", "expected"),
    [
        # A clock 1 h ahead: offset -59:58, so 12:50:00 - 59:58 = 11:50:02.
        ("2026-11-27T12:50:00Z", "2026-11-27T12:57:58Z", True, utc(2026, 11, 27, 11, 50, 2)),
        # The same instants with an offset: 13:57:58+01:00 is 12:57:58Z.
        (
            "2026-11-27T13:50:00+01:00",
            "2026-11-27T13:57:58+01:00",
            True,
            utc(2026, 11, 27, 11, 50, 2),
        ),
        # A clock 1 h behind: offset +1:00:00.5, so 10:55:00 + 1:00:00.5 = 11:55:00.5.
        (
            "2026-11-27T10:55:00Z",
            "2026-11-27T10:57:59.500Z",
            True,
            utc(2026, 11, 27, 11, 55, 0, 500_000),
        ),
        # Exactly 60 s: the deadband, the event time is kept to the microsecond.
        (
            "2026-11-27T11:56:30.123456Z",
            "2026-11-27T11:57:00Z",
            False,
            utc(2026, 11, 27, 11, 56, 30, 123_456),
        ),
        ("2026-11-27T11:59:10Z", "2026-11-27T11:59:00Z", False, utc(2026, 11, 27, 11, 59, 10)),
        # 60.001 s: corrected, 11:56:00 + 60.001 s = 11:57:00.001.
        (
            "2026-11-27T11:56:00Z",
            "2026-11-27T11:56:59.999Z",
            True,
            utc(2026, 11, 27, 11, 57, 0, 1_000),
        ),
        # sent_at within the deadband overrides the future-clock rule: 32 min ahead is kept.
        ("2026-11-27T12:30:00Z", "2026-11-27T11:58:10Z", False, utc(2026, 11, 27, 12, 30)),
        # An old event sent now by a correct clock (an offline queue): kept.
        ("2026-11-20T08:00:00Z", "2026-11-27T11:57:59Z", False, utc(2026, 11, 20, 8)),
    ],
)
def test_sent_at_removes_the_device_offset(event_time, sent_at, corrected, expected):
    row = parse_one(encode(event(event_time=event_time, sent_at=sent_at)), received=K)
    assert row["reason"] is None
    assert row["clock_corrected"] is corrected
    assert row["event_time"] == expected
    assert row["event_hour"] == expected.replace(minute=0, second=0, microsecond=0)


def test_sent_at_correction_records_the_hour_the_device_claimed():
    row = parse_one(
        encode(event(event_time="2026-11-27T12:50:00Z", sent_at="2026-11-27T12:57:58Z")), K
    )
    assert row["event_hour"] == utc(2026, 11, 27, 11)
    assert row["device_hour"] == utc(2026, 11, 27, 12)


def test_sent_at_uses_each_rows_own_receive_time_and_sent_at():
    # Two tries of one event from a clock 1 h ahead, 10 min apart, each stamped when sent:
    # 12:50 - (12:57:58 - 11:58:00) = 11:50:02 and 12:50 - (13:08:01 - 12:08:00.25) = 11:49:59.25.
    values = [
        encode(event(event_time="2026-11-27T12:50:00Z", sent_at="2026-11-27T12:57:58Z")),
        encode(event(event_time="2026-11-27T12:50:00Z", sent_at="2026-11-27T13:08:01Z")),
    ]
    table = parse_events(records(values, [K, utc(2026, 11, 27, 12, 8, 0, 250_000)]), start=START)
    assert table.column("clock_corrected").to_pylist() == [True, True]
    assert table.column("event_time").to_pylist() == [
        utc(2026, 11, 27, 11, 50, 2),
        utc(2026, 11, 27, 11, 49, 59, 250_000),
    ]


def test_a_null_sent_at_is_absent_and_the_future_clock_rule_applies():
    row = parse_one(encode(event(event_time="2027-01-01T00:00:00Z", sent_at=None)), K)
    assert row["reason"] is None
    assert row["clock_corrected"] is True
    assert row["event_time"] == K


@pytest.mark.parametrize(
    "sent_at",
    [123, 1.5, True, {}, [], "yesterday", "2026-02-30T10:00:00Z", "2026-11-27T11:58:00", ""],
)
def test_a_wrong_typed_or_unparseable_sent_at_is_quarantined(sent_at):
    row = parse_one(encode(event(sent_at=sent_at)), K)
    assert row["reason"] == "wrong_type:sent_at"
    assert row["clock_corrected"] is False


def test_an_invalid_event_with_sent_at_is_not_marked_corrected():
    value = encode(
        event(event_type="nope", event_time="2026-11-27T12:50:00Z", sent_at="2026-11-27T12:57:58Z")
    )
    row = parse_one(value, K)
    assert row["reason"] == "unknown_event_type"
    assert row["clock_corrected"] is False
