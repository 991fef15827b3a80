"""Cleaning (silver): event hour E rebuilt whole from every bronze file that holds events of E.

Copies of an event share event_id and event_time, so the dedup state is one event hour. The one
exception, a future-clock event whose copies took their receive hours, is settled by the small
set of corrected copies that landing recorded in its manifests.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds

from clickstream_assets.landing import BRONZE_SCHEMA, QUARANTINE_SCHEMA
from core.contract import DEDUP_BUCKETS, parse_events
from core.ledger import (
    STAMP_KEY,
    CleanStamp,
    Ledger,
    Manifest,
    cleaning_quarantine_file,
    events_file,
)
from resources.kafka import RECORD_SCHEMA
from resources.lake import LakeResource

UTC_US = pa.timestamp("us", tz="UTC")
SILVER_SCHEMA = pa.schema(
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
        ("received_at", pa.timestamp("ms", tz="UTC")),
        ("kafka_partition", pa.int32()),
        ("kafka_offset", pa.int64()),
        ("ingest_hour", UTC_US),
    ]
)
ARRIVAL_ORDER = ["received_at", "kafka_partition", "kafka_offset"]
"""The contract's tie-break for the first received copy."""


def source_files(manifests: Iterable[Manifest], event_hour: datetime) -> list[str]:
    """The bronze files of every ingest hour whose histogram counts events of `event_hour`."""
    return [
        entry.file
        for manifest in sorted(manifests, key=lambda m: m.ingest_hour)
        if manifest.event_hours.get(event_hour)
        for _, entry in sorted(manifest.partitions.items())
        if entry.file
    ]


def bronze_rows(manifests: Iterable[Manifest], event_hour: datetime) -> int:
    return sum(m.event_hours.get(event_hour, 0) for m in manifests)


def corrected_winners(manifests: Iterable[Manifest]) -> pl.DataFrame:
    """For each future-clock event, the coordinates of its first received valid copy.

    If any valid copy of an event was corrected, the first received valid copy was too (it was
    received earliest, so its clock was even further ahead), so these sets decide the winner.
    """
    rows = [
        {
            "event_id": c.event_id,
            "kafka_partition": c.kafka_partition,
            "kafka_offset": c.kafka_offset,
            "kafka_timestamp_ms": c.kafka_timestamp_ms,
        }
        for m in manifests
        for c in m.corrected
    ]
    frame = pl.DataFrame(
        rows,
        schema={
            "event_id": pl.String,
            "kafka_partition": pl.Int32,
            "kafka_offset": pl.Int64,
            "kafka_timestamp_ms": pl.Int64,
        },
    )
    return (
        frame.sort(["kafka_timestamp_ms", "kafka_partition", "kafka_offset"])
        .unique("event_id", keep="first", maintain_order=True)
        .select("event_id", "kafka_partition", "kafka_offset")
    )


def winners_for(ledger: Ledger, manifests: dict[datetime, Manifest], recorded: set) -> pl.DataFrame:
    """The corrected winners that matter to an hour built from `manifests`: every corrected copy
    of the events they hold corrected copies of, found through the claims of the hours those
    events' devices claimed (copies of one event share its claimed hour), so the read stays
    in proportion to the hour's own corrections."""
    claimed = {hour for m in manifests.values() for hour in m.claimed_hours()}
    more = {h for hour in claimed for h in ledger.claims(hour, recorded)} - set(manifests)
    everything = list(manifests.values()) + list(ledger.manifests(more).values())
    return corrected_winners(everything)


def _earlier(a: str, b: str) -> pl.Expr:
    """Whether the copy of columns suffixed `a` arrived before the one suffixed `b`."""
    ts, p, o = (f"{name}{a}" for name in ARRIVAL_ORDER)
    ts_b, p_b, o_b = (f"{name}{b}" for name in ARRIVAL_ORDER)
    return (pl.col(ts) < pl.col(ts_b)) | (
        (pl.col(ts) == pl.col(ts_b))
        & ((pl.col(p) < pl.col(p_b)) | ((pl.col(p) == pl.col(p_b)) & (pl.col(o) < pl.col(o_b))))
    )


def deduplicate(
    valid: pl.DataFrame, winners: pl.DataFrame, elsewhere: pl.DataFrame | None = None
) -> pl.DataFrame:
    """One row per event_id: the first received copy (earliest Kafka timestamp, then lowest
    partition, then lowest offset). A corrected event keeps only its global first copy, and an
    event with a valid copy in another event hour (a client that re-stamps on retry) is kept
    only where its first received copy is (`elsewhere`: those copies' arrival columns)."""
    first = valid.sort(ARRIVAL_ORDER).unique("event_id", keep="first", maintain_order=True)
    joined = first.join(winners, on="event_id", how="left", suffix="_winner")
    keep = pl.col("kafka_partition_winner").is_null() | (
        (pl.col("kafka_partition") == pl.col("kafka_partition_winner"))
        & (pl.col("kafka_offset") == pl.col("kafka_offset_winner"))
    )
    kept = joined.filter(keep).drop("kafka_partition_winner", "kafka_offset_winner")
    if elsewhere is None or elsewhere.is_empty():
        return kept
    best = (
        elsewhere.select("event_id", *ARRIVAL_ORDER)
        .sort(ARRIVAL_ORDER)
        .unique("event_id", keep="first", maintain_order=True)
    )
    compared = kept.join(best, on="event_id", how="left", suffix="_elsewhere")
    lost = pl.col("received_at_elsewhere").is_not_null() & _earlier("_elsewhere", "")
    return compared.filter(~lost).drop(f"{name}_elsewhere" for name in ARRIVAL_ORDER)


CROSS_HOUR_WINDOW = timedelta(hours=1)
"""How far apart in ingest time copies of one event in different event hours are matched: a
client that re-stamps its events on retry resends within minutes (the SDK backs off for at most
a few), so one ingest hour each way bounds the read to three hours of event_id columns."""


BUCKET_ROWS = 4_000_000
"""Rows deduplicated at once: bounds cleaning's memory whatever an event hour's size."""


def bucket_count(rows: int, bucket_rows: int = BUCKET_ROWS) -> int:
    """Dedup buckets for an hour of `rows`: a power of two, so buckets nest in DEDUP_BUCKETS."""
    count = 1
    while count * bucket_rows < rows and count < DEDUP_BUCKETS:
        count *= 2
    return count


def _bucket_filter(event_hour: datetime | None, bucket: int, count: int) -> ds.Expression:
    """Rows of `event_hour` (any hour when None) in dedup bucket `bucket` of `count`."""
    hour = (
        ds.field("event_hour") == pa.scalar(event_hour, UTC_US)
        if event_hour is not None
        else ds.scalar(True)
    )
    if count == 1:
        return hour
    members = ds.field("dedup_bucket").isin(list(range(bucket, DEDUP_BUCKETS, count)))
    if bucket == 0:  # rows without an event_id (quarantined) go with the first bucket
        members = members | ds.field("dedup_bucket").is_null()
    return hour & members


def _nearby_files(
    ledger: Ledger, manifests: dict[datetime, Manifest], recorded: set[datetime]
) -> list[str]:
    """The bronze files of the ingest hours within CROSS_HOUR_WINDOW of the hour's inputs
    (`manifests`, already read; only the neighbours are read here)."""
    if not manifests:
        return []
    low, high = min(manifests) - CROSS_HOUR_WINDOW, max(manifests) + CROSS_HOUR_WINDOW
    near = [h for h in recorded if low <= h <= high and h not in manifests]
    return [
        entry.file
        for manifest in [*manifests.values(), *ledger.manifests(near).values()]
        for entry in manifest.partitions.values()
        if entry.file
    ]


def _copies_elsewhere(
    lake: LakeResource,
    files: list[str],
    event_hour: datetime,
    valid: pl.DataFrame,
    bucket: int,
    buckets: int,
    first_instant: datetime,
) -> pl.DataFrame:
    """The valid copies, in other event hours nearby, of the events in `valid`: their ids are
    read from bronze's event_id column, and only the rare matches are parsed."""
    if not files or valid.is_empty():
        return valid.clear()
    other_hours = ~(ds.field("event_hour") == pa.scalar(event_hour, UTC_US))
    probe = lake.read_parquet(
        files,
        columns=["event_id", "event_hour", "kafka_partition", "kafka_offset"],
        filters=_bucket_filter(None, bucket, buckets) & other_hours,
        schema=BRONZE_SCHEMA,  # bronze landed before the id column: no ids, no matches
    )
    ids = pl.from_arrow(probe)
    assert isinstance(ids, pl.DataFrame)
    matches = ids.filter(pl.col("event_id").is_in(valid["event_id"].implode()))
    if matches.is_empty():
        return valid.clear()
    rows = lake.read_parquet(
        files,
        columns=[*RECORD_SCHEMA.names, "ingest_hour"],
        filters=ds.field("event_hour").isin(matches["event_hour"].unique().to_list())
        & ds.field("kafka_offset").isin(matches["kafka_offset"].unique().to_list()),
    )
    parsed = pl.from_arrow(parse_events(rows, start=first_instant))
    assert isinstance(parsed, pl.DataFrame)
    return (
        parsed.join(matches.select("kafka_partition", "kafka_offset"), on=ARRIVAL_ORDER[1:])
        .filter(pl.col("reason").is_null())
        .with_columns(received_at=pl.col("kafka_timestamp"))
    )


@dataclass(frozen=True)
class Cleaned:
    """What a cleaning run did to one event hour: its stamp and what the UI shows beside it."""

    stamp: CleanStamp
    expected_bronze_rows: int
    clock_corrected: int
    late_events: int
    dedup_buckets: int
    quarantined_by_reason: dict[str, int]
    source_ingest_hours: list[datetime]


def clean_hour(
    lake: LakeResource,
    event_hour: datetime,
    *,
    first_instant: datetime,
    now: datetime,
    recorded: set[datetime] | None = None,
    bucket_rows: int = BUCKET_ROWS,
) -> Cleaned:
    """Rebuild silver and quarantine for `event_hour` from what the ledger holds now, one dedup
    bucket at a time; the files carry the stamp of what they were built from and are written
    whole or not at all, quarantine first and silver last.

    A run that finds silver already built from more ingest hours than it read (a newer run
    finished first) leaves that silver alone."""
    ledger = Ledger(lake)
    recorded = recorded if recorded is not None else set(ledger.recorded_hours())
    inputs = ledger.inputs(event_hour, recorded)
    manifests = ledger.manifests(inputs)
    winners = winners_for(ledger, manifests, recorded)
    files = source_files(manifests.values(), event_hour)
    expected = bronze_rows(manifests.values(), event_hour)
    nearby = _nearby_files(ledger, manifests, recorded)
    buckets = bucket_count(expected, bucket_rows)
    columns = [*RECORD_SCHEMA.names, "ingest_hour"]
    counts = Counter()
    reasons: Counter = Counter()
    sources: set[datetime] = set()
    silver_path, quarantine_path = events_file(event_hour), cleaning_quarantine_file(event_hour)

    def newest() -> bool:
        current = ledger.clean_stamp(event_hour)
        return current is None or not set(current.inputs) > set(inputs)

    with (
        lake.parquet_writer(silver_path, SILVER_SCHEMA, keep=newest) as silver_writer,
        lake.parquet_writer(quarantine_path, QUARANTINE_SCHEMA, keep=newest) as quarantine_writer,
    ):
        for bucket in range(buckets if files else 0):
            bronze = lake.read_parquet(
                files, columns=columns, filters=_bucket_filter(event_hour, bucket, buckets)
            )
            parsed = pl.from_arrow(parse_events(bronze, start=first_instant))
            assert isinstance(parsed, pl.DataFrame)
            parsed = parsed.with_columns(received_at=pl.col("kafka_timestamp"))
            invalid = parsed.filter(pl.col("reason").is_not_null())
            valid = parsed.filter(pl.col("reason").is_null())
            elsewhere = _copies_elsewhere(
                lake, nearby, event_hour, valid, bucket, buckets, first_instant
            )
            clean = deduplicate(valid, winners, elsewhere).sort("event_time", "event_id")
            quarantine_writer.write_table(
                invalid.with_columns(stage=pl.lit("cleaning"))
                .sort("kafka_partition", "kafka_offset", "ingest_hour")
                .select(QUARANTINE_SCHEMA.names)
                .to_arrow()
                .cast(QUARANTINE_SCHEMA)
            )
            silver_writer.write_table(
                clean.select(SILVER_SCHEMA.names).to_arrow().cast(SILVER_SCHEMA)
            )
            counts["bronze_rows"] += parsed.height
            counts["events"] += clean.height
            counts["duplicates"] += valid.height - clean.height
            counts["quarantined"] += invalid.height
            counts["clock_corrected"] += int(clean["clock_corrected"].sum())
            counts["late_events"] += int((clean["ingest_hour"] > event_hour).sum())
            reasons.update(dict(invalid.group_by("reason").len().iter_rows()))
            sources.update(parsed["ingest_hour"].unique().to_list())
        stamp = CleanStamp(
            event_hour=event_hour,
            inputs=tuple(inputs),
            events=counts["events"],
            duplicates=counts["duplicates"],
            quarantined=counts["quarantined"],
            bronze_rows=counts["bronze_rows"],
            cleaned_at=now.isoformat(),
        )
        # The stamp travels in both footers: one rename commits data and stamp together.
        for writer in (quarantine_writer, silver_writer):
            writer.add_key_value_metadata({STAMP_KEY: stamp.to_bytes()})
    return Cleaned(
        stamp=stamp,
        expected_bronze_rows=expected,
        clock_corrected=counts["clock_corrected"],
        late_events=counts["late_events"],
        dedup_buckets=buckets,
        quarantined_by_reason=dict(sorted(reasons.items())),
        source_ingest_hours=sorted(sources),
    )
