"""Cleaning (silver): event hour E rebuilt whole from every bronze file that holds events of E.

Copies of an event share event_id and event_time, so the dedup state is one event hour. The one
exception, a future-clock event whose copies took their receive hours, is settled by the small
set of corrected copies that landing recorded in its manifests.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds

from clickstream_assets.landing import QUARANTINE_SCHEMA, hour_dir, hour_label
from core.contract import DEDUP_BUCKETS, parse_events
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


def events_file(hour: datetime) -> str:
    return f"silver/events/{hour_dir(hour)}/part-0000.parquet"


def cleaning_quarantine_file(hour: datetime) -> str:
    return f"quarantine/cleaning/{hour_dir(hour)}/part-0000.parquet"


def source_files(manifests: dict[datetime, dict], event_hour: datetime) -> list[str]:
    """The bronze files of every ingest hour whose histogram counts events of `event_hour`."""
    label = hour_label(event_hour)
    return [
        entry["file"]
        for _, manifest in sorted(manifests.items())
        if manifest["event_hours"].get(label)
        for entry in manifest["partitions"].values()
        if entry["file"]
    ]


def bronze_rows(manifests: dict[datetime, dict], event_hour: datetime) -> int:
    label = hour_label(event_hour)
    return sum(m["event_hours"].get(label, 0) for m in manifests.values())


def corrected_winners(manifests: dict[datetime, dict]) -> pl.DataFrame:
    """For each future-clock event, the coordinates of its first received valid copy.

    If any valid copy of an event was corrected, the first received valid copy was too (it was
    received earliest, so its clock was even further ahead), so these sets decide the winner.
    """
    rows = [c for m in manifests.values() for c in m["corrected"]]
    frame = pl.DataFrame(
        rows,
        schema={
            "event_id": pl.String,
            "kafka_partition": pl.Int32,
            "kafka_offset": pl.Int64,
            "kafka_timestamp_ms": pl.Int64,
            "event_hour": pl.String,
        },
    )
    return (
        frame.sort(["kafka_timestamp_ms", "kafka_partition", "kafka_offset"])
        .unique("event_id", keep="first", maintain_order=True)
        .select("event_id", "kafka_partition", "kafka_offset")
    )


def deduplicate(valid: pl.DataFrame, winners: pl.DataFrame) -> pl.DataFrame:
    """One row per event_id: the first received copy (earliest Kafka timestamp, then lowest
    partition, then lowest offset); a corrected event keeps only its global first copy."""
    first = valid.sort(ARRIVAL_ORDER).unique("event_id", keep="first", maintain_order=True)
    joined = first.join(winners, on="event_id", how="left", suffix="_winner")
    keep = pl.col("kafka_partition_winner").is_null() | (
        (pl.col("kafka_partition") == pl.col("kafka_partition_winner"))
        & (pl.col("kafka_offset") == pl.col("kafka_offset_winner"))
    )
    return joined.filter(keep).drop("kafka_partition_winner", "kafka_offset_winner")


BUCKET_ROWS = 4_000_000
"""Rows deduplicated at once: bounds cleaning's memory whatever an event hour's size."""


def bucket_count(rows: int, bucket_rows: int = BUCKET_ROWS) -> int:
    """Dedup buckets for an hour of `rows`: a power of two, so buckets nest in DEDUP_BUCKETS."""
    count = 1
    while count * bucket_rows < rows and count < DEDUP_BUCKETS:
        count *= 2
    return count


def _bucket_filter(event_hour: datetime, bucket: int, count: int) -> ds.Expression:
    hour = ds.field("event_hour") == pa.scalar(event_hour, UTC_US)
    if count == 1:
        return hour
    members = ds.field("dedup_bucket").isin(list(range(bucket, DEDUP_BUCKETS, count)))
    if bucket == 0:  # rows without an event_id (quarantined) go with the first bucket
        members = members | ds.field("dedup_bucket").is_null()
    return hour & members


def clean_hour(
    lake: LakeResource,
    event_hour: datetime,
    manifests: dict[datetime, dict],
    *,
    winners: pl.DataFrame | None = None,
    bucket_rows: int = BUCKET_ROWS,
) -> dict:
    """Rebuild silver and quarantine for `event_hour`, one dedup bucket at a time, each file
    written whole or not at all; return the hour's reconciliation counts. `winners` is
    `corrected_winners(manifests)`, passed in when several hours share it."""
    files = source_files(manifests, event_hour)
    expected = bronze_rows(manifests, event_hour)
    buckets = bucket_count(expected, bucket_rows)
    winners = corrected_winners(manifests) if winners is None else winners
    columns = [*RECORD_SCHEMA.names, "ingest_hour"]
    counts = {"bronze_rows": 0, "events": 0, "duplicates": 0, "quarantined": 0}
    counts |= {"clock_corrected": 0, "late_events": 0}
    reasons: Counter = Counter()
    sources: set[datetime] = set()
    with (
        lake.parquet_writer(events_file(event_hour), SILVER_SCHEMA) as silver_writer,
        lake.parquet_writer(
            cleaning_quarantine_file(event_hour), QUARANTINE_SCHEMA
        ) as quarantine_writer,
    ):
        for bucket in range(buckets if files else 0):
            bronze = lake.read_parquet(
                files, columns=columns, filters=_bucket_filter(event_hour, bucket, buckets)
            )
            parsed = pl.from_arrow(parse_events(bronze))
            assert isinstance(parsed, pl.DataFrame)
            parsed = parsed.with_columns(received_at=pl.col("kafka_timestamp"))
            invalid = parsed.filter(pl.col("reason").is_not_null())
            valid = parsed.filter(pl.col("reason").is_null())
            clean = deduplicate(valid, winners).sort("event_time", "event_id")
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
    return counts | {
        "expected_bronze_rows": expected,
        "dedup_buckets": buckets,
        "quarantined_by_reason": dict(sorted(reasons.items())),
        "source_ingest_hours": sorted(hour_label(h) for h in sources),
    }
