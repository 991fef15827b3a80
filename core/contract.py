"""The message contract as one vectorized parse: raw Kafka values in, typed events with a reason.

Landing parses each record once, as it lands, and bronze keeps the typed event beside the value as
received: the event hour (after the device-clock rule) places it, and cleaning only deduplicates.
DuckDB's JSON reader does the work, column at a time.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

EVENT_TYPES = ("page_view", "click", "play", "pause", "seek", "ad_impression", "heartbeat")
PLATFORMS = ("web", "ios", "android", "tv", "stb")
TITLE_EVENTS = ("play", "pause", "seek")
FUTURE_CLOCK_TOLERANCE = "5 minutes"
SENT_AT_DEADBAND_US = 60_000_000
"""A device offset (receive time minus `sent_at`) up to this is transit delay, never corrected."""
DEDUP_BUCKETS = 256

LANDING_REASONS = (
    "null_value",
    "not_json",
    "not_object",
    "missing_field:event_time",
    "wrong_type:event_time",
    "unparseable_event_time",
    "before_start_date",
)
"""Reasons that leave an event without an event hour among the partitions (none at all, or one
before the first): landing quarantines these, by ingest hour."""

STRING_FIELDS = (
    "event_id",
    "event_type",
    "event_time",
    "device_id",
    "user_id",
    "session_id",
    "platform",
    "title_id",
    "campaign_id",
    "ad_id",
    "page",
    "app_version",
)
_OPTIONAL_STRINGS = ("user_id", "session_id", "title_id", "campaign_id", "ad_id", "page")
_OPTIONAL_STRINGS += ("app_version",)
_OPTIONAL_INTEGERS = ("position_ms", "schema_version")
_FIELDS = (*STRING_FIELDS, *_OPTIONAL_INTEGERS, "properties", "sent_at")
# RFC 3339: hours 00-23, minutes and seconds 00-59, offsets within +-23:59. A leap second is
# written 23:59:60 in UTC but HH:59:60 in other offsets, so second 60 is accepted after minute
# 59; it counts as the last microsecond of that minute, which keeps it in its hour and day.
_RFC3339 = (
    r"^\d{4}-\d{2}-\d{2}[Tt ](?:[01]\d|2[0-3]):(?:[0-5]\d:[0-5]\d|59:60)(?:\.\d{1,9})?"
    r"(?:[Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)$"
)
_LEAP_SECOND = r"^(.{17})60(?:\.\d{1,9})?"


def _sql_list(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def _type(name: str) -> str:
    """The JSON type of top-level field `name` (null when absent)."""
    return f"t[{_FIELDS.index(name) + 2}]"


def _text(name: str) -> str:
    """Top-level field `name` as text: a string's value, other values' JSON text, null when
    absent or null."""
    return f"s[{_FIELDS.index(name) + 1}]"


def _required_string(name: str) -> str:
    """A reason when `name` is absent, null, not a string or empty."""
    return (
        f"when {_type(name)} is null or {_type(name)} = 'NULL' then 'missing_field:{name}' "
        f"when {_type(name)} <> 'VARCHAR' then 'wrong_type:{name}' "
        f"when {_text(name)} = '' then 'missing_field:{name}' "
    )


def _optional_string(name: str) -> str:
    return f"nullif({_text(name)}, '') as {name}"


def _wrong_type(name: str, json_types: tuple[str, ...]) -> str:
    """A reason when optional `name` is present, not null, and of none of `json_types`:
    `user_id: false` is not a user."""
    return f"when {_type(name)} not in ('NULL', {_sql_list(json_types)}) then 'wrong_type:{name}' "


UTC_US = pa.timestamp("us", tz="UTC")
EVENT_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("event_type", pa.string()),
        ("event_time", UTC_US),
        ("event_hour", UTC_US),
        ("device_id", pa.string()),
        ("user_id", pa.string()),
        ("session_id", pa.string()),
        ("platform", pa.string()),
        ("title_id", pa.string()),
        ("campaign_id", pa.string()),
        ("ad_id", pa.string()),
        ("page", pa.string()),
        ("app_version", pa.string()),
        ("position_ms", pa.int64()),
        ("schema_version", pa.int64()),
        ("properties", pa.string()),
        ("clock_corrected", pa.bool_()),
    ]
)
"""A typed event, as silver holds it."""
PARSE_SCHEMA = pa.schema(
    [
        ("reason", pa.string()),
        *EVENT_SCHEMA,
        ("device_hour", UTC_US),
        ("dedup_bucket", pa.uint8()),
    ]
)
"""What `parse_events` adds to the records: the reason (null when valid), the typed event, the
hour a corrected event's device claimed, and the event_id's dedup bucket."""

_PATHS = ", ".join(f"'$.\"{name}\"'" for name in _FIELDS)


def _timestamp(name: str) -> str:
    """`name` as a naive UTC timestamp when it is an RFC 3339 string, else null."""
    return (
        f"case when {_type(name)} = 'VARCHAR' and regexp_matches({_text(name)}, '{_RFC3339}') "
        f"then try_cast(upper(case when {_text(name)}[18:19] = '60' then regexp_replace("
        f"{_text(name)}, '{_LEAP_SECOND}', '\\159.999999') else {_text(name)} end) "
        f"as timestamptz)::timestamp end"
    )


_start_filter = "case when clock_corrected then corrected_time else device_time end < $1"

PARSE_SQL = f"""
with decoded as (
    select *, try(decode(value)) as text from records
),
typed as (
    -- Each value is parsed three times, whole: validity, the type of the root and of every
    -- field (one list), and every field's text (one list); the rules below read the lists.
    select *,
        case when text is not null and json_valid(text) then json_type(text, ['$', {_PATHS}])
        end as t
    from decoded
),
fields as (
    select *,
        t[1] as json_kind,
        case when t[1] = 'OBJECT' then json_extract_string(text, [{_PATHS}]) end as s
    from typed
),
timed as (
    select *,
        {_timestamp("event_time")} as device_time,
        kafka_timestamp::timestamp as received_at,
        {_timestamp("sent_at")} as device_sent_at,
        coalesce({_type("sent_at")}, 'NULL') <> 'NULL' as has_sent_at,
        lower({_text("platform")}) as platform_text
    from fields
),
corrected as (
    -- The device clock rule: with sent_at, the device's offset measured when it sent is removed
    -- once it exceeds the deadband (below it, it is transit delay); without, only a clock in
    -- the future is caught, and the receive time is the best estimate left.
    select *,
        case
            when device_sent_at is not null then abs(
                epoch_us(received_at) - epoch_us(device_sent_at)
            ) > {SENT_AT_DEADBAND_US}
            else coalesce(device_time > received_at + interval {FUTURE_CLOCK_TOLERANCE}, false)
        end as clock_corrected,
        case
            when device_sent_at is not null then device_time + (received_at - device_sent_at)
            else received_at
        end as corrected_time
    from timed
),
classified as (
    select *,
        case
            when value is null then 'null_value'
            when json_kind is null then 'not_json'
            when json_kind <> 'OBJECT' then 'not_object'
            {_required_string("event_time")}
            when device_time is null then 'unparseable_event_time'
            when {_start_filter} then 'before_start_date'
            {_required_string("event_id")}
            {_required_string("event_type")}
            when {_text("event_type")} not in ({_sql_list(EVENT_TYPES)})
                then 'unknown_event_type'
            {_required_string("device_id")}
            when {_text("event_type")} in ({_sql_list(TITLE_EVENTS)})
                and ({_type("title_id")} is distinct from 'VARCHAR' or {_text("title_id")} = '')
                then 'missing_title_id'
            when {_text("event_type")} = 'ad_impression'
                and ({_type("campaign_id")} is distinct from 'VARCHAR'
                     or {_text("campaign_id")} = '')
                then 'missing_campaign_id'
            {"".join(_wrong_type(name, ("VARCHAR",)) for name in _OPTIONAL_STRINGS)}
            {"".join(_wrong_type(name, ("BIGINT", "UBIGINT")) for name in _OPTIONAL_INTEGERS)}
            {_wrong_type("properties", ("OBJECT",))}
            when has_sent_at and device_sent_at is null then 'wrong_type:sent_at'
        end as reason,
        case when clock_corrected then corrected_time else device_time end
            as event_time
    from corrected
)
select
    row,
    reason,
    {_text("event_id")} as event_id,
    -- A stable hash (md5, not DuckDB's version-dependent hash): copies of an event always share
    -- a bucket, so cleaning can deduplicate a huge hour one bucket at a time. The digest's ninth
    -- byte is md5_number_lower(event_id) % 256 (its lower half, little-endian), read from the
    -- hex digest because DuckDB's md5_number_lower costs three times as much.
    (('0x' || md5({_text("event_id")})[17:18])::utinyint % {DEDUP_BUCKETS})::utinyint
        as dedup_bucket,
    {_text("event_type")} as event_type,
    event_time,
    date_trunc('hour', event_time) as event_hour,
    {_text("device_id")} as device_id,
    {_optional_string("user_id")},
    {_optional_string("session_id")},
    -- list_contains, not `in`: DuckDB would plan a five-value `in` as a join.
    case when list_contains([{_sql_list(PLATFORMS)}], platform_text) then platform_text
        else 'other' end as platform,
    {_optional_string("title_id")},
    {_optional_string("campaign_id")},
    {_optional_string("ad_id")},
    {_optional_string("page")},
    {_optional_string("app_version")},
    try_cast({_text("position_ms")} as bigint) as position_ms,
    coalesce(try_cast({_text("schema_version")} as bigint), 1) as schema_version,
    case when {_type("properties")} = 'OBJECT' then {_text("properties")} end as properties,
    clock_corrected and reason is null as clock_corrected,
    -- Where an uncorrected retry of a corrected event would fall: that hour must be rebuilt too.
    case when clock_corrected and reason is null then date_trunc('hour', device_time) end
        as device_hour
from classified
"""


_local = threading.local()


def _connection() -> duckdb.DuckDBPyConnection:
    """This thread's DuckDB connection, with PARSE_SQL prepared once: opening a connection per
    call cost more than parsing a small row group, and parsing and binding the query text per
    call (twice, through a relation) cost 40% more than rebinding the prepared statement."""
    if getattr(_local, "con", None) is None:
        con = duckdb.connect()
        con.execute("set TimeZone = 'UTC'")  # casts of offsets must not follow the host
        con.register("records", _INPUT_SCHEMA.empty_table())
        con.execute(f"prepare parse_records as {PARSE_SQL}")
        _local.con = con
    return _local.con


_INPUT_SCHEMA = pa.schema(
    [("kafka_timestamp", pa.timestamp("ms", tz="UTC")), ("value", pa.binary()), ("row", pa.int64())]
)


def parse_events(records: pa.Table | pa.RecordBatch, *, start: datetime) -> pa.Table:
    """Parse and classify Kafka records per the contract; `start` is CLICKSTREAM_START_DATE's
    first instant (events dated before it are `before_start_date`).

    Input columns: at least `kafka_timestamp` and `value` (binary); all input columns are kept,
    followed by PARSE_SCHEMA's (`event_time` is UTC, after the device-clock rule).
    """
    if isinstance(records, pa.RecordBatch):
        records = pa.Table.from_batches([records])
    con = _connection()
    naive_start = start.astimezone(UTC).replace(tzinfo=None).isoformat()
    # DuckDB reads only what it parses and hands back the parsed columns with their row
    # numbers; the records' own columns are attached here, without a copy.
    rows = pa.array(np.arange(records.num_rows))
    received = records["kafka_timestamp"].cast(_INPUT_SCHEMA.field("kafka_timestamp").type)
    con.register("records", pa.table([received, records["value"], rows], schema=_INPUT_SCHEMA))
    try:
        parsed = con.sql(f"execute parse_records(timestamp '{naive_start}')").to_arrow_table()
    finally:
        # The prepared statement needs a `records`; an empty one holds no memory between calls.
        con.register("records", _INPUT_SCHEMA.empty_table())
    if not pc.all(pc.equal(parsed["row"], rows)).as_py():  # DuckDB may reorder big inputs
        parsed = parsed.take(pc.sort_indices(parsed["row"]))
    # DuckDB computes in naive UTC; the lake stores explicit UTC.
    typed = parsed.select(PARSE_SCHEMA.names).cast(PARSE_SCHEMA)
    return pa.table(
        [*records.columns, *typed.columns], names=[*records.column_names, *typed.column_names]
    )
