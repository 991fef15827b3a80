"""Landing (bronze): each ingest hour lands an exact, chained Kafka offset range per partition.

Ingest hour H of partition p covers [start, end): start is the end that H-1 recorded (the log's
beginning for the first hour); end is the first offset whose Kafka timestamp is at or after the
end of H, or the high watermark seen while reading. Once a manifest records a range it never
changes; a re-run reads the recorded range and rewrites the same bytes.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial

import pyarrow as pa
import pyarrow.compute as pc

from core.contract import UNREADABLE_REASONS, parse_events
from resources.kafka import RECORD_SCHEMA, EventLog
from resources.lake import LakeResource

HOUR = timedelta(hours=1)
ROW_GROUP_ROWS = 100_000
"""Fixed row-group size: bounds memory and makes a re-run write identical bytes."""

MANIFESTS = "bronze/_manifests"

BRONZE_SCHEMA = pa.schema(
    [
        *RECORD_SCHEMA,
        ("ingest_hour", pa.timestamp("us", tz="UTC")),
        ("event_hour", pa.timestamp("us", tz="UTC")),
        ("dedup_bucket", pa.uint8()),
    ]
)
"""As received, plus where cleaning will look for it: the event hour and the dedup bucket."""
QUARANTINE_SCHEMA = pa.schema(
    [
        ("stage", pa.string()),
        ("reason", pa.string()),
        *RECORD_SCHEMA,
        ("ingest_hour", pa.timestamp("us", tz="UTC")),
        ("event_hour", pa.timestamp("us", tz="UTC")),
    ]
)


HOUR_LABEL_FORMAT = "%Y-%m-%dT%H"
"""How the lake names an hour (manifest files, histograms)."""


def hour_label(hour: datetime) -> str:
    return hour.strftime(HOUR_LABEL_FORMAT)


def parse_hour_label(label: str) -> datetime:
    return datetime.strptime(label, HOUR_LABEL_FORMAT).replace(tzinfo=UTC)


def hour_dir(hour: datetime) -> str:
    return hour.strftime("date=%Y-%m-%d/hour=%H")


def bronze_file(hour: datetime, partition: int) -> str:
    return f"bronze/{hour_dir(hour)}/partition={partition}.parquet"


def landing_quarantine_file(hour: datetime, partition: int) -> str:
    return f"quarantine/landing/{hour_dir(hour)}/partition={partition}.parquet"


def manifest_path(hour: datetime) -> str:
    return f"{MANIFESTS}/{hour_label(hour)}.json"


def recorded_hours(lake: LakeResource) -> list[datetime]:
    """The ingest hours that have a manifest, oldest first: one listing, no manifest read."""
    return [
        parse_hour_label(name.removesuffix(".json"))
        for name in lake.list(MANIFESTS)
        if name.endswith(".json") and not name.startswith(".")  # skip in-flight temporaries
    ]


def read_manifests(lake: LakeResource, hours: list[datetime] | None = None) -> dict[datetime, dict]:
    """The recorded manifests of `hours` (default: every one), keyed by hour: the ledger."""
    wanted = recorded_hours(lake) if hours is None else hours
    return {hour: lake.read_json(manifest_path(hour)) for hour in wanted}


def first_at_or_after(timestamps: pa.Array, instant: datetime) -> int:
    """Index of the first timestamp at or after `instant`, or len(timestamps) if none is."""
    mask = pc.greater_equal(timestamps, pa.scalar(instant, timestamps.type))
    index = pc.index(mask, True).as_py()
    return len(timestamps) if index < 0 else index


def chained_starts(
    previous: dict | None, partitions: list[int], beginning: dict[int, int]
) -> dict[int, int]:
    """Start offsets for the hour after `previous`: its ends, or the log's beginning for a
    partition it does not know (the first hour, or a partition added since)."""
    recorded = previous["partitions"] if previous else {}
    return {p: recorded[str(p)]["end"] if str(p) in recorded else beginning[p] for p in partitions}


@dataclass
class _Sink:
    """Writes one (ingest hour, partition) file in fixed row groups and counts what it saw."""

    lake: LakeResource
    hour: datetime
    partition: int
    start: int
    rows: int = 0
    event_hours: Counter = field(default_factory=Counter)
    quarantined: Counter = field(default_factory=Counter)
    corrected: list[dict] = field(default_factory=list)
    _pending: list[pa.Table] = field(default_factory=list)
    _pending_rows: int = 0
    _writer: object = None
    _context: object = None
    _quarantine: list[pa.Table] = field(default_factory=list)

    def add(self, batch: pa.RecordBatch) -> None:
        """Buffer received records; they are parsed and written a whole row group at a time."""
        if batch.num_rows == 0:
            return
        self._pending.append(pa.Table.from_batches([batch], schema=RECORD_SCHEMA))
        self._pending_rows += batch.num_rows
        self.rows += batch.num_rows
        while self._pending_rows >= ROW_GROUP_ROWS:
            self._flush(ROW_GROUP_ROWS)

    def _flush(self, rows: int) -> None:
        combined = pa.concat_tables(self._pending)
        rest = combined.slice(rows)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows
        self._write_group(combined.slice(0, rows).combine_chunks())

    def _write_group(self, received: pa.Table) -> None:
        # One row group per event hour (offset order within it): row-group statistics then let
        # cleaning read only the rows of the hour it rebuilds, late rows included.
        parsed = parse_events(received)
        parsed = parsed.take(
            pc.sort_indices(
                parsed,
                [("event_hour", "ascending", "at_start"), ("kafka_offset", "ascending")],
            )
        )
        unreadable = pc.fill_null(
            pc.is_in(parsed.column("reason"), pa.array(UNREADABLE_REASONS)), False
        )
        ingest = pa.repeat(
            pa.scalar(self.hour, BRONZE_SCHEMA.field("ingest_hour").type), len(parsed)
        )
        bronze = (
            parsed.select(RECORD_SCHEMA.names)
            .append_column("ingest_hour", ingest)
            .append_column("event_hour", parsed.column("event_hour"))
            .append_column("dedup_bucket", parsed.column("dedup_bucket"))
        )
        if self._writer is None:
            self._context = self.lake.parquet_writer(
                bronze_file(self.hour, self.partition), BRONZE_SCHEMA
            )
            self._writer = self._context.__enter__()
        runs = pc.run_end_encode(bronze.column("event_hour").combine_chunks())
        start = 0
        for end in runs.run_ends.to_pylist():
            self._writer.write_table(bronze.slice(start, end - start), row_group_size=end - start)
            start = end

        readable = parsed.filter(pc.invert(unreadable))
        histogram = readable.group_by("event_hour").aggregate([("event_hour", "count")])
        for hour, count in zip(*histogram.columns, strict=True):
            self.event_hours[hour_label(hour.as_py())] += count.as_py()
        bad = bronze.filter(unreadable)
        if bad.num_rows:
            reasons = parsed.column("reason").filter(unreadable)
            self.quarantined.update(reasons.to_pylist())
            self._quarantine.append(
                bad.append_column("reason", reasons)
                .append_column("stage", pa.repeat(pa.scalar("landing"), bad.num_rows))
                .select(QUARANTINE_SCHEMA.names)
                .cast(QUARANTINE_SCHEMA)
            )
        fixed = parsed.filter(
            pc.and_(parsed.column("clock_corrected"), pc.is_null(parsed["reason"]))
        )
        if fixed.num_rows:
            self.corrected.extend(
                fixed.select(["event_id", "kafka_partition", "kafka_offset"])
                .append_column(
                    "kafka_timestamp_ms", pc.cast(fixed.column("kafka_timestamp"), pa.int64())
                )
                .append_column(
                    "event_hour", pc.strftime(fixed.column("event_hour"), HOUR_LABEL_FORMAT)
                )
                .append_column(
                    "device_hour", pc.strftime(fixed.column("device_hour"), HOUR_LABEL_FORMAT)
                )
                .to_pylist()
            )

    def close(self, end: int) -> dict:
        """Finish the file; return this partition's manifest entry and counts (plain data, so
        that a worker process can hand it back)."""
        if self._pending_rows:
            self._flush(self._pending_rows)
        if self._context is not None:
            self._context.__exit__(None, None, None)
        if self._quarantine:
            self.lake.write_parquet(
                landing_quarantine_file(self.hour, self.partition),
                pa.concat_tables(self._quarantine),
            )
        entry = {
            "start": self.start,
            "end": end,
            "rows": self.rows,
            "file": bronze_file(self.hour, self.partition) if self.rows else None,
        }
        return {
            "entry": entry,
            "event_hours": dict(self.event_hours),
            "quarantined": dict(self.quarantined),
            "corrected": self.corrected,
        }

    def abort(self) -> None:
        if self._context is not None:
            self._context.__exit__(RuntimeError, RuntimeError("aborted"), None)


def _land_partition(
    open_log: Callable[[], EventLog],
    open_lake: Callable[[], LakeResource],
    partition: int,
    start: int,
    hours: list[datetime],
    recorded_ends: list[int] | None,
) -> list[dict]:
    """Stream one partition from `start`, cutting it into `hours` by Kafka timestamp (or at the
    recorded ends when re-landing); return each hour's manifest entry and counts."""
    log, lake = open_log(), open_lake()
    done: list[dict] = []
    position = start
    sink = _Sink(lake, hours[0], partition, start)

    def finish_hour() -> _Sink:
        done.append(sink.close(position))
        return _Sink(lake, hours[min(len(done), len(hours) - 1)], partition, position)

    reader = log.read(partition, start, recorded_ends[-1] if recorded_ends else None)
    try:
        for batch in reader:
            while len(done) < len(hours):
                if recorded_ends:
                    cut = min(batch.num_rows, recorded_ends[len(done)] - position)
                else:
                    cut = first_at_or_after(batch.column("kafka_timestamp"), sink.hour + HOUR)
                sink.add(batch.slice(0, cut))
                position += cut
                if cut == batch.num_rows:
                    break  # the hour may go on in the next batch
                sink = finish_hour()
                batch = batch.slice(cut)
            if len(done) == len(hours):
                break
        # The log is read up to its high watermark: the remaining hours end here.
        while len(done) < len(hours):
            sink = finish_hour()
    except BaseException:
        sink.abort()
        raise
    finally:
        reader.close()
    return done


def land_hours(
    log: EventLog, lake: LakeResource, hours: list[datetime], *, now: datetime
) -> list[dict]:
    """Land consecutive ingest `hours` in one pass over the log and return their manifests.

    Hours already recorded are re-landed from their recorded ranges (same bytes); new hours must
    follow the last recorded one and must have closed before `now`.
    """
    hours = sorted(hours)
    if any(b - a != HOUR for a, b in zip(hours, hours[1:], strict=False)):
        raise ValueError(f"ingest hours must be consecutive, got {[hour_label(h) for h in hours]}")
    known_hours = set(recorded_hours(lake))
    if hours[-1] + HOUR > now and hours[-1] not in known_hours:
        raise ValueError(
            f"ingest hour {hour_label(hours[-1])} has not closed yet (now {now.isoformat()})"
        )
    replay = [h for h in hours if h in known_hours]
    fresh = [h for h in hours if h not in known_hours]
    if replay and fresh and max(replay) > min(fresh):
        raise ValueError("cannot land new hours before hours that are already recorded")
    last = max(known_hours) if known_hours else None
    # Only the manifests this landing chains onto or replays are read.
    needed = replay + ([fresh[0] - HOUR] if fresh and fresh[0] - HOUR in known_hours else [])
    recorded = read_manifests(lake, needed)
    if fresh and last is not None and fresh[0] != last + HOUR:
        raise ValueError(
            f"ingest hour {hour_label(fresh[0])} cannot land before "
            f"{hour_label(last + HOUR)}: land the hours in between first"
        )
    partitions = log.partitions()
    lake.check_writable()
    manifests: list[dict] = []
    if replay:
        _replay(log, lake, replay, recorded)
        manifests += [recorded[h] for h in replay]
    if fresh:
        previous = recorded.get(fresh[0] - HOUR)
        known = (previous or {}).get("partitions", {})
        beginning = {p: log.beginning_offset(p) for p in partitions if str(p) not in known}
        starts = chained_starts(previous, partitions, beginning)
        with _pool(log, len(partitions), lake) as (pool, open_log, open_lake):
            futures = {
                p: pool.submit(_land_partition, open_log, open_lake, p, starts[p], fresh, None)
                for p in partitions
            }
            results = {p: future.result() for p, future in futures.items()}
        for index, hour in enumerate(fresh):
            manifest = _manifest(log.topic, hour, {p: results[p][index] for p in partitions}, now)
            lake.write_json(manifest_path(hour), manifest)  # last: the hour now exists
            manifests.append(manifest)
        log.commit({p: results[p][-1]["entry"]["end"] for p in partitions})
    return manifests


@contextmanager
def _pool(
    log: EventLog, partitions: int, lake: LakeResource
) -> Iterator[tuple[Executor, Callable[[], EventLog], Callable[[], LakeResource]]]:
    """Kafka partitions land in parallel: in worker processes when the log can be reopened there
    (the Kafka client is CPU-bound Python), else in threads. Yields the executor and how a
    worker opens the log and the lake."""
    workers = max(1, min(partitions, os.cpu_count() or 1, 16))
    if log.process_safe and workers > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            yield pool, log.opener(), partial(LakeResource, url=lake.url)
    else:
        with ThreadPoolExecutor(max(1, min(partitions, 8))) as pool:
            yield pool, log.opener(), lambda: lake


def _replay(
    log: EventLog, lake: LakeResource, hours: list[datetime], recorded: dict[datetime, dict]
) -> None:
    partitions = sorted({int(p) for h in hours for p in recorded[h]["partitions"]})
    ranges = {
        p: [(hour, recorded[hour]["partitions"].get(str(p))) for hour in hours] for p in partitions
    }
    with _pool(log, len(partitions), lake) as (pool, open_log, open_lake):
        futures = [
            pool.submit(_replay_partition, open_log, open_lake, p, ranges[p]) for p in partitions
        ]
        for future in futures:
            future.result()


def _replay_partition(
    open_log: Callable[[], EventLog],
    open_lake: Callable[[], LakeResource],
    partition: int,
    ranges: list[tuple[datetime, dict | None]],
) -> None:
    for hour, entry in ranges:
        if entry and entry["end"] > entry["start"]:
            _land_partition(open_log, open_lake, partition, entry["start"], [hour], [entry["end"]])


def _manifest(topic: str, hour: datetime, parts: dict[int, dict], now: datetime):
    event_hours: Counter = Counter()
    quarantined: Counter = Counter()
    corrected: list[dict] = []
    for part in parts.values():
        event_hours.update(part["event_hours"])
        quarantined.update(part["quarantined"])
        corrected.extend(part["corrected"])
    return {
        "ingest_hour": hour_label(hour),
        "topic": topic,
        "partitions": {str(p): part["entry"] for p, part in sorted(parts.items())},
        "rows": sum(part["entry"]["rows"] for part in parts.values()),
        "event_hours": dict(sorted(event_hours.items())),
        "quarantined": dict(sorted(quarantined.items())),
        "corrected": sorted(corrected, key=lambda c: (c["kafka_partition"], c["kafka_offset"])),
        "landed_at": now.isoformat(),
    }


def hours_to_rebuild(manifest: dict) -> list[str]:
    """The event hours a landing affects: those it holds events of, and the hours the devices
    claimed for its clock-corrected events, where uncorrected retries may already be counted.

    A retry sits in the claimed hour only if it was received within 5 minutes of it, so claimed
    hours after this ingest hour hold none yet; the retry's own landing will name them."""
    claimed = {
        c["device_hour"]
        for c in manifest["corrected"]
        if c["device_hour"] <= manifest["ingest_hour"]
    }
    return sorted(set(manifest["event_hours"]) | claimed)


def first_ingest_hour(log: EventLog) -> datetime | None:
    """Where the ledger starts when nothing has landed: the hour of the log's oldest record."""
    earliest: list[datetime] = []
    for partition in log.partitions():
        reader = log.read(partition, log.beginning_offset(partition))
        try:
            batch = next(reader, None)
        finally:
            reader.close()
        if batch is not None and batch.num_rows:
            earliest.append(pc.min(batch.column("kafka_timestamp")).as_py())
    if not earliest:
        return None
    return min(earliest).replace(minute=0, second=0, microsecond=0)
