"""Cleaning (silver): event hour E rebuilt whole from every bronze file that holds events of E.

Bronze holds each record parsed once by landing, so cleaning reads typed columns and only
deduplicates. Copies of an event share event_id and event_time, so the dedup state is one event
hour, cut into buckets of event_ids when the hour is large. The exceptions: a future-clock event
whose copies took their receive hours is settled by the small set of corrected copies that
landing recorded in its manifests, and a copy re-stamped into another hour on retry, found once
per ingest hour (`cross_hour_copies`).
"""

from __future__ import annotations

import functools
import os
import tempfile
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from clickstream_assets.landing import BRONZE_DICTIONARY, BRONZE_SCHEMA, QUARANTINE_SCHEMA
from core.contract import DEDUP_BUCKETS, EVENT_SCHEMA, UTC_US
from core.ledger import (
    CORRECTED_ARRIVALS,
    HOUR,
    STAMP_KEY,
    CleanStamp,
    Ledger,
    Manifest,
    cleaning_quarantine_file,
    copies_file,
    events_file,
    hour_label,
)
from core.scratch import scratch_directory
from resources.event_log import RECORD_SCHEMA
from resources.lake import LakeResource
from resources.lake_store import S3_CONNECTIONS, Reader

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
SILVER_DICTIONARY = [name for name in SILVER_SCHEMA.names if name in BRONZE_DICTIONARY]
"""The silver columns of few distinct values, dictionary-encoded as in bronze: trying it on
every row group's ids only to fall back costs time and saves no bytes."""
SILVER_ENCODING = {"event_id": "DELTA_LENGTH_BYTE_ARRAY"}
"""Random ids, the widest silver column: their lengths kept apart from their bytes, which zstd
then compresses in half the time and a little smaller than interleaved with lengths."""
ARRIVAL_ORDER = ["received_at", "kafka_partition", "kafka_offset"]
"""The contract's tie-break for the first received copy."""


def source_files(manifests: Iterable[Manifest], event_hour: datetime) -> list[str]:
    """The bronze files of every ingest hour whose histogram counts events of `event_hour`."""
    return [
        file
        for manifest in sorted(manifests, key=lambda m: m.ingest_hour)
        if manifest.event_hours.get(event_hour)
        for _, entry in sorted(manifest.partitions.items())
        for file in entry.files
    ]


def bronze_rows(manifests: Iterable[Manifest], event_hour: datetime) -> int:
    return sum(m.event_hours.get(event_hour, 0) for m in manifests)


def corrected_winners(manifests: Iterable[Manifest]) -> pl.DataFrame:
    """For each future-clock event, the coordinates of its first received valid copy.

    If any valid copy of an event was corrected, the first received valid copy was too (it was
    received earliest, so its clock was even further ahead), so these sets decide the winner.
    """
    arrivals = [CORRECTED_ARRIVALS.empty_table(), *(m.corrected_arrivals for m in manifests)]
    frame = _frame(pa.concat_tables(arrivals))
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
    claimed = {hour for m in manifests.values() for hour in m.claimed_hours}
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


SILVER_ORDER = ["event_time", "event_id"]
"""Silver's row order: the same rows always make the same file."""


def first_copies(
    rows: pa.Table, winners: pl.DataFrame, elsewhere: pl.DataFrame | None = None
) -> pa.Array:
    """The positions in `rows` of one valid row (no `reason`) per event_id, in `SILVER_ORDER`:
    the first received copy (earliest Kafka timestamp, then lowest partition, then lowest
    offset). A corrected event keeps only its global first copy, and an event with a valid copy
    in another event hour (a client that re-stamps on retry) is kept only where its first
    received copy is (`elsewhere`: those copies' arrival columns).

    The choice is made on the key columns alone, in Polars; the caller takes the kept rows from
    the Arrow table, a slice at a time, so the columns are never converted between Arrow and
    Polars, nor the valid rows copied out of the hour's: memory is the rows, their keys and a
    slice. The arrival order makes the first copy the first of its event_id, whatever the order
    `unique` returns; the joins run only when the hour has such events."""
    keys = _frame(rows.select(list(dict.fromkeys(["event_id", *ARRIVAL_ORDER, *SILVER_ORDER]))))
    keys = keys.with_row_index().filter(pl.Series(pc.is_null(rows["reason"])))
    kept = keys.sort(ARRIVAL_ORDER).unique("event_id", keep="first")
    if not winners.is_empty():
        joined = kept.join(winners, on="event_id", how="left", suffix="_winner")
        keep = pl.col("kafka_partition_winner").is_null() | (
            (pl.col("kafka_partition") == pl.col("kafka_partition_winner"))
            & (pl.col("kafka_offset") == pl.col("kafka_offset_winner"))
        )
        kept = joined.filter(keep)
    if elsewhere is not None and not elsewhere.is_empty():
        best = (
            elsewhere.select("event_id", *ARRIVAL_ORDER)
            .sort(ARRIVAL_ORDER)
            .unique("event_id", keep="first")
        )
        compared = kept.join(best, on="event_id", how="left", suffix="_elsewhere")
        lost = pl.col("received_at_elsewhere").is_not_null() & _earlier("_elsewhere", "")
        kept = compared.filter(~lost)
    return kept.sort(SILVER_ORDER)["index"].to_arrow()


SILVER_ROW_GROUP_ROWS = 256 * 1024
"""Silver rows taken and written at once (one row group)."""
BUCKET_ROWS = 1_200_000
"""Rows deduplicated at once, the memory budget: an hour of at most this many bronze rows (the
manifests count them before any read) is read straight into memory and pays no spill; a larger
one goes in buckets of at most about this many. Bounds cleaning's memory whatever an event
hour's size."""


def bucket_count(rows: int, bucket_rows: int = BUCKET_ROWS) -> int:
    """Dedup buckets for an hour of `rows`: a power of two, so buckets nest in DEDUP_BUCKETS."""
    count = 1
    while count * bucket_rows < rows and count < DEDUP_BUCKETS:
        count *= 2
    return count


_EVENT_COLUMNS = {
    **{name: ds.field(name) for name in EVENT_SCHEMA.names},
    "received_at": ds.field("kafka_timestamp"),
    **{name: ds.field(name) for name in ["kafka_partition", "kafka_offset", "ingest_hour"]},
}
"""A valid bronze row as cleaning reads it: the typed event and where it arrived."""
ROW_COLUMNS = {**_EVENT_COLUMNS, "reason": ds.field("reason")}
"""A bronze row of the hour, valid or not: the event columns and why it was refused, if it was
(the raw record, read only for refused rows, is most of a row group's bytes)."""
_EMPTY_ROWS = ds.dataset(BRONZE_SCHEMA.empty_table()).to_table(columns=ROW_COLUMNS)
_COPY_COLUMNS = {name: _EVENT_COLUMNS[name] for name in ["event_id", *ARRIVAL_ORDER]}
"""The arrival of a valid copy in another event hour, to compare with this hour's copies."""
COPIES_SCHEMA = pa.schema(
    [SILVER_SCHEMA.field(name) for name in ["event_id", "event_hour", *ARRIVAL_ORDER]]
)


SPILL_CHUNK_ROWS = 64 * 1024
"""Rows a spill gathers per bucket before writing them: few chunks to read back, and a small
buffer (a bucket each)."""
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
) -> Callable[[int], pa.Table]:
    """Read the rows of `files` matching `row_filter`, one of `buckets` (more than one) dedup
    buckets at a time, in memory bounded by a bucket: one streaming pass writes each bucket's
    rows to local Arrow files under `spill` (copies of an event share a bucket), and each is read
    back alone. Returns the reader of a bucket."""
    dataset = lake.dataset(files, BRONZE_SCHEMA)
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
        # Batches of a scan are small: taking rows from hundreds of chunks costs twice as much.
        min_rows_per_group=SPILL_CHUNK_ROWS,
    )
    empty = scanner.projected_schema.remove(scanner.projected_schema.get_field_index("bucket"))

    def read(bucket: int) -> pa.Table:
        directory = os.path.join(spill, str(bucket))
        if not os.path.isdir(directory):
            return empty.empty_table()
        return ds.dataset(directory, format="ipc", schema=empty).to_table()

    return read


SHARED_ROWS = BUCKET_ROWS // 4
"""Rows of shared row groups a run keeps decoded: a quarter of the memory budget, beside the hour
being cleaned."""


RowGroup = tuple[ds.ParquetFileFragment, datetime | None, datetime | None, bool, bool]
"""A bronze row group, its least and greatest event hour (None when unknown), whether every row
has that one event hour (landing writes a long run of one hour as a row group of its own), and
whether it may hold refused rows."""


def _row_group_stats(
    group: pq.RowGroupMetaData,
) -> tuple[datetime | None, datetime | None, bool, bool]:
    """A bronze row group's least and greatest event hour, whether all its rows have one, and
    whether any row was refused (a reason), from its statistics."""
    low = high = None
    one_hour, refused = False, True
    for i in range(group.num_columns):
        column = group.column(i)
        if not column.is_stats_set:
            continue
        stats = column.statistics
        if column.path_in_schema == "event_hour" and stats.has_min_max:
            no_nulls = stats.has_null_count and stats.null_count == 0
            low, high, one_hour = stats.min, stats.max, stats.min == stats.max and no_nulls
        elif column.path_in_schema == "reason" and stats.has_null_count:
            refused = stats.null_count < group.num_rows
    return low, high, one_hour, refused


def _by_hour(table: pa.Table) -> dict[datetime, pa.Table]:
    """The rows of `table` by event hour, each hour's in their order (a stable sort)."""
    table = table.take(pc.sort_indices(table["event_hour"]))
    runs = pc.run_end_encode(table["event_hour"].combine_chunks())
    hours, start = {}, 0
    for hour, end in zip(runs.values.to_pylist(), runs.run_ends.to_pylist(), strict=True):
        if hour is not None:
            hours[hour] = table.slice(start, end - start)
        start = end
    return hours


_REFUSED_COLUMNS = QUARANTINE_SCHEMA.names[1:]
"""A refused bronze row as the quarantine keeps it, raw record included (without its stage)."""


class SharedRowGroups:
    """Bronze as one run reads it, cleaning hours in turn: each file looked up (on S3) and its
    footer read once, and each row group that holds several event hours (the late events of many
    hours share row groups) decoded once, split by event hour, and kept, at most `SHARED_ROWS`
    rows of them, while another hour may need it (`_shared`); the same for the raw records of
    its refused rows. The run's valid copies (`ValidCopies`) are read through its `reader` too,
    so that on S3 a run looks each bronze file up once."""

    def __init__(self, lake: LakeResource) -> None:
        self.lake = lake
        self.reader = lake.reader()
        # On S3 a row group's read is a round trip: an hour's are sent together, in threads.
        self._reads = None if lake.local else ThreadPoolExecutor(S3_CONNECTIONS, "s3-read")
        self._pieces: dict[str, list[RowGroup]] = {}
        self._footer_locks: dict[str, threading.Lock] = {}
        self._kept: dict[tuple[str, int, bool], tuple[datetime, dict[datetime, pa.Table]]] = {}
        self._decoding: set[tuple[str, int, bool]] = set()  # by some thread, now
        self._reading: Counter[datetime] = Counter()  # the hours threads are reading, now
        self._changed = threading.Condition()  # hours of a run are cleaned two at a time

    def _row_groups(self, file: str) -> list[RowGroup]:
        """The file's row groups, each read once a run, by one thread while another hour's
        waits (the first two hours of a run read nearly the same files, in the same order):
        converting a row group's statistics to Python costs more than most hours' rows."""
        if file not in self._pieces:
            with self._changed:
                lock = self._footer_locks.setdefault(file, threading.Lock())
            with lock:
                if file not in self._pieces:
                    dataset = self.lake.dataset([file], BRONZE_SCHEMA, self.reader)
                    (whole,) = dataset.get_fragments()
                    self._pieces[file] = [
                        (piece, *_row_group_stats(piece.row_groups[0].metadata))
                        for piece in whole.split_by_row_group()
                    ]
        return self._pieces[file]

    def prepare(self, files: Iterable[str]) -> None:
        """On S3, list the row groups of the files a run's hours read, all at once: each file's
        lookup and footer read are round trips, which its hours' reads would take in turn."""
        if self._reads is not None:
            list(self._reads.map(self._row_groups, sorted(files)))

    def read(self, files: list[str], event_hour: datetime) -> pa.Table:
        """The rows of `event_hour` in `files` (`ROW_COLUMNS`), in file and row order."""
        return pa.concat_tables([_EMPTY_ROWS, *self._of_hour(files, event_hour, refused=False)])

    def refused(self, files: list[str], event_hour: datetime) -> list[pa.Table]:
        """The refused rows of `event_hour` in `files` with their raw records, in file and row
        order: the raw records, most of bronze's bytes, decoded once a run."""
        return self._of_hour(files, event_hour, refused=True)

    def _decode(self, piece: ds.ParquetFileFragment, refused: bool) -> pa.Table:
        if refused:
            columns, row_filter = _REFUSED_COLUMNS, ds.field("reason").is_valid()
        else:
            columns, row_filter = ROW_COLUMNS, None
        scan = ds.Scanner.from_fragment(
            piece, schema=BRONZE_SCHEMA, columns=columns, filter=row_filter
        )
        return scan.to_table()

    def _of_hour(self, files: list[str], event_hour: datetime, refused: bool) -> list[pa.Table]:
        """A row group of several hours that another thread is decoding is left for last: by
        then it is kept, and this thread has decoded others meanwhile (the first two hours of a
        run both read nearly every late-event row group of the day, in the same order)."""
        with self._changed:
            self._reading[event_hour] += 1
            oldest = min(self._reading)
            self._kept = {key: kept for key, kept in self._kept.items() if kept[0] >= oldest}
        try:
            parts: list[pa.Table | Future[pa.Table] | None] = []
            later: list[tuple[int, tuple[str, int, bool], RowGroup]] = []
            for file in files:
                for index, group in enumerate(self._row_groups(file)):
                    piece, low, high, one_hour, has_refused = group
                    if low is not None and not low <= event_hour <= high:
                        continue
                    if refused and not has_refused:
                        continue
                    if one_hour:
                        read = self._reads
                        parts.append(
                            self._decode(piece, refused)
                            if read is None
                            else read.submit(self._decode, piece, refused)
                        )
                        continue
                    key = (file, index, refused)
                    hours = self._shared(key, group, event_hour, refused, wait=False)
                    if hours is None:
                        later.append((len(parts), key, group))
                    parts.append(None if hours is None else hours.get(event_hour))
            for position, key, group in later:
                hours = self._shared(key, group, event_hour, refused, wait=True)
                parts[position] = hours.get(event_hour)
            return [p.result() if isinstance(p, Future) else p for p in parts if p is not None]
        finally:
            with self._changed:
                self._reading[event_hour] -= 1
                if not self._reading[event_hour]:
                    del self._reading[event_hour]

    def _shared(
        self,
        key: tuple[str, int, bool],
        group: RowGroup,
        event_hour: datetime,
        refused: bool,
        *,
        wait: bool,
    ) -> dict[datetime, pa.Table] | None:
        """The rows of a row group of several hours by hour: kept, or decoded now; None without
        `wait` while another thread decodes it. Kept, within `SHARED_ROWS`, while another hour
        of its span is to be read: a later hour, or an earlier one another thread reads now."""
        piece, low, high = group[:3]
        with self._changed:
            while key not in self._kept and key in self._decoding:
                if not wait:
                    return None
                self._changed.wait()
            if key in self._kept:
                return self._kept[key][1]
            self._decoding.add(key)
        hours: dict[datetime, pa.Table] = {}
        try:
            hours = _by_hour(self._decode(piece, refused))
        finally:
            with self._changed:
                self._decoding.discard(key)
                rows = sum(t.num_rows for t in hours.values())
                held = sum(t.num_rows for k in self._kept.values() for t in k[1].values())
                needed = high is not None and (
                    high > event_hour or any(low <= h < event_hour for h in self._reading)
                )
                if hours and needed and rows <= SHARED_ROWS - held:
                    self._kept[key] = (high, hours)
                self._changed.notify_all()
        return hours


@dataclass
class CleaningRun:
    """What a run cleaning many hours reads once: its ledger, which remembers manifests and
    listings, the hours recorded when it began, the bronze row groups its hours share, and the
    re-stamped copies found per ingest hour (`cross_hour_copies`), computed before its hours are
    cleaned (`clean_hours`)."""

    ledger: Ledger
    recorded: set[datetime]
    shared: SharedRowGroups
    copies: dict[datetime, pl.DataFrame] = field(default_factory=dict)

    @classmethod
    def of(cls, lake: LakeResource) -> CleaningRun:
        ledger = Ledger(lake, remember=True)
        return cls(ledger, set(ledger.recorded_hours()), SharedRowGroups(lake))


def _read_once(table: pa.Table) -> Callable[[int], pa.Table]:
    """The reader of an hour read whole: its one bucket."""
    return lambda _bucket: table


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


def _pairs(rows: pa.Table) -> set[tuple[datetime, int]]:
    """The (ingest hour, Kafka partition) of `rows`: which bronze files hold them."""
    pairs = rows.select(["ingest_hour", "kafka_partition"]).group_by(
        ["ingest_hour", "kafka_partition"]
    )
    found = pairs.aggregate([]).to_pylist()
    return {(row["ingest_hour"], row["kafka_partition"]) for row in found}


def _files_of(manifests: dict[datetime, Manifest], pair: tuple[datetime, int]) -> list[str]:
    ingest_hour, partition = pair
    return manifests[ingest_hour].partitions[partition].files


def _invalid_rows(
    lake: LakeResource, files: list[str], event_hour: datetime, shared: SharedRowGroups | None
) -> Iterator[pl.DataFrame]:
    """The refused rows of `event_hour` in `files` with their raw records, in chunks, in file
    and row order: from the `shared` row groups of an hour read whole, else (an hour read in
    buckets) a scan of the files."""
    if not files:
        return
    if shared is not None:
        tables = shared.refused(files, event_hour)
        batches = (batch for table in tables for batch in table.to_batches())
    else:
        refused = ds.field("reason").is_valid()
        this_hour = ds.field("event_hour") == pa.scalar(event_hour, UTC_US)
        scanner = lake.dataset(files, BRONZE_SCHEMA).scanner(
            columns=_REFUSED_COLUMNS, filter=this_hour & refused, **SCAN_READAHEAD
        )
        batches = scanner.to_batches()
    for chunk in _chunks(batches, QUARANTINE_CHUNK_ROWS):
        yield _frame(chunk)


def _frame(table: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


def _check_typed(rows: pa.Table, refused: pa.ChunkedArray) -> None:
    """Bronze landed before it kept typed events reads as valid rows without types (a column a
    file lacks reads as nulls): refuse it, by name."""
    untyped = pc.and_not(pc.is_null(rows["event_type"]), refused)
    if pc.any(untyped).as_py():
        hours = sorted(
            {hour_label(h) for h in pc.unique(rows["ingest_hour"].filter(untyped)).to_pylist()}
        )
        raise ValueError(
            f"bronze of ingest hours {', '.join(hours)} was landed before bronze kept typed "
            "events: re-land those hours (a backfill of raw_events; the same ranges are read "
            "again) and clean again"
        )


_VALID_TYPED = ds.field("reason").is_null() & ds.field("event_type").is_valid()
"""A valid row (landing left the event hour null where it quarantined); bronze landed before it
kept typed events has no reason to tell, so its rows never count as valid copies."""


def restamped(copies: pl.DataFrame) -> pl.DataFrame:
    """The rows of `copies` (valid copies with their event hours) whose event_id has copies in
    more than one event hour. The ids are hashed and sorted, and a hash whose neighbours in that
    order differ in event hour marks candidates (a collision only adds some), which their ids
    then decide: a sort of integers instead of grouping every id of two ingest hours (about half
    their rows lie outside the most common event hour), in half the time on the 4M-event day."""
    if copies.is_empty():
        return copies
    hashed = copies.with_columns(pl.col("event_id").hash().alias("id_hash"))
    ordered = hashed.select("id_hash", "event_hour").sort("id_hash")
    varies = (pl.col("id_hash") == pl.col("id_hash").shift(1)) & (
        pl.col("event_hour") != pl.col("event_hour").shift(1)
    )
    marked = ordered.filter(varies)["id_hash"]
    candidates = hashed.filter(pl.col("id_hash").is_in(marked.implode())).drop("id_hash")
    return candidates.filter(pl.col("event_hour").n_unique().over("event_id") > 1)


_HOUR_COPY_COLUMNS = {**_COPY_COLUMNS, "event_hour": ds.field("event_hour")}
_VALID_COPY = _VALID_TYPED & ds.field("event_hour").is_valid()


def _valid_copies(lake: LakeResource, manifest: Manifest, reader: Reader | None = None) -> pa.Table:
    """Every valid copy in one ingest hour's bronze: where it arrived and its event hour."""
    files = [file for entry in manifest.partitions.values() for file in entry.files]
    return lake.dataset(files, BRONZE_SCHEMA, reader).to_table(
        columns=_HOUR_COPY_COLUMNS, filter=_VALID_COPY
    )


class ValidCopies:
    """The valid copies of ingest hours (`_valid_copies`) for the re-stamped copies a run finds:
    the frames of an hour and of the hour after both read it (`cross_hour_copies`), so an hour
    is read once and kept until the other of those `frames` is done with it."""

    def __init__(
        self, lake: LakeResource, frames: Iterable[datetime], reader: Reader | None = None
    ) -> None:
        self.lake, self.reader = lake, reader
        self._users = Counter(hour for frame in frames for hour in (frame - HOUR, frame))
        self._kept: dict[datetime, pa.Table] = {}
        self._reading: dict[datetime, threading.Lock] = {}
        self._lock = threading.Lock()

    def read(self, manifest: Manifest) -> pa.Table:
        hour = manifest.ingest_hour
        with self._lock:
            reading = self._reading.setdefault(hour, threading.Lock())
        with reading:  # the other frame waits for this read rather than reading too
            with self._lock:
                kept = self._kept.get(hour)
            if kept is not None:
                return kept
            table = _valid_copies(self.lake, manifest, self.reader)
            with self._lock:
                if self._users[hour] > 1:  # the reading frame, and another still to come
                    self._kept[hour] = table
            return table

    def done(self, frame: datetime) -> None:
        """The frame of `frame` is computed (or was read): drop what no other frame reads."""
        with self._lock:
            for hour in (frame - HOUR, frame):
                self._users[hour] -= 1
                if self._users[hour] <= 0:
                    self._kept.pop(hour, None)
                    self._reading.pop(hour, None)


COPY_ROWS = 2
"""A frame's rows per row of the memory budget: a copy is 5 of the 22 columns the budget's rows
hold (`ROW_COLUMNS`), so two ingest hours of up to twice the budget's rows are read whole (on
the 8M-event day, its peak hours' frames, 1.2-1.5M rows, spilled in buckets: its copies took
3.3-3.7 s, now 1.9-2.2 s, at a lower peak, 1,137 -> ~945 MiB)."""


def cross_hour_copies(
    lake: LakeResource,
    ingest_hour: datetime,
    manifests: dict[datetime, Manifest],
    spill: str,
    valid: ValidCopies | None = None,
    bucket_rows: int = BUCKET_ROWS,
) -> pl.DataFrame:
    """Every valid copy, in `ingest_hour` and the hour before (their `manifests`), of an event
    whose valid copies there fall in more than one event hour: a client that re-stamps
    `event_time` on retry. Read whole up to `COPY_ROWS` times the memory budget, else one dedup
    bucket at a time; written to the lake and returned.

    Copies received in the same or adjacent ingest hours are matched, so an event hour finds its
    re-stamped copies in the frames of its input hours and the hours after them, and never
    reads the id columns of the hours around it. Both hours' bronze is final once recorded, so
    the frame is computed once, by the first cleaning that needs it; re-landing drops it. Two
    hours read whole are read an hour at a time, through a run's `valid` copies if it has them
    (each hour is read by two frames)."""
    files = [file for m in manifests.values() for e in m.partitions.values() for file in e.files]
    copies = _frame(COPIES_SCHEMA.empty_table())
    buckets = bucket_count(sum(m.rows for m in manifests.values()), COPY_ROWS * bucket_rows)
    if files and buckets == 1:
        read = valid.read if valid is not None else functools.partial(_valid_copies, lake)
        both = pa.concat_tables([read(manifest) for manifest in manifests.values()])
        copies = pl.concat([copies, restamped(_frame(both)).select(COPIES_SCHEMA.names)])
    elif files:
        with tempfile.TemporaryDirectory(prefix="copies-", dir=spill) as directory:
            read = _in_buckets(lake, files, _VALID_COPY, _HOUR_COPY_COLUMNS, buckets, directory)
            found = [restamped(_frame(read(b))).select(COPIES_SCHEMA.names) for b in range(buckets)]
        copies = pl.concat([copies, *found])
    copies = copies.sort(["event_id", *ARRIVAL_ORDER])
    lake.write_parquet(copies_file(ingest_hour), copies.to_arrow().cast(COPIES_SCHEMA))
    return copies


def near_hours(inputs: Iterable[datetime], recorded: set[datetime]) -> list[datetime]:
    """The ingest hours whose re-stamped copies an event hour built from `inputs` must see:
    its input hours and the hours after them (each frame pairs an hour with the one before)."""
    return sorted(h for h in {*inputs, *(i + HOUR for i in inputs)} if h in recorded)


def copies_of(
    lake: LakeResource,
    ledger: Ledger,
    ingest_hour: datetime,
    recorded: set[datetime],
    spill: str,
    valid: ValidCopies | None = None,
    bucket_rows: int = BUCKET_ROWS,
) -> pl.DataFrame:
    """The re-stamped copies of `ingest_hour` and the hour before: the lake's frame, else
    computed from their bronze (`cross_hour_copies`, which writes it)."""
    if lake.exists(copies_file(ingest_hour)):
        return _frame(lake.read_parquet([copies_file(ingest_hour)], schema=COPIES_SCHEMA))
    adjacent = ledger.manifests({h for h in (ingest_hour - HOUR, ingest_hour) if h in recorded})
    return cross_hour_copies(lake, ingest_hour, adjacent, spill, valid, bucket_rows)


def _copies_near(
    lake: LakeResource,
    ledger: Ledger,
    inputs: Iterable[datetime],
    recorded: set[datetime],
    spill: str,
    found: dict[datetime, pl.DataFrame],
    bucket_rows: int,
) -> pl.DataFrame:
    """The re-stamped copies an event hour built from `inputs` must see (`near_hours`), each
    ingest hour's frame read or computed once into `found`."""
    near = near_hours(inputs, recorded)
    for h in near:
        if h not in found:
            found[h] = copies_of(lake, ledger, h, recorded, spill, None, bucket_rows)
    return pl.concat([_frame(COPIES_SCHEMA.empty_table()), *(found[h] for h in near)])


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
    run: CleaningRun | None = None,
    bucket_rows: int = BUCKET_ROWS,
) -> Cleaned:
    """Rebuild silver and quarantine for `event_hour` from what the ledger holds now, one dedup
    bucket at a time; the files carry the stamp of what they were built from and are written
    whole or not at all, quarantine first and silver last.

    A run that finds silver already built from more ingest hours than it read (a newer run
    finished first) leaves that silver alone. A run over many hours passes its `run`: what it
    reads once for all of them (the hours recorded when it began among them)."""
    ledger = run.ledger if run is not None else Ledger(lake)
    if run is not None:
        recorded = run.recorded
    recorded = recorded if recorded is not None else set(ledger.recorded_hours())
    inputs = ledger.inputs(event_hour, recorded)
    manifests = ledger.manifests(inputs)
    winners = winners_for(ledger, manifests, recorded)
    files = source_files(manifests.values(), event_hour)
    expected = bronze_rows(manifests.values(), event_hour)
    buckets = bucket_count(expected, bucket_rows)
    counts = Counter()
    reasons: Counter = Counter()
    sources: set[datetime] = set()
    held: set[tuple[datetime, int]] = set()  # (ingest hour, Kafka partition) of invalid rows
    silver_path, quarantine_path = events_file(event_hour), cleaning_quarantine_file(event_hour)
    this_hour = ds.field("event_hour") == pa.scalar(event_hour, UTC_US)
    # An hour read whole reads it by row group, as a run does: a row group of this hour alone
    # is decoded without the event-hour filter, and the raw records of refused rows are decoded
    # once for the quarantine.
    shared = (run.shared if run is not None else SharedRowGroups(lake)) if buckets == 1 else None

    def newest() -> bool:
        current = ledger.clean_stamp(event_hour)
        return current is None or not set(current.inputs) > set(inputs)

    with (
        scratch_directory("clean") as spill,
        lake.parquet_writer(
            silver_path,
            SILVER_SCHEMA,
            keep=newest,
            statistics=SILVER_STATISTICS,
            dictionary=SILVER_DICTIONARY,
            encoding=SILVER_ENCODING,
        ) as silver_writer,
        lake.parquet_writer(quarantine_path, QUARANTINE_SCHEMA, keep=newest) as quarantine_writer,
    ):
        if files:
            # One scan reads the hour's valid and invalid rows (their cheap columns) together.
            if shared is not None:
                rows_of = _read_once(shared.read(files, event_hour))
            else:
                rows_of = _in_buckets(
                    lake, files, this_hour, ROW_COLUMNS, buckets, f"{spill}/events"
                )
            found = run.copies if run is not None else {}
            copies = _copies_near(lake, ledger, inputs, recorded, spill, found, bucket_rows)
            copies = copies.filter(pl.col("event_hour") != event_hour)
        # One row group is written (in a thread; both release the GIL) while the next is taken
        # and the next bucket read: a core each. Never more than one write in flight.
        with ThreadPoolExecutor(max_workers=1) as writes:
            writing: Future | None = None
            for bucket in range(buckets if files else 0):
                rows = rows_of(bucket)
                refused = pc.is_valid(rows["reason"])
                held.update(_pairs(rows.select(["ingest_hour", "kafka_partition"]).filter(refused)))
                sources.update(pc.unique(rows["ingest_hour"]).to_pylist())
                _check_typed(rows, refused)
                kept = first_copies(rows, winners, copies)
                events = rows.select(SILVER_SCHEMA.names)
                for start in range(0, len(kept), SILVER_ROW_GROUP_ROWS):
                    clean = events.take(kept.slice(start, SILVER_ROW_GROUP_ROWS))
                    late = pc.greater(clean["ingest_hour"], pa.scalar(event_hour, UTC_US))
                    counts["clock_corrected"] += pc.sum(
                        clean["clock_corrected"], min_count=0
                    ).as_py()
                    counts["late_events"] += pc.sum(late, min_count=0).as_py()
                    if writing is not None:
                        writing.result()
                    writing = writes.submit(silver_writer.write_table, clean.cast(SILVER_SCHEMA))
                counts["events"] += len(kept)
                counts["duplicates"] += rows["reason"].null_count - len(kept)
                del rows, refused, events, kept  # not in memory while the next is read
            if writing is not None:
                writing.result()
        # Invalid rows need no dedup: streamed to quarantine as received, in ledger order, with
        # their raw records read only from the files that hold some.
        holding = {file for pair in held for file in _files_of(manifests, pair)}
        for invalid in _invalid_rows(lake, [f for f in files if f in holding], event_hour, shared):
            quarantine_writer.write_table(
                invalid.with_columns(stage=pl.lit("cleaning"))
                .select(QUARANTINE_SCHEMA.names)
                .to_arrow()
                .cast(QUARANTINE_SCHEMA)
            )
            counts["quarantined"] += invalid.height
            reasons.update(dict(invalid.group_by("reason").len().iter_rows()))
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


CLEANING_THREADS = 2
"""Hours a run cleans at once. Most of an hour's work releases the GIL (Arrow, Polars, the
Parquet writer), and a run's hours are often small: the demo's are ~37k events, so one hour at a
time leaves a core idle."""


def clean_hours(
    lake: LakeResource,
    hours: Iterable[datetime],
    *,
    first_instant: datetime,
    now: datetime,
    run: CleaningRun,
    bucket_rows: int = BUCKET_ROWS,
) -> Iterator[Cleaned]:
    """`clean_hour` for each of `hours` in one run, yielded in their order. First the
    re-stamped copies every hour needs, an ingest hour at a time in `CLEANING_THREADS` threads
    (the first hour would otherwise compute nearly all of them alone: its late events come from
    every later ingest hour), each hour's valid copies read once (`ValidCopies`). Then up to
    `CLEANING_THREADS` hours are cleaned at once while their bronze rows together fit the memory
    budget (`bucket_rows`); an hour at least that large is cleaned alone."""
    hours = list(hours)
    inputs = {hour: run.ledger.inputs(hour, run.recorded) for hour in hours}
    manifests = run.ledger.manifests(set().union(*inputs.values()))

    def rows(hour: datetime) -> int:
        return min(bronze_rows([manifests[i] for i in inputs[hour]], hour), bucket_rows)

    with ThreadPoolExecutor(CLEANING_THREADS, thread_name_prefix="clean-hour") as pool:
        near = [h for h in near_hours(manifests.keys(), run.recorded) if h not in run.copies]
        run.shared.prepare(
            {
                file
                for hour in hours
                for file in source_files([manifests[i] for i in inputs[hour]], hour)
            }
        )
        valid = ValidCopies(lake, near, run.shared.reader)

        def frame(hour: datetime, spill: str) -> pl.DataFrame:
            try:
                return copies_of(lake, run.ledger, hour, run.recorded, spill, valid, bucket_rows)
            finally:
                valid.done(hour)

        with scratch_directory("copies") as spill:
            computed = pool.map(functools.partial(frame, spill=spill), near)
            run.copies.update(zip(near, computed, strict=True))
        pending: deque[tuple[int, Future[Cleaned]]] = deque()
        for hour in hours:
            size = rows(hour)
            while pending and (
                len(pending) == CLEANING_THREADS
                or size + sum(held for held, _ in pending) > bucket_rows
            ):
                yield pending.popleft()[1].result()
            cleaning = pool.submit(
                clean_hour,
                lake,
                hour,
                first_instant=first_instant,
                now=now,
                run=run,
                bucket_rows=bucket_rows,
            )
            pending.append((size, cleaning))
        while pending:
            yield pending.popleft()[1].result()
