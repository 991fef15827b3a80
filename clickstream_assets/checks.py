"""Asset checks that prove the counts reconcile, stage by stage; each is a thin shell over a pure
function that returns the problems it found (an empty list passes).

The checks are partitioned like their assets and blocking, so a failure stops what is downstream.
A run over a partition range (single-run backfill policy) executes each check once for the whole
range: the check then iterates the run's partitions and reports failures per partition in its
metadata. Dagster records that evaluation without a partition (`AssetCheckResult` cannot name
one), so per-partition check status in the UI comes only from single-partition runs.
"""

from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta

import pyarrow.compute as pc
import pyarrow.parquet as pq
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetKey,
    AssetRecordsFilter,
    MetadataValue,
    asset_check,
)
from dagster_duckdb import DuckDBResource

from clickstream_assets.assets import events, hours_of, raw_events
from clickstream_assets.cleaning import bronze_rows, cleaning_quarantine_file, events_file
from clickstream_assets.landing import HOUR, hour_label, read_manifests, recorded_hours
from partitions import event_days, event_hours, ingest_hours
from resources.lake import LakeResource

DAILY_ACTIVE_USERS = AssetKey("fct_daily_active_users")


# --- pure functions -------------------------------------------------------------------------


def offset_range_problems(
    hour: datetime, manifests: Mapping[datetime, dict], *, first_recorded: datetime | None = None
) -> list[str]:
    """Why `hour`'s recorded ranges do not chain onto the previous hour's, if they do not.

    Each Kafka partition's range must start where the previous hour's ended (no gap, no
    overlap) and have start <= end; a partition the previous hour did not know (the first hour,
    or a partition added since) may start anywhere, at its log's beginning. Every partition of
    the previous hour must go on, and the ledger itself must have no missing hour.
    """
    manifest = manifests.get(hour)
    if manifest is None:
        return [f"{hour_label(hour)}: no manifest"]
    problems = []
    previous = manifests.get(hour - HOUR)
    first = first_recorded or min(manifests)
    if previous is None and first < hour:
        problems.append(f"{hour_label(hour)}: the ledger has no manifest for the hour before")
    before = (previous or {}).get("partitions", {})
    current = manifest["partitions"]
    for p, entry in sorted(current.items(), key=lambda item: int(item[0])):
        if entry["start"] > entry["end"]:
            problems.append(f"{hour_label(hour)} p{p}: start {entry['start']} > end {entry['end']}")
        if p in before and entry["start"] != before[p]["end"]:
            kind = "gap" if entry["start"] > before[p]["end"] else "overlap"
            problems.append(
                f"{hour_label(hour)} p{p}: {kind}, starts at {entry['start']} but the hour "
                f"before ended at {before[p]['end']}"
            )
    for p in sorted(set(before) - set(current), key=int):
        problems.append(
            f"{hour_label(hour)} p{p}: partition missing, it was landed the hour before"
        )
    return problems


def bronze_row_problems(manifest: dict, file_rows: Mapping[str, int | None]) -> list[str]:
    """Why the bronze files of an ingest hour do not hold exactly their ranges' records.

    `file_rows` maps each Kafka partition to the row count of its bronze file (None: no file).
    """
    problems = []
    label = manifest["ingest_hour"]
    for p, entry in sorted(manifest["partitions"].items(), key=lambda item: int(item[0])):
        expected = entry["end"] - entry["start"]
        rows = file_rows.get(p)
        if rows is None and expected:
            problems.append(f"{label} p{p}: range holds {expected} records but no bronze file")
        elif (rows or 0) != expected:
            problems.append(f"{label} p{p}: bronze file has {rows} rows, range holds {expected}")
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
    """Why a day's DAU events, the sum of its hourly events and its silver rows differ."""
    if daily_events is None:
        return [f"{day}: no fct_daily_active_users row"]
    if daily_events == hourly_events == silver_rows:
        return []
    return [
        f"{day}: fct_daily_active_users.events {daily_events}, sum of fct_hourly_events.events "
        f"{hourly_events}, silver rows {silver_rows}"
    ]


# --- lake and warehouse readers ---------------------------------------------------------------


def parquet_rows(lake: LakeResource, relative: str) -> int | None:
    """Row count from the Parquet footer (cheap: no data read), or None if there is no file."""
    if not lake.exists(relative):
        return None
    with lake.fs.open(lake.path(relative), "rb") as handle:
        return pq.ParquetFile(handle).metadata.num_rows


def _ledger(lake: LakeResource, hours: list[datetime]) -> tuple[dict, datetime | None]:
    """The manifests of `hours` and of the hour before each, and the ledger's first hour: all
    that the landing checks need, without reading the whole history."""
    recorded = recorded_hours(lake)
    wanted = set(recorded) & ({h for h in hours} | {h - HOUR for h in hours})
    return read_manifests(lake, sorted(wanted)), recorded[0] if recorded else None


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


def _reported_duplicates(context: AssetCheckExecutionContext, partition: str) -> int | None:
    """The `duplicates` that the latest materialization of an event hour reported."""
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=events.key, asset_partitions=[partition]), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return None
    value = records[0].asset_materialization.metadata.get("duplicates")
    return int(value.value) if value is not None else None  # type: ignore[arg-type]


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
def bronze_rows_match_ranges(context: AssetCheckExecutionContext, lake: LakeResource):
    """The hour's bronze files hold exactly end - start rows per Kafka partition."""
    hours = hours_of(context)
    manifests, _ = _ledger(lake, hours)
    problems = []
    for hour in hours:
        manifest = manifests.get(hour)
        if manifest is None:
            problems.append(f"{hour_label(hour)}: no manifest")
            continue
        rows = {
            p: parquet_rows(lake, entry["file"]) if entry["file"] else None
            for p, entry in manifest["partitions"].items()
        }
        problems += bronze_row_problems(manifest, rows)
    return _result(problems, [hour_label(h) for h in hours])


@asset_check(asset=events, partitions_def=event_hours, blocking=True)
def reconciles_with_bronze(context: AssetCheckExecutionContext, lake: LakeResource):
    """Silver + quarantined + duplicates of the event hour == its bronze rows in the manifests."""
    manifests = read_manifests(lake)
    hours = hours_of(context)
    problems = []
    for hour, key in zip(hours, context.partition_keys, strict=True):
        label = hour_label(hour)
        silver_rows = parquet_rows(lake, events_file(hour))
        unique = True
        if silver_rows:
            ids = lake.read_parquet([events_file(hour)], columns=["event_id"]).column("event_id")
            unique = pc.count_distinct(ids).as_py() == len(ids)
        problems += event_hour_problems(
            label,
            histogram_rows=bronze_rows(manifests, hour),
            silver_rows=silver_rows,
            quarantined_rows=parquet_rows(lake, cleaning_quarantine_file(hour)),
            duplicates=_reported_duplicates(context, key),
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
            start = datetime.combine(date.fromisoformat(day), datetime.min.time(), tzinfo=UTC)
            daily = connection.execute(
                "select sum(events) from fct_daily_active_users where event_date = ?", [day]
            ).fetchone()
            hourly = connection.execute(
                "select coalesce(sum(events), 0) from fct_hourly_events "
                "where event_hour >= ? and event_hour < ?",
                [start, start + timedelta(days=1)],
            ).fetchone()
            silver = sum(parquet_rows(lake, events_file(start + i * HOUR)) or 0 for i in range(24))
            problems += daily_events_problems(
                day,
                daily_events=None if not daily or daily[0] is None else int(daily[0]),
                hourly_events=int(hourly[0]) if hourly else 0,
                silver_rows=silver,
            )
    return _result(problems, days)


all_checks = [
    offset_ranges_chain,
    bronze_rows_match_ranges,
    reconciles_with_bronze,
    daily_events_reconcile,
]
