"""Asset checks that prove the counts reconcile, stage by stage; each is a thin shell over a pure
function that returns the problems it found (an empty list passes).

The checks are partitioned like their assets and blocking, so a failure stops what is downstream.
A run over a partition range (single-run backfill policy) executes each check once for the whole
range: the check then iterates the run's partitions and reports failures per partition in its
metadata. Dagster records that evaluation without a partition (`AssetCheckResult` cannot name
one), so per-partition check status in the UI comes only from single-partition runs.
"""

import functools
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta

import polars as pl
import pyarrow as pa
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetKey,
    MetadataValue,
    asset_check,
)
from dagster_duckdb import DuckDBResource

from clickstream_assets.assets import events, hours_of, raw_events
from clickstream_assets.cleaning import CLEANING_THREADS, bronze_rows
from core.ledger import (
    HOUR,
    Ledger,
    Manifest,
    cleaning_quarantine_file,
    day_hours,
    events_file,
    hour_label,
)
from partitions import event_days, event_hours, ingest_hours
from resources.lake import LakeResource

DAILY_ACTIVE_USERS = AssetKey("fct_daily_active_users")


# --- pure functions -------------------------------------------------------------------------


def offset_range_problems(
    hour: datetime,
    manifests: Mapping[datetime, Manifest],
    *,
    first_recorded: datetime | None = None,
) -> list[str]:
    """Why `hour`'s recorded ranges do not chain onto the previous hour's, if they do not.

    Each Kafka partition's range must start where the previous hour's ended (no gap, no
    overlap) and have start <= end; a partition the previous hour did not know (the first hour,
    or a partition added since) may start anywhere, at its log's beginning. Every partition of
    the previous hour must go on, and the ledger itself must have no missing hour.
    """
    manifest = manifests.get(hour)
    label = hour_label(hour)
    if manifest is None:
        return [f"{label}: no manifest"]
    problems = []
    previous = manifests.get(hour - HOUR)
    first = first_recorded or min(manifests)
    if previous is None and first < hour:
        problems.append(f"{label}: the ledger has no manifest for the hour before")
    before = previous.ends if previous else {}
    for p, entry in sorted(manifest.partitions.items()):
        if entry.start > entry.end:
            problems.append(f"{label} p{p}: start {entry.start} > end {entry.end}")
        if p in before and entry.start != before[p]:
            kind = "gap" if entry.start > before[p] else "overlap"
            problems.append(
                f"{label} p{p}: {kind}, starts at {entry.start} but the hour "
                f"before ended at {before[p]}"
            )
    for p in sorted(set(before) - set(manifest.partitions)):
        problems.append(f"{label} p{p}: partition missing, it was landed the hour before")
    return problems


def lost_offset_problems(manifest: Manifest) -> list[str]:
    """The offsets retention deleted before they landed: events lost, named so someone can
    look for them upstream."""
    return [
        f"{hour_label(manifest.ingest_hour)} p{p}: offsets {first}-{end - 1} "
        f"({end - first} records) were deleted from the log before they landed"
        for p, (first, end) in sorted(manifest.lost_ranges().items())
    ]


def bronze_row_problems(manifest: Manifest, file_rows: Mapping[int, int | None]) -> list[str]:
    """Why the bronze files of an ingest hour do not hold exactly the records of their ranges.

    A range is offsets, not a count: compaction and transaction markers leave offsets without a
    record, so the manifest records the rows that existed. `file_rows` maps each Kafka
    partition to the row count of its bronze files (None: no file).
    """
    problems = []
    label = hour_label(manifest.ingest_hour)
    for p, entry in sorted(manifest.partitions.items()):
        rows = file_rows.get(p)
        if entry.rows > entry.end - entry.start - entry.lost:
            problems.append(
                f"{label} p{p}: {entry.rows} rows recorded for {entry.end - entry.start} offsets"
            )
        if rows is None and entry.rows:
            problems.append(f"{label} p{p}: range holds {entry.rows} records but no bronze file")
        elif (rows or 0) != entry.rows:
            problems.append(f"{label} p{p}: bronze file has {rows} rows, range holds {entry.rows}")
    return problems


def event_hour_problems(
    label: str,
    *,
    histogram_rows: int,
    silver_rows: int | None,
    quarantined_rows: int | None,
    duplicates: int | None,
    silver_ids_unique: bool,
) -> list[str]:
    """Why an event hour's silver, quarantine and duplicates do not add up to its bronze rows.

    `histogram_rows` is what the landings counted for the hour (readable rows); `duplicates` is
    what cleaning reported for it, or None when unknown, in which case only the bound
    silver + quarantine <= bronze is checked.
    """
    if silver_rows is None or quarantined_rows is None:
        return [f"{label}: silver or cleaning quarantine file missing"]
    problems = []
    if not silver_ids_unique:
        problems.append(f"{label}: silver holds an event_id more than once")
    accounted = silver_rows + quarantined_rows
    if duplicates is None:
        if accounted > histogram_rows:
            problems.append(
                f"{label}: silver {silver_rows} + quarantined {quarantined_rows} exceeds the "
                f"{histogram_rows} bronze rows landed for the hour"
            )
    elif accounted + duplicates != histogram_rows or duplicates < 0:
        problems.append(
            f"{label}: silver {silver_rows} + quarantined {quarantined_rows} + duplicates "
            f"{duplicates} != {histogram_rows} bronze rows landed for the hour"
        )
    return problems


def daily_events_problems(
    day: str, *, daily_events: int | None, hourly_events: int, silver_rows: int
) -> list[str]:
    """Why a day's DAU events, the sum of its hourly events and its silver rows differ (a day
    without a valid event has no row)."""
    if daily_events is None:
        if hourly_events == silver_rows == 0:
            return []
        return [f"{day}: no fct_daily_active_users row"]
    if daily_events == hourly_events == silver_rows:
        return []
    return [
        f"{day}: fct_daily_active_users.events {daily_events}, sum of fct_hourly_events.events "
        f"{hourly_events}, silver rows {silver_rows}"
    ]


def ids_unique(ids: pa.ChunkedArray) -> bool:
    """Whether every id is present and none repeats. Polars hashes the strings (on every core)
    several times faster than Arrow's count_distinct: 0.25 s against 2.3 s for 4M ids."""
    series = pl.Series(ids)
    return series.null_count() == 0 and series.n_unique() == len(series)


# --- lake and warehouse readers ---------------------------------------------------------------


def parquet_rows(lake: LakeResource, relatives: list[str]) -> list[int | None]:
    """Row counts from the Parquet footers (cheap: no data read; all read at once, on S3 in one
    round trip), None where there is no file."""
    return [None if footer is None else footer.num_rows for footer in lake.footers(relatives)]


def _silver_ids(lake: LakeResource, hour: datetime) -> tuple[int | None, bool]:
    """The event hour's silver rows (None without a file) and whether its ids are unique."""
    (rows,) = parquet_rows(lake, [events_file(hour)])
    if not rows:
        return rows, True
    ids = lake.read_parquet([events_file(hour)], columns=["event_id"]).column("event_id")
    return rows, ids_unique(ids)


def partition_rows(lake: LakeResource, manifests: list[Manifest]) -> list[dict[int, int | None]]:
    """Per manifest, the rows of each Kafka partition's bronze files (a range landed in slices
    has a file each), None where one is missing: every file's footer read at once."""
    files = [f for m in manifests for entry in m.partitions.values() for f in entry.files]
    counted = dict(zip(files, parquet_rows(lake, files), strict=True))

    def rows(files: list[str]) -> int | None:
        found = [counted[file] for file in files]
        return None if not found or None in found else sum(found)

    return [{p: rows(entry.files) for p, entry in m.partitions.items()} for m in manifests]


def _ledger(lake: LakeResource, hours: list[datetime]) -> tuple[dict, datetime | None]:
    """The manifests of `hours` and of the hour before each, and the ledger's first hour: all
    that the landing checks need, without reading the whole history."""
    ledger = Ledger(lake)
    recorded = ledger.recorded_hours()
    wanted = set(recorded) & ({h for h in hours} | {h - HOUR for h in hours})
    return ledger.manifests(wanted), recorded[0] if recorded else None


def _result(problems: list[str], checked: list[str]) -> AssetCheckResult:
    return AssetCheckResult(
        passed=not problems,
        metadata={
            "partitions_checked": MetadataValue.int(len(checked)),
            "first": MetadataValue.text(checked[0] if checked else ""),
            "last": MetadataValue.text(checked[-1] if checked else ""),
            "problems": MetadataValue.json(problems[:100]),
        },
    )


# --- checks -----------------------------------------------------------------------------------


@asset_check(asset=raw_events, partitions_def=ingest_hours, blocking=True)
def offset_ranges_chain(context: AssetCheckExecutionContext, lake: LakeResource):
    """Each ingest hour's offset ranges start where the hour before ended: no gap, no overlap."""
    hours = hours_of(context)
    manifests, first = _ledger(lake, hours)
    problems = [
        p for hour in hours for p in offset_range_problems(hour, manifests, first_recorded=first)
    ]
    return _result(problems, [hour_label(h) for h in hours])


@asset_check(asset=raw_events, partitions_def=ingest_hours, blocking=True)
def no_offsets_lost(context: AssetCheckExecutionContext, lake: LakeResource):
    """No offset of the hour's ranges was deleted by retention before it landed."""
    hours = hours_of(context)
    manifests, _ = _ledger(lake, hours)
    problems = [
        p for hour in hours if hour in manifests for p in lost_offset_problems(manifests[hour])
    ]
    if problems:
        context.log.error("; ".join(problems))
    return _result(problems, [hour_label(h) for h in hours])


@asset_check(asset=raw_events, partitions_def=ingest_hours, blocking=True)
def bronze_rows_match_ranges(context: AssetCheckExecutionContext, lake: LakeResource):
    """The hour's bronze files hold exactly end - start rows per Kafka partition."""
    hours = hours_of(context)
    manifests, _ = _ledger(lake, hours)
    landed = [hour for hour in hours if hour in manifests]
    counted = dict(zip(landed, partition_rows(lake, [manifests[h] for h in landed]), strict=True))
    problems = []
    for hour in hours:
        manifest = manifests.get(hour)
        if manifest is None:
            problems.append(f"{hour_label(hour)}: no manifest")
            continue
        rows = counted[hour]
        problems += bronze_row_problems(manifest, rows)
    return _result(problems, [hour_label(h) for h in hours])


@asset_check(asset=events, partitions_def=event_hours, blocking=True)
def reconciles_with_bronze(context: AssetCheckExecutionContext, lake: LakeResource):
    """Silver + quarantined + duplicates of the event hour == its bronze rows in the manifests
    it was built from (its stamp names them: the read is bounded by the hour's own inputs).
    The hours of a range share most of their inputs (late events): each manifest is read once.
    Silver's ids are read and counted as the hours were cleaned, `CLEANING_THREADS` at a time."""
    ledger = Ledger(lake, remember=True)
    hours = hours_of(context)
    problems = []
    with ThreadPoolExecutor(CLEANING_THREADS) as pool:
        silver = pool.map(functools.partial(_silver_ids, lake), hours)
        stamps = ledger.clean_stamps(hours)
        quarantined = parquet_rows(lake, [cleaning_quarantine_file(hour) for hour in hours])
        for hour, (silver_rows, unique), quarantined_rows in zip(
            hours, silver, quarantined, strict=True
        ):
            label = hour_label(hour)
            stamp = stamps.get(hour)
            if stamp is None:
                problems.append(f"{label}: no clean stamp")
                continue
            problems += event_hour_problems(
                label,
                histogram_rows=bronze_rows(ledger.manifests(stamp.inputs).values(), hour),
                silver_rows=silver_rows,
                quarantined_rows=quarantined_rows,
                duplicates=stamp.duplicates,
                silver_ids_unique=unique,
            )
    return _result(problems, [hour_label(h) for h in hours])


@asset_check(
    asset=DAILY_ACTIVE_USERS,
    partitions_def=event_days,
    blocking=True,
    additional_deps=[AssetKey("fct_hourly_events")],
)
def daily_events_reconcile(
    context: AssetCheckExecutionContext, lake: LakeResource, warehouse: DuckDBResource
):
    """The day's DAU events == the sum of its hourly events == its silver rows."""
    problems = []
    days = list(context.partition_keys)
    with warehouse.get_connection() as connection:
        for day in days:
            hours = day_hours(date.fromisoformat(day))
            start = hours[0]
            daily = connection.execute(
                "select sum(events) from fct_daily_active_users where event_date = ?", [day]
            ).fetchone()
            hourly = connection.execute(
                "select coalesce(sum(events), 0) from fct_hourly_events "
                "where event_hour >= ? and event_hour < ?",
                [start, start + timedelta(days=1)],
            ).fetchone()
            silver = sum(rows or 0 for rows in parquet_rows(lake, [events_file(h) for h in hours]))
            problems += daily_events_problems(
                day,
                daily_events=None if not daily or daily[0] is None else int(daily[0]),
                hourly_events=int(hourly[0]) if hourly else 0,
                silver_rows=silver,
            )
    return _result(problems, days)


all_checks = [
    offset_ranges_chain,
    no_offsets_lost,
    bronze_rows_match_ranges,
    reconciles_with_bronze,
    daily_events_reconcile,
]
