"""Landing (bronze): each ingest hour lands an exact, chained Kafka offset range per partition.

Ingest hour H of partition p covers [start, end): start is the end that H-1 recorded (the log's
beginning for the first hour); end is the first offset whose Kafka timestamp is at or after the
end of H, or the high watermark seen while reading. Once a manifest records a range it never
changes; a re-run reads the recorded range and rewrites the same bytes.

A landing is three functions: `plan_landing` (check, re-land recorded hours, plan where each
partition starts), `land_shard` (the partitions `p mod K == k`, each partition's results kept as
a partial entry in the lake) and `commit_landing` (the manifests, last). One step runs all three
(`land_hours`); with K shards they are Dagster steps that share nothing but the lake.

The open hour may land in slices before it closes (`land_slice`, every CLICKSTREAM_SLICE_MINUTES):
each slice an exact range per partition from where the last one ended to the high watermark,
recorded last, so that the close leaves only the hour's last minutes to land.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial

import pyarrow as pa
import pyarrow.compute as pc

from core.contract import LANDING_REASONS, PARSE_SCHEMA, UTC_US, parse_events
from core.ledger import (
    HOUR,
    HOUR_LABEL_FORMAT,
    Ledger,
    Manifest,
    PartitionRange,
    bronze_file,
    copies_file,
    hour_dir,
    hour_label,
    landing_plan_path,
    landing_quarantine_file,
    manifest_path,
    parse_hour_label,
    partial_path,
    partials_dir,
    slices_dir,
)
from resources.event_log import RECORD_SCHEMA, EventLog, Positioned
from resources.lake_store import Lake

log = logging.getLogger(__name__)

ROW_GROUP_ROWS = 100_000
"""Rows sorted and written together: bounds memory and makes a re-run write identical bytes."""
RUN_ROWS = 10_000
"""A run of one event hour and validity this long, or holding half the rows written together, is
a row group of its own; shorter runs (late events of other hours, invalid rows) share row groups
of about this many rows. The half keeps a small hour's on-time rows (a few thousand a partition
in the demo) apart from its late ones: else each of the day's earlier hours would decode them
all to find its few late events."""
FUTURE_TIMESTAMP_TOLERANCE = timedelta(minutes=5)
"""A Kafka timestamp this far past the wall clock when read cannot be a receive time."""

BRONZE_SCHEMA = pa.schema([*RECORD_SCHEMA, ("ingest_hour", UTC_US), *PARSE_SCHEMA])
"""As received, plus the record parsed once (core.contract.PARSE_SCHEMA): its reason, the typed
event and its dedup bucket. Cleaning reads the typed columns and never parses again. The event
hour is null where landing quarantined the record (no event hour among the partitions)."""
BRONZE_STATISTICS = [
    "kafka_partition",
    "kafka_offset",
    "kafka_timestamp",
    "ingest_hour",
    "reason",
    "event_time",
    "event_hour",
    "dedup_bucket",
]
"""The bronze columns readers filter on (and the reason's null count, which tells valid row
groups from invalid ones)."""
BRONZE_DICTIONARY = [
    "kafka_key",
    "ingest_hour",
    "reason",
    "event_type",
    "event_hour",
    "device_id",
    "user_id",
    "platform",
    "title_id",
    "campaign_id",
    "ad_id",
    "page",
    "app_version",
    "schema_version",
    "device_hour",
]
"""The bronze columns of few distinct values, dictionary-encoded; the raw values, ids and times
are not: hashing every row's value to find no repeats was a fifth of writing bronze, and the
file is smaller without it."""
QUARANTINE_SCHEMA = pa.schema(
    [
        ("stage", pa.string()),
        ("reason", pa.string()),
        *RECORD_SCHEMA,
        ("ingest_hour", UTC_US),
        ("event_hour", UTC_US),
    ]
)


def first_at_or_after(timestamps: pa.Array, instant: datetime) -> int:
    """Index of the first timestamp at or after `instant`, or len(timestamps) if none is."""
    mask = pc.greater_equal(timestamps, pa.scalar(instant, timestamps.type))
    index = pc.index(mask, True).as_py()
    return len(timestamps) if index < 0 else index


def cut_timestamps(
    timestamps: pa.Array, *, carry: datetime, now: datetime
) -> tuple[pa.Array, pa.Array]:
    """The timestamps that cut ranges, and which were in the future: a timestamp later than
    `now` + 5 min counts as the one before it (`carry` before the first), so one bad clock never
    stalls a partition."""
    limit = pa.scalar(now + FUTURE_TIMESTAMP_TOLERANCE, timestamps.type)
    future = pc.fill_null(pc.greater(timestamps, limit), False)
    kept = pc.fill_null_forward(pc.if_else(future, pa.nulls(1, timestamps.type)[0], timestamps))
    return pc.fill_null(kept, pa.scalar(carry, timestamps.type)), future


def first_offset_at_or_after(offsets: pa.Array, end: int) -> int:
    """Index of the first offset at or after `end` (a recorded range's end), or len(offsets)."""
    index = pc.index(pc.greater_equal(offsets, end), True).as_py()
    return len(offsets) if index < 0 else index


def row_groups(run_ends: list[int], run_rows: int) -> Iterator[tuple[int, int]]:
    """The (start, end) of each row group over consecutive runs ending at `run_ends`: a run of
    at least `run_rows` rows is a row group of its own; shorter runs next to each other share a
    row group, closed once it holds `run_rows` rows."""
    shared = None  # where the open shared row group starts
    start = 0
    for end in run_ends:
        if end - start >= run_rows:
            if shared is not None:
                yield shared, start
                shared = None
            yield start, end
        else:
            shared = start if shared is None else shared
            if end - shared >= run_rows:
                yield shared, end
                shared = None
        start = end
    if shared is not None:
        yield shared, start


@dataclass
class _Sink:
    """Writes one (ingest hour, partition) file in fixed row groups and counts what it saw."""

    lake: Lake
    hour: datetime
    partition: int
    start: int
    first_instant: datetime
    lost: tuple[int, int] = (0, 0)
    piece: int | None = None
    """The slice of the open hour this sink lands (None: the range up to the hour's end)."""
    rows: int = 0
    future_timestamps: int = 0
    event_hours: Counter = field(default_factory=Counter)
    quarantined: Counter = field(default_factory=Counter)
    corrected: list[dict] = field(default_factory=list)
    _pending: list[pa.Table] = field(default_factory=list)
    _pending_rows: int = 0
    _writer: object = None
    _context: object = None
    _quarantine: list[pa.Table] = field(default_factory=list)

    def add(self, parsed: pa.Table) -> None:
        """Buffer parsed records (`_parsed`); they are written a whole row group at a time."""
        if parsed.num_rows == 0:
            return
        self._pending.append(parsed)
        self._pending_rows += parsed.num_rows
        self.rows += parsed.num_rows
        while self._pending_rows >= ROW_GROUP_ROWS:
            self._flush(ROW_GROUP_ROWS)

    def _flush(self, rows: int) -> None:
        combined = pa.concat_tables(self._pending)
        rest = combined.slice(rows)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows
        self._write_group(combined.slice(0, rows).combine_chunks())

    def _write_group(self, parsed: pa.Table) -> None:
        # Sorted by event hour and validity (offset order within each run) and cut at run ends
        # (`row_groups`): row-group statistics then let cleaning skip all but the few row groups
        # that hold rows of the hour it rebuilds (its filter keeps exactly those rows), without
        # hundreds of tiny row groups for the late events of a day.
        valid = pc.is_null(parsed["reason"])
        order = pa.table([parsed["event_hour"], valid, parsed["kafka_offset"]], ["h", "v", "o"])
        parsed = parsed.take(
            pc.sort_indices(
                order, [("h", "ascending", "at_start"), ("v", "ascending"), ("o", "ascending")]
            )
        )
        landing_bad = pc.fill_null(
            pc.is_in(parsed.column("reason"), pa.array(LANDING_REASONS)), False
        )
        # An event dated before the first partition has no event hour to go to.
        event_hour = pc.if_else(
            landing_bad,
            pa.nulls(1, parsed.schema.field("event_hour").type)[0],
            parsed.column("event_hour"),
        )
        ingest = pa.repeat(pa.scalar(self.hour, UTC_US), len(parsed))
        bronze = (
            parsed.set_column(parsed.schema.get_field_index("event_hour"), "event_hour", event_hour)
            .append_column("ingest_hour", ingest)
            .select(BRONZE_SCHEMA.names)
        )
        if self._writer is None:
            self._context = self.lake.parquet_writer(
                bronze_file(self.hour, self.partition, self.piece),
                BRONZE_SCHEMA,
                statistics=BRONZE_STATISTICS,
                dictionary=BRONZE_DICTIONARY,
            )
            self._writer = self._context.__enter__()
        ends = set()
        for column in (bronze["event_hour"], pc.is_null(bronze["reason"])):
            ends.update(pc.run_end_encode(column.combine_chunks()).run_ends.to_pylist())
        run_rows = min(RUN_ROWS, max(1, bronze.num_rows // 2))
        for start, end in row_groups(sorted(ends), run_rows):
            self._writer.write_table(bronze.slice(start, end - start), row_group_size=end - start)

        # Only the columns that the counts and the quarantine need are filtered: filtering every
        # column, the raw values too, was a sixth of the sink's CPU. The hours are counted by
        # value_counts: a group_by's Acero plan cost 0.2-0.7 ms a call, 20 times as much.
        histogram = pc.value_counts(bronze["event_hour"].filter(pc.invert(landing_bad)))
        for hour, count in zip(*histogram.flatten(), strict=True):
            self.event_hours[hour_label(hour.as_py())] += count.as_py()
        bad = bronze.select([n for n in QUARANTINE_SCHEMA.names if n != "stage"]).filter(
            landing_bad
        )
        if bad.num_rows:
            counts = pc.value_counts(bad.column("reason")).flatten()
            self.quarantined.update(dict(zip(*(c.to_pylist() for c in counts), strict=True)))
            self._quarantine.append(
                bad.append_column("stage", pa.repeat(pa.scalar("landing"), bad.num_rows))
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
        """Finish the file; return this partition's range and counts (plain data, as a
        landing shard's partial results hold it)."""
        if self._pending_rows:
            self._flush(self._pending_rows)
        if self._context is not None:
            self._context.__exit__(None, None, None)
        quarantine = landing_quarantine_file(self.hour, self.partition, self.piece)
        if self._quarantine:
            self.lake.write_parquet(quarantine, pa.concat_tables(self._quarantine))
        else:
            self.lake.remove(quarantine)  # an overlapping landing's leftover must not count
        piece = PartitionRange(
            start=self.start,
            end=end,
            rows=self.rows,
            file=bronze_file(self.hour, self.partition, self.piece) if self.rows else None,
            lost_start=self.lost[0],
            lost_end=self.lost[1],
            slice=self.piece,
        )
        return {
            "range": piece.to_json(),
            "event_hours": dict(self.event_hours),
            "quarantined": dict(self.quarantined),
            "corrected": self.corrected,
            "future_timestamps": self.future_timestamps,
        }

    def abort(self) -> None:
        if self._context is not None:
            self._context.__exit__(RuntimeError, RuntimeError("aborted"), None)


PARSED_SCHEMA = pa.schema([*RECORD_SCHEMA, *PARSE_SCHEMA])


def _parsed(
    reader: Iterable[Positioned], first_instant: datetime, until: datetime
) -> Iterator[tuple[pa.Table, int]]:
    """The read's batches parsed once (core.contract), a row group's worth at a time, or less
    where the read reaches `until` (the end of the last hour to land: what follows is not read
    further) or ends. A parse has a fixed cost per call, which a day of small hours would
    otherwise pay per hour and partition. Each chunk comes with the position after it."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    after = None
    for batch, after in reader:
        pending.append(batch)
        rows += batch.num_rows
        if rows >= ROW_GROUP_ROWS or _reaches(batch, until):
            yield _parse(pending, first_instant), after
            pending, rows = [], 0
    if pending:
        yield _parse(pending, first_instant), after


def _read_ahead(
    reader: Iterator[Positioned], until: datetime, depth: int = 2
) -> Iterator[Positioned]:
    """`reader` run on a thread of its own, up to `depth` batches ahead, so that the Kafka
    client's decoding (Python, holding the GIL) overlaps the parse and the Parquet writes (DuckDB
    and Arrow, which release it). Past a batch that reaches `until` it reads only on demand: the
    landing usually ends there, and what follows would be read for nothing. The thread closes
    `reader` when it stops."""
    items: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    demand = threading.Condition()
    asked = 0  # batches the reading side has asked for

    def pump() -> None:
        given = 0
        try:
            for item in reader:
                items.put((item, None))
                given += 1
                if _reaches(item[0], until):
                    with demand:  # until the reading side asks for the next one
                        while asked <= given and not stop.is_set():
                            demand.wait()
                if stop.is_set():
                    return
            items.put((None, None))
        except BaseException as error:  # handed to the reading side, raised there
            items.put((None, error))
        finally:
            reader.close()

    thread = threading.Thread(target=pump, name="landing-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            with demand:
                asked += 1
                demand.notify()
            item, error = items.get()
            if error is not None:
                raise error
            if item is None:
                return
            yield item
    finally:
        stop.set()
        with demand:
            demand.notify()
        while thread.is_alive():  # unblock its put, so that it stops and closes the reader
            with suppress(queue.Empty):
                items.get(timeout=0.1)


def _reaches(batch: pa.RecordBatch, until: datetime) -> bool:
    """Whether `batch` holds a Kafka timestamp at or after `until`."""
    return batch.num_rows > 0 and pc.max(batch.column("kafka_timestamp")).as_py() >= until


def _parse(batches: list[pa.RecordBatch], first_instant: datetime) -> pa.Table:
    received = pa.Table.from_batches(batches, schema=RECORD_SCHEMA)
    if received.num_rows == 0:
        return PARSED_SCHEMA.empty_table()
    return parse_events(received, start=first_instant)


@dataclass(frozen=True)
class _Job:
    """What one thread lands of one Kafka partition."""

    partition: int
    start: int
    hours: list[datetime]
    now: datetime
    first_instant: datetime
    recorded_end: int | None = None
    """Re-landing a recorded range: cut at this offset instead of by timestamp."""
    recorded_lost: tuple[int, int] = (0, 0)
    piece: int | None = None
    """Landing slice `piece` of the open hour (`hours` is that one hour)."""


def _land_partition(event_log: EventLog, lake: Lake, job: _Job) -> list[dict]:
    """Stream one partition from `job.start`, cutting it into `job.hours` by Kafka timestamp
    (or at the recorded end when re-landing); return each hour's range and counts."""
    lost = job.recorded_lost
    read_from = max(job.start, lost[1])
    if job.recorded_end is None:
        beginning = event_log.beginning_offset(job.partition)
        if beginning > job.start:
            # Retention deleted offsets no hour has landed: record them, land what is left.
            lost, read_from = (job.start, beginning), beginning
            log.error(
                "%s[%d] offsets %d-%d were deleted before they landed; recorded as lost",
                event_log.topic,
                job.partition,
                job.start,
                beginning - 1,
            )
    done: list[dict] = []
    position = read_from
    sink = _Sink(lake, job.hours[0], job.partition, job.start, job.first_instant, lost, job.piece)
    carry = job.hours[0]

    def finish_hour() -> _Sink:
        done.append(sink.close(position))
        hour = job.hours[min(len(done), len(job.hours) - 1)]
        return _Sink(lake, hour, job.partition, position, job.first_instant)

    reader = _read_ahead(
        event_log.read(job.partition, read_from, job.recorded_end), job.hours[-1] + HOUR
    )
    try:
        for batch, after in _parsed(reader, job.first_instant, job.hours[-1] + HOUR):
            if job.recorded_end is None and batch.num_rows:
                # The wall clock when read, a row group's read at most (a pinned run clock may be
                # hours behind the log).
                wall = max(job.now, datetime.now(UTC))
                cut_by, future = cut_timestamps(
                    batch.column("kafka_timestamp"), carry=carry, now=wall
                )
                carry = cut_by[-1].as_py()
            while len(done) < len(job.hours):
                if job.recorded_end is not None:
                    cut = first_offset_at_or_after(batch.column("kafka_offset"), job.recorded_end)
                elif batch.num_rows:
                    cut = first_at_or_after(cut_by, sink.hour + HOUR)
                    sink.future_timestamps += pc.sum(future.slice(0, cut)).as_py() or 0
                else:
                    cut = 0
                sink.add(batch.slice(0, cut))
                if cut == batch.num_rows:
                    position = after  # the hour may go on in the next batch
                    break
                position = batch.column("kafka_offset")[cut].as_py()
                sink = finish_hour()
                batch = batch.slice(cut)
                if job.recorded_end is None:
                    cut_by, future = cut_by.slice(cut), future.slice(cut)
            if len(done) == len(job.hours):
                break
        # The log is read up to its high watermark: the remaining hours end here.
        while len(done) < len(job.hours):
            sink = finish_hour()
    except BaseException:
        sink.abort()
        raise
    finally:
        reader.close()
    return done


@dataclass(frozen=True)
class LandingPlan:
    """What one landing run does, decided once before any fresh hour lands: the recorded hours
    it replayed, the fresh hours, where each Kafka partition starts, and how many shards land
    them. Kept in the lake (`landing_plan_path`), so that shard and commit steps in other
    processes or pods read the same plan."""

    topic: str
    first_hour: datetime
    """The run's first ingest hour: names the folder of the plan and the partials."""
    replayed: list[datetime]
    hours: list[datetime]
    starts: dict[int, int]
    now: datetime
    first_instant: datetime
    token: str
    """Names this landing's folder of partial entries (a Dagster run passes its run id), so
    that overlapping landings of the same hours never read each other's entries."""
    shards: int = 1
    slices: int = 0
    """Slices of the first fresh hour landed before it closed: the plan starts where the last
    one ended, and the hour's manifest lists them."""

    def to_json(self) -> dict:
        return {
            "topic": self.topic,
            "first_hour": hour_label(self.first_hour),
            "replayed": [hour_label(h) for h in self.replayed],
            "hours": [hour_label(h) for h in self.hours],
            "starts": {str(p): start for p, start in sorted(self.starts.items())},
            "now": self.now.isoformat(),
            "first_instant": self.first_instant.isoformat(),
            "shards": self.shards,
            "slices": self.slices,
            "token": self.token,
        }

    @classmethod
    def from_json(cls, data: dict) -> LandingPlan:
        return cls(
            topic=data["topic"],
            first_hour=parse_hour_label(data["first_hour"]),
            replayed=[parse_hour_label(h) for h in data["replayed"]],
            hours=[parse_hour_label(h) for h in data["hours"]],
            starts={int(p): start for p, start in data["starts"].items()},
            now=datetime.fromisoformat(data["now"]),
            first_instant=datetime.fromisoformat(data["first_instant"]),
            shards=data["shards"],
            slices=data.get("slices", 0),
            token=data["token"],
        )

    @classmethod
    def read(cls, lake: Lake, first_hour: datetime, token: str) -> LandingPlan:
        return cls.from_json(lake.read_json(landing_plan_path(first_hour, token)))


def shard_partitions(partitions: Iterable[int], shard: int, shards: int) -> list[int]:
    """The Kafka partitions of shard `shard` of `shards`: those with `p mod shards == shard`."""
    return sorted(p for p in partitions if p % shards == shard)


def land_hours(
    event_log: EventLog,
    lake: Lake,
    hours: list[datetime],
    *,
    now: datetime,
    first_instant: datetime,
) -> list[Manifest]:
    """Land consecutive ingest `hours` in one pass over the log and return their manifests:
    plan, the one shard, commit, in this process (the fan-out runs the same three as steps)."""
    plan = plan_landing(event_log, lake, hours, now=now, first_instant=first_instant)
    land_shard(event_log, lake, plan, 0)
    return commit_landing(event_log, lake, plan)


def plan_landing(
    event_log: EventLog,
    lake: Lake,
    hours: list[datetime],
    *,
    now: datetime,
    first_instant: datetime,
    shards: int = 1,
    token: str | None = None,
) -> LandingPlan:
    """Check `hours`, re-land the recorded ones from their recorded ranges (same bytes), and
    plan the fresh ones: each Kafka partition starts where the previous hour's manifest ended
    (the log's beginning for a partition it does not name). The plan is written to the lake.

    New hours must follow the last recorded one and must have closed before `now`.
    `first_instant` is the start of the first partition: events dated before it are quarantined.
    """
    hours = sorted(hours)
    if any(b - a != HOUR for a, b in zip(hours, hours[1:], strict=False)):
        raise ValueError(f"ingest hours must be consecutive, got {[hour_label(h) for h in hours]}")
    ledger = Ledger(lake)
    known_hours = set(ledger.recorded_hours())
    if hours[-1] + HOUR > now and hours[-1] not in known_hours:
        raise ValueError(
            f"ingest hour {hour_label(hours[-1])} has not closed yet (now {now.isoformat()})"
        )
    replay = [h for h in hours if h in known_hours]
    fresh = [h for h in hours if h not in known_hours]
    if replay and fresh and max(replay) > min(fresh):
        raise ValueError("cannot land new hours before hours that are already recorded")
    last = max(known_hours) if known_hours else None
    if fresh and last is not None and fresh[0] != last + HOUR:
        raise ValueError(
            f"ingest hour {hour_label(fresh[0])} cannot land before "
            f"{hour_label(last + HOUR)}: land the hours in between first"
        )
    # Only the manifests this landing chains onto or replays are read.
    needed = replay + ([fresh[0] - HOUR] if fresh and fresh[0] - HOUR in known_hours else [])
    recorded = ledger.manifests(needed)
    lake.check_writable()
    if replay:
        _replay(event_log, lake, [recorded[h] for h in replay], now, first_instant)
    starts: dict[int, int] = {}
    slices: list[Manifest] = []
    if fresh:
        previous = recorded.get(fresh[0] - HOUR)
        # Slices chain onto the hour before (the first hour ever lands whole).
        slices = ledger.slices(fresh[0]) if previous else []
        starts = _starts(event_log, slices[-1] if slices else previous)
    plan = LandingPlan(
        topic=event_log.topic,
        first_hour=hours[0],
        replayed=replay,
        hours=fresh,
        starts=starts,
        now=now,
        first_instant=first_instant,
        token=token or uuid.uuid4().hex,
        shards=shards,
        slices=len(slices),
    )
    lake.write_json(landing_plan_path(plan.first_hour, plan.token), plan.to_json())
    return plan


def _starts(event_log: EventLog, previous: Manifest | None) -> dict[int, int]:
    """Where each Kafka partition goes on: where `previous` (an hour or a slice) ended, or the
    log's beginning for a partition it does not name."""
    known = previous.ends if previous else {}
    return {
        p: known[p] if p in known else event_log.beginning_offset(p) for p in event_log.partitions()
    }


def land_shard(event_log: EventLog, lake: Lake, plan: LandingPlan, shard: int) -> None:
    """Land the plan's fresh hours for the Kafka partitions of `shard` (in parallel workers),
    writing each partition's bronze files and then its per-hour results as a partial entry."""
    partitions = shard_partitions(plan.starts, shard, plan.shards)
    if not partitions:
        return
    jobs = [_Job(p, plan.starts[p], plan.hours, plan.now, plan.first_instant) for p in partitions]
    for job, hours in _land(event_log, lake, jobs):
        partial = {"partition": job.partition, "hours": hours}
        lake.write_json(partial_path(plan.first_hour, plan.token, job.partition), partial)


def _land(event_log: EventLog, lake: Lake, jobs: list[_Job]) -> Iterator[tuple[_Job, list[dict]]]:
    """Run `jobs` in parallel workers; each job with its per-hour results, in the jobs' order."""
    if not jobs:
        return
    with _pool(event_log, len(jobs), lake) as submit:
        futures = [submit(job) for job in jobs]
        for job, future in zip(jobs, futures, strict=True):
            yield job, future.result()


def land_slice(
    event_log: EventLog, lake: Lake, *, now: datetime, first_instant: datetime
) -> Manifest | None:
    """Land the open ingest hour so far as its next slice: each Kafka partition from where the
    last slice (or the previous hour) ended up to the high watermark seen, or to the hour's end.
    Returns the slice recorded, or None when there is no open hour to slice: nothing has landed
    yet (the first hour lands whole), the hour after the ledger's head has closed (the hour's
    landing lands it), or another landing recorded this slice or the hour first."""
    ledger = Ledger(lake)
    sweep_slices(lake, ledger)
    head = ledger.head()
    if head is None or head.ingest_hour + 2 * HOUR <= now:
        return None
    hour = head.ingest_hour + HOUR
    lake.check_writable()
    slices = ledger.slices(hour)
    piece = len(slices)
    # Written before any slice file: the sweep finds every hour that may hold slice files.
    lake.write_bytes(f"{slices_dir(hour)}/.open", b"")
    starts = _starts(event_log, slices[-1] if slices else head)
    jobs = [_Job(p, start, [hour], now, first_instant, piece=piece) for p, start in starts.items()]
    parts = {job.partition: hours[0] for job, hours in _land(event_log, lake, jobs)}
    manifest = _manifest(event_log.topic, hour, parts, now)
    if not ledger.record_slice(manifest, piece):
        # Another landing recorded this slice first: its ranges stand, and our files may have
        # replaced its files, so write its ranges' bytes back.
        log.warning("slice %d of %s was recorded by another landing", piece, hour_label(hour))
        _replay(event_log, lake, [ledger.slices(hour)[piece]], now, first_instant)
        return None
    if lake.exists(manifest_path(hour)):
        sweep_slices(lake, ledger)  # the hour was recorded meanwhile, without this slice
        return None
    # Kafka tools show the lag behind the slices (the hour's end is never before a slice's).
    event_log.commit(manifest.ends)
    return manifest


def sweep_slices(lake: Lake, ledger: Ledger) -> None:
    """Remove what slicing left of hours whose manifest is recorded: the slice files the
    manifest does not list (a slice recorded after the hour's landing planned, or one a crash
    left unrecorded), then the hour's slices. Derived from the lake alone: any landing's next
    run repairs a crash at any point."""
    recorded = set(ledger.recorded_hours())
    for hour in ledger.sliced_hours():
        if hour not in recorded:
            continue
        listed = {
            file
            for p, entry in ledger.manifest(hour).partitions.items()
            for part in entry.parts
            for file in (
                bronze_file(hour, p, part.slice),
                landing_quarantine_file(hour, p, part.slice),
            )
        }
        for folder in (f"bronze/{hour_dir(hour)}", f"quarantine/landing/{hour_dir(hour)}"):
            for name in lake.list(folder):
                if ".slice-" in name and f"{folder}/{name}" not in listed:
                    lake.remove(f"{folder}/{name}")
        lake.remove(slices_dir(hour))


def commit_landing(event_log: EventLog, lake: Lake, plan: LandingPlan) -> list[Manifest]:
    """Record the plan's fresh hours from the partial entries of every Kafka partition: each
    hour's manifest last and exclusive, then the consumer group's offsets. Returns the replayed
    and the recorded manifests, oldest first."""
    ledger = Ledger(lake)
    manifests = [ledger.manifest(h) for h in plan.replayed]
    if plan.hours:
        manifests += _record(event_log, lake, ledger, plan, _partials(lake, plan))
        event_log.commit(manifests[-1].ends)
        sweep_slices(lake, ledger)
    lake.remove(partials_dir(plan.first_hour, plan.token))
    return manifests


def _partials(lake: Lake, plan: LandingPlan) -> dict[int, list[dict]]:
    """Each partition's per-hour results, read at once; a missing entry fails the commit
    (nothing is recorded: the next run of these hours lands them again)."""
    paths = {p: partial_path(plan.first_hour, plan.token, p) for p in sorted(plan.starts)}
    try:
        read = lake.read_jsons(list(paths.values()))
    except FileNotFoundError:
        partition = next(p for p, path in paths.items() if not lake.exists(path))
        raise RuntimeError(
            f"{paths[partition]} is missing: the shard landing partition {partition} failed"
        ) from None
    return {p: results["hours"] for p, results in zip(paths, read, strict=True)}


def _record(
    event_log: EventLog,
    lake: Lake,
    ledger: Ledger,
    plan: LandingPlan,
    results: dict[int, list[dict]],
) -> list[Manifest]:
    built: list[tuple[Manifest, bool]] = []
    for index, hour in enumerate(plan.hours):
        parts = {p: per_hour[index] for p, per_hour in results.items()}
        owed = plan.slices if index == 0 else 0
        slices = ledger.slices(hour)[:owed] if owed else []
        # Slices are swept only once their hour is recorded: fewer than planned means another
        # landing recorded it.
        built.append((_manifest(plan.topic, hour, parts, plan.now, slices), len(slices) == owed))
    ledger.mark([manifest for manifest, _ in built])  # every hour's index and claims at once
    landed: list[Manifest] = []
    for manifest, complete in built:
        if complete and ledger.commit(manifest):  # in order, each last and exclusive
            landed.append(manifest)
            continue
        winner = ledger.manifest(manifest.ingest_hour)
        landed.append(winner)
        if winner.partitions == manifest.partitions:
            continue  # the same ranges (a retried commit): the same files, and ours chain on
        # Another landing recorded this hour first: its ranges stand. Our files of this hour may
        # have replaced its files, so write its ranges' bytes back; later hours of ours chained
        # onto ranges that were never recorded, so they are dropped.
        log.warning(
            "ingest hour %s was recorded by another landing; keeping its ranges",
            manifest.ingest_hour,
        )
        _replay(event_log, lake, [winner], plan.now, plan.first_instant)
        break
    return landed


@contextmanager
def _pool(
    event_log: EventLog, partitions: int, lake: Lake
) -> Iterator[Callable[[_Job], Future[list[dict]]]]:
    """Kafka partitions land in parallel threads of this process, a partition per core at a
    time (as fast as a thread per partition, with less memory); yields how to submit a job.

    Threads, not processes: what holds the interpreter's lock is small now (the record batches
    are decoded in C, `decode_records`), the parse and the Parquet writes run in DuckDB and
    Arrow without it, and a spawned worker's interpreter and imports cost about a CPU-second
    and its first second of wall time. A day of 208,937 records landed in 2.6-3.6 s (CPU
    4.3-5.9 s) in threads against 4.4 s (CPU 7.4 s) beside a worker process; 1M events in
    9.0-10.9 s against 12.6 s."""
    with ThreadPoolExecutor(max(1, min(partitions, os.cpu_count() or 1))) as threads:
        yield partial(threads.submit, _land_partition, event_log, lake)


def _replay(
    event_log: EventLog,
    lake: Lake,
    manifests: list[Manifest],
    now: datetime,
    first_instant: datetime,
) -> None:
    """Rewrite recorded ranges' files with the same bytes. Bronze is the copy of record: a range
    whose offsets the log no longer holds keeps its file, never a smaller one. The re-stamped
    copies found from these hours are dropped: bronze of an older version is re-landed whole."""
    jobs = []
    for manifest in manifests:
        for hour in (manifest.ingest_hour, manifest.ingest_hour + HOUR):
            lake.remove(copies_file(hour))
        for p, entry in sorted(manifest.partitions.items()):
            for part in entry.parts:  # each slice to its own file
                if part.rows == 0:
                    continue
                if event_log.beginning_offset(p) > max(part.start, part.lost_end):
                    log.warning(
                        "%s p%d: offsets %d-%d are gone from the log; bronze keeps its %d rows",
                        hour_label(manifest.ingest_hour),
                        p,
                        part.start,
                        part.end - 1,
                        part.rows,
                    )
                    continue
                jobs.append(
                    _Job(
                        p,
                        part.start,
                        [manifest.ingest_hour],
                        now,
                        first_instant,
                        recorded_end=part.end,
                        recorded_lost=(part.lost_start, part.lost_end),
                        piece=part.slice,
                    )
                )
    for _ in _land(event_log, lake, jobs):
        pass


def _manifest(
    topic: str,
    hour: datetime,
    parts: dict[int, dict],
    now: datetime,
    slices: Iterable[Manifest] = (),
) -> Manifest:
    """An hour's (or a slice's) manifest from each partition's results, after the hour's
    `slices`: each partition's range is the union of its slices' and its own."""
    earlier = [piece.to_json() for piece in slices]
    event_hours: Counter = Counter()
    quarantined: Counter = Counter()
    corrected: list[dict] = []
    for part in [*earlier, *parts.values()]:
        event_hours.update(part["event_hours"])
        quarantined.update(part["quarantined"])
        corrected.extend(part["corrected"])
    ranges = {
        p: PartitionRange.union(
            [
                *(
                    PartitionRange.from_json(e["partitions"][str(p)])
                    for e in earlier
                    if str(p) in e["partitions"]
                ),
                PartitionRange.from_json(part["range"]),
            ]
        )
        for p, part in parts.items()
    }
    return Manifest.from_json(
        {
            "ingest_hour": hour_label(hour),
            "topic": topic,
            "partitions": {str(p): r.to_json() for p, r in sorted(ranges.items())},
            "event_hours": dict(event_hours),
            "quarantined": dict(sorted(quarantined.items())),
            "corrected": sorted(corrected, key=lambda c: (c["kafka_partition"], c["kafka_offset"])),
            "future_timestamps": sum(
                part["future_timestamps"] for part in [*earlier, *parts.values()]
            ),
            "landed_at": now.isoformat(),
        }
    )
