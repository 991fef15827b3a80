"""Cleaning (silver): event hour E rebuilt whole from every bronze file that holds events of E.

Bronze holds each record parsed once by landing, so cleaning reads typed columns and only
deduplicates. Copies of an event share event_id and event_time, so the dedup state is one event
hour, cut into buckets of event_ids when the hour is large. The exceptions: a future-clock event
whose copies took their receive hours is settled by the small set of corrected copies that
landing recorded in its manifests, and a copy re-stamped into a nearby hour by its arrival.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from clickstream_assets.landing import BRONZE_SCHEMA, QUARANTINE_SCHEMA
from core.contract import DEDUP_BUCKETS, EVENT_SCHEMA, UTC_US
from core.ledger import (
    STAMP_KEY,
    CleanStamp,
    Ledger,
    Manifest,
    cleaning_quarantine_file,
    events_file,
    hour_label,
)
from resources.kafka import RECORD_SCHEMA
from resources.lake import LakeResource

SILVER_SCHEMA = pa.schema(
    [
        *EVENT_SCHEMA,
        ("received_at", RECORD_SCHEMA.field("kafka_timestamp").type),
        ("kafka_partition", pa.int32()),
        ("kafka_offset", pa.int64()),
        ("ingest_hour", UTC_US),
    ]
)
SILVER_STATISTICS = [
    "event_time",
    "event_hour",
    "received_at",
    "kafka_partition",
    "kafka_offset",
    "ingest_hour",
]
"""The silver columns worth min/max statistics: times and positions, not random ids."""
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
    valid: pl.DataFrame,
    winners: pl.DataFrame,
    elsewhere: pl.DataFrame | None = None,
    *,
    order: tuple[str, ...] = (),
) -> pl.DataFrame:
    """One row per event_id: the first received copy (earliest Kafka timestamp, then lowest
    partition, then lowest offset). A corrected event keeps only its global first copy, and an
    event with a valid copy in another event hour (a client that re-stamps on retry) is kept
    only where its first received copy is (`elsewhere`: those copies' arrival columns).

    The choice is made on the key columns alone and the kept rows are gathered once, in `order`
    when given, so memory is the rows plus their keys, not several copies of every column."""
    keys = valid.select(*dict.fromkeys(["event_id", *ARRIVAL_ORDER, *order])).with_row_index()
    first = keys.sort(ARRIVAL_ORDER).unique("event_id", keep="first", maintain_order=True)
    joined = first.join(winners, on="event_id", how="left", suffix="_winner")
    keep = pl.col("kafka_partition_winner").is_null() | (
        (pl.col("kafka_partition") == pl.col("kafka_partition_winner"))
        & (pl.col("kafka_offset") == pl.col("kafka_offset_winner"))
    )
    kept = joined.filter(keep)
    if elsewhere is not None and not elsewhere.is_empty():
        best = (
            elsewhere.select("event_id", *ARRIVAL_ORDER)
            .sort(ARRIVAL_ORDER)
            .unique("event_id", keep="first", maintain_order=True)
        )
        compared = kept.join(best, on="event_id", how="left", suffix="_elsewhere")
        lost = pl.col("received_at_elsewhere").is_not_null() & _earlier("_elsewhere", "")
        kept = compared.filter(~lost)
    if order:
        kept = kept.sort(order)
    return valid.select(pl.all().gather(kept["index"]))


CROSS_HOUR_WINDOW = timedelta(hours=1)
"""How far apart in ingest time copies of one event in different event hours are matched: a
client that re-stamps its events on retry resends within minutes (the SDK backs off for at most
a few), so one ingest hour each way bounds the read to three hours of event_id columns."""


BUCKET_ROWS = 500_000
"""Rows deduplicated at once: bounds cleaning's memory whatever an event hour's size."""


def bucket_count(rows: int, bucket_rows: int = BUCKET_ROWS) -> int:
    """Dedup buckets for an hour of `rows`: a power of two, so buckets nest in DEDUP_BUCKETS."""
    count = 1
    while count * bucket_rows < rows and count < DEDUP_BUCKETS:
        count *= 2
    return count


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


_EVENT_COLUMNS = {
    **{name: ds.field(name) for name in EVENT_SCHEMA.names},
    "received_at": ds.field("kafka_timestamp"),
    **{name: ds.field(name) for name in ["kafka_partition", "kafka_offset", "ingest_hour"]},
}
"""A valid bronze row as cleaning reads it: the typed event and where it arrived."""
_COPY_COLUMNS = {name: _EVENT_COLUMNS[name] for name in ["event_id", *ARRIVAL_ORDER]}
"""The arrival of a valid copy in another event hour, to compare with this hour's copies."""


SCAN_READAHEAD = {"batch_readahead": 2, "fragment_readahead": 1}
"""A streaming scan reads a few row groups ahead, not Arrow's default of 16: its memory stays
that of a few row groups whatever the hour's size."""


def _in_buckets(
    lake: LakeResource,
    files: list[str],
    row_filter: ds.Expression,
    columns: dict[str, ds.Expression],
    buckets: int,
    spill: str,
) -> Callable[[int], pl.DataFrame]:
    """Read the rows of `files` matching `row_filter`, one dedup bucket at a time, in memory
    bounded by a bucket: with more than one bucket, one streaming pass writes each bucket's rows
    to local Arrow files under `spill` (copies of an event share a bucket), and each is read
    back alone. Returns the reader of a bucket."""
    dataset = lake.dataset(files, BRONZE_SCHEMA)
    if buckets == 1:
        frame = _frame(dataset.to_table(columns=columns, filter=row_filter))
        return lambda _bucket: frame
    mask = pa.scalar(buckets - 1, pa.uint8())
    scanner = dataset.scanner(
        # A row without a bucket (bronze of an older version) goes with the first, to be refused.
        columns={
            **columns,
            "bucket": pc.coalesce(pc.bit_wise_and(ds.field("dedup_bucket"), mask), 0),
        },
        filter=row_filter,
        **SCAN_READAHEAD,
    )
    ds.write_dataset(
        scanner,
        spill,
        format="ipc",
        partitioning=ds.partitioning(pa.schema([("bucket", pa.uint8())])),
        preserve_order=False,
        existing_data_behavior="error",
    )
    empty = scanner.projected_schema.remove(scanner.projected_schema.get_field_index("bucket"))

    def read(bucket: int) -> pl.DataFrame:
        directory = os.path.join(spill, str(bucket))
        if not os.path.isdir(directory):
            return _frame(empty.empty_table())
        return _frame(ds.dataset(directory, format="ipc", schema=empty).to_table())

    return read


QUARANTINE_CHUNK_ROWS = 100_000
"""Invalid rows stream to quarantine in chunks of this many: bounded memory, few row groups."""


def _chunks(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """The rows of `batches` regrouped into tables of at least `rows` (the last one fewer); a
    filtered scan yields a batch, often empty, per row group it reads."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        if batch.num_rows:
            pending.append(batch)
            count += batch.num_rows
        if count >= rows:
            yield pa.Table.from_batches(pending)
            pending, count = [], 0
    if pending:
        yield pa.Table.from_batches(pending)


def _frame(table: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


def _check_typed(events: pl.DataFrame) -> None:
    """Bronze landed before it kept typed events reads as valid rows without types (a column a
    file lacks reads as nulls): refuse it, by name."""
    untyped = events.filter(pl.col("event_type").is_null())
    if not untyped.is_empty():
        hours = sorted({hour_label(h) for h in untyped["ingest_hour"].unique().to_list()})
        raise ValueError(
            f"bronze of ingest hours {', '.join(hours)} was landed before bronze kept typed "
            "events: re-land those hours (a backfill of raw_events; the same ranges are read "
            "again) and clean again"
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
    counts = Counter()
    reasons: Counter = Counter()
    sources: set[datetime] = set()
    silver_path, quarantine_path = events_file(event_hour), cleaning_quarantine_file(event_hour)
    this_hour = ds.field("event_hour") == pa.scalar(event_hour, UTC_US)
    valid = ds.field("reason").is_null()
    # Valid copies in other event hours (landing left the event hour null where it quarantined);
    # bronze landed before it kept typed events has no reason to tell, so its rows never count.
    typed = ds.field("event_type").is_valid()
    other_hours = ds.field("event_hour").is_valid() & ~this_hour & valid & typed

    def newest() -> bool:
        current = ledger.clean_stamp(event_hour)
        return current is None or not set(current.inputs) > set(inputs)

    with (
        tempfile.TemporaryDirectory(prefix="clickstream-clean-") as spill,
        lake.parquet_writer(
            silver_path, SILVER_SCHEMA, keep=newest, statistics=SILVER_STATISTICS
        ) as silver_writer,
        lake.parquet_writer(quarantine_path, QUARANTINE_SCHEMA, keep=newest) as quarantine_writer,
    ):
        if files:
            # Invalid rows need no dedup: streamed to quarantine as received, in ledger order.
            invalid_rows = lake.dataset(files, BRONZE_SCHEMA).scanner(
                columns=QUARANTINE_SCHEMA.names[1:], filter=this_hour & ~valid, **SCAN_READAHEAD
            )
            for chunk in _chunks(invalid_rows.to_batches(), QUARANTINE_CHUNK_ROWS):
                invalid = _frame(chunk)
                quarantine_writer.write_table(
                    invalid.with_columns(stage=pl.lit("cleaning"))
                    .select(QUARANTINE_SCHEMA.names)
                    .to_arrow()
                    .cast(QUARANTINE_SCHEMA)
                )
                counts["quarantined"] += invalid.height
                reasons.update(dict(invalid.group_by("reason").len().iter_rows()))
                sources.update(invalid["ingest_hour"].unique().to_list())
            events_of = _in_buckets(
                lake, files, this_hour & valid, _EVENT_COLUMNS, buckets, f"{spill}/events"
            )
            copies_of = _in_buckets(
                lake, nearby, other_hours, _COPY_COLUMNS, buckets, f"{spill}/copies"
            )
        for bucket in range(buckets if files else 0):
            events = events_of(bucket)
            _check_typed(events)
            copies = copies_of(bucket)
            elsewhere = copies.filter(pl.col("event_id").is_in(events["event_id"].implode()))
            clean = deduplicate(events, winners, elsewhere, order=("event_time", "event_id"))
            silver_writer.write_table(
                clean.select(SILVER_SCHEMA.names).to_arrow().cast(SILVER_SCHEMA)
            )
            counts["events"] += clean.height
            counts["duplicates"] += events.height - clean.height
            counts["clock_corrected"] += int(clean["clock_corrected"].sum())
            counts["late_events"] += int((clean["ingest_hour"] > event_hour).sum())
            sources.update(events["ingest_hour"].unique().to_list())
        stamp = CleanStamp(
            event_hour=event_hour,
            inputs=tuple(inputs),
            events=counts["events"],
            duplicates=counts["duplicates"],
            quarantined=counts["quarantined"],
            bronze_rows=counts["events"] + counts["duplicates"] + counts["quarantined"],
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
