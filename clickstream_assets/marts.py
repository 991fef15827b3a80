"""The gold layer: the dbt marts, built from silver for one or more event days (daily partitions)
per run: one dbt build covers the run's days, so a catch-up or a backfill of many days pays dbt's
and Dagster's fixed cost per run, not per day.

A run rebuilds from silver only the event hours whose silver changed since they were last built
(the hourly rollup `int_hourly_activity`, whose rows record the digest of the clean stamp they
were built from), then the day's marts from the day's hourly rows: after an hour closes, its
rollup reads that hour's silver, not the day's.

Each run passes its days, the clock (`as_of`) and the lateness to dbt, so that finality and
revisions are reproducible: rerunning with the same clock gives the same rows. dbt runs in this
process (resources/dbt.py): a run costs its SQL, not a dbt start-up and parse.
"""

import functools
import hashlib
import json
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetKey,
    BackfillPolicy,
    Config,
    Output,
)
from dagster_dbt import DagsterDbtTranslator, dbt_assets
from dagster_duckdb import DuckDBResource
from pydantic import Field

from clickstream_assets.assets import TRANSIENT_RETRIES
from clickstream_assets.pods import MARTS_POD
from core.ledger import (
    Ledger,
    MartStamp,
    day_final_at,
    inputs_digest,
    owed_rollup_hours,
    rollup_digests,
)
from core.settings import Settings, load
from core.warehouse import MART_PERIODS
from partitions import AS_OF_TAG, MART_RUN_DAYS, event_days
from resources.clock import parse_instant
from resources.dbt import DbtRunnerResource, dbt_project
from resources.lake import LakeResource
from resources.warehouse import ROLLUP_TABLE, read_rollups_built, write_mart_stamp

MARTS_GROUP = "marts"
SILVER_EVENTS_KEY = AssetKey("events")
ROLLUP_MODEL = f"model.clickstream.{ROLLUP_TABLE}"

_PERIOD_DAY = {
    "event_date": "event_date",
    "event_hour": "cast(timezone('UTC', event_hour) as date)",
}
# How to select the run's days of each table, to report the rows a run wrote.
_DAY_FILTERS = {
    mart: f"list_contains($days, {_PERIOD_DAY[period]})" for mart, period in MART_PERIODS.items()
} | {
    "mart_revisions": "list_contains($days, event_date)"
    " and revised_at = cast($as_of as timestamptz)"
}


class MartsConfig(Config):
    as_of: str | None = Field(
        default=None,
        description="Build clock, ISO 8601 (UTC if no offset); default: the run tag "
        f"{AS_OF_TAG}, else now.",
    )


class MartsTranslator(DagsterDbtTranslator):
    """Silver events are the Dagster asset `events`; every dbt model is in the `marts` group."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> AssetKey:
        if (
            dbt_resource_props["resource_type"] == "source"
            and dbt_resource_props["source_name"] == "silver"
            and dbt_resource_props["name"] == "events"
        ):
            return SILVER_EVENTS_KEY
        return super().get_asset_key(dbt_resource_props)

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return MARTS_GROUP


TRANSLATOR = MartsTranslator()


def resolve_as_of(configured: str | None, tags: Mapping[str, str], now: datetime) -> str:
    """The build clock as an ISO UTC timestamp: run config, else the run tag, else now."""
    text = configured or tags.get(AS_OF_TAG)
    return (parse_instant(text) if text else now.astimezone(UTC)).isoformat()


def dbt_vars(
    event_dates: list[str],
    as_of: str,
    landed_through: str,
    settings: Settings,
    warehouse_path: str,
    rollup_hours: Mapping[str, Mapping[int, str | None]],
) -> dict:
    """The --vars of one mart run; the dbt project's only inputs. A period is final once every
    Kafka partition has landed through its end plus the allowed lateness (`landed_through`);
    `rollup_hours` are, per day, the hours whose hourly rollup is rebuilt from silver, each with
    the digest of what its silver holds (None when it has no clean stamp)."""
    return {
        "event_dates": list(event_dates),
        "as_of": as_of,
        "landed_through": landed_through,
        "allowed_lateness_minutes": int(settings.allowed_lateness.total_seconds() // 60),
        "lake_url": settings.lake_url,
        "warehouse_path": warehouse_path,
        "rollup_hours": {day: dict(hours) for day, hours in rollup_hours.items()},
    }


def rollup_version(manifest: Mapping[str, Any]) -> str:
    """The SQL the hourly rollup is built with: the checksums of its model and of the models it
    reads. A change to any of them rebuilds every hour's rollup as its day is built."""
    nodes, checksums, todo = manifest["nodes"], set(), [ROLLUP_MODEL]
    while todo:
        node = nodes.get(todo.pop())
        if node is not None:  # a source is not a node
            checksums.add(node["checksum"]["checksum"])
            todo.extend(node["depends_on"]["nodes"])
    return hashlib.sha1(",".join(sorted(checksums)).encode()).hexdigest()


@functools.cache
def _rollup_version() -> str:
    return rollup_version(json.loads(dbt_project.manifest_path.read_text(encoding="utf-8")))


def _rows_written(warehouse: DuckDBResource, days: list[date], as_of: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    with warehouse.get_connection() as connection:
        for table, condition in _DAY_FILTERS.items():
            query = f"select count(*) from {table} where {condition}"
            params: dict[str, Any] = {"days": days}
            if "$as_of" in condition:
                params["as_of"] = as_of
            row = connection.execute(query, params).fetchone()
            counts[table] = int(row[0]) if row else 0
    return counts


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    partitions_def=event_days,
    dagster_dbt_translator=TRANSLATOR,
    pool="warehouse",  # DuckDB allows one writing process: one mart run at a time
    retry_policy=TRANSIENT_RETRIES,
    op_tags=MARTS_POD,
    # A backfill's days go a week per run (dagster-dbt defaults to one run per range).
    backfill_policy=BackfillPolicy.multi_run(MART_RUN_DAYS),
)
def marts(
    context: AssetExecutionContext,
    dbt: DbtRunnerResource,
    warehouse: DuckDBResource,
    lake: LakeResource,
    config: MartsConfig,
) -> Iterator[Any]:
    """The hourly rollup and the daily marts: DAU, by platform, title plays, campaign
    impressions, hourly events."""
    settings = load()
    as_of = resolve_as_of(config.as_of, context.run.tags, datetime.now(UTC))
    ledger = Ledger(lake)
    days = [date.fromisoformat(key) for key in context.partition_keys]
    # Read before dbt reads silver: a cleaning that lands meanwhile leaves the stamp behind the
    # ledger, and the day is owed again.
    stamps = ledger.day_stamps(days)
    version = _rollup_version()
    with warehouse.get_connection() as connection:
        rollup_hours = {
            day.isoformat(): owed_rollup_hours(
                day, rollup_digests(stamps[day], version), read_rollups_built(connection, day)
            )
            for day in days
        }
    landed_through = ledger.landed_through() or datetime.min.replace(tzinfo=UTC)
    run_vars = dbt_vars(
        [day.isoformat() for day in days],
        as_of,
        landed_through.isoformat(),
        settings,
        warehouse.database,
        rollup_hours,
    )
    context.log.info(f"dbt vars: {run_vars}")
    # Buffer the events: the row counts attached below are read after dbt has written.
    # Unit tests check the SQL's logic, not the days' data: CI runs them, a build does not.
    events = list(
        dbt.build(
            context,
            run_vars,
            TRANSLATOR,
            extra_args=("--exclude-resource-type", "unit_test"),
        )
    )
    counts = _rows_written(warehouse, days, as_of)
    with warehouse.get_connection() as connection:
        for day in days:
            final = landed_through >= day_final_at(day, settings.allowed_lateness)
            stamp = MartStamp(day, inputs_digest(stamps[day]), final, landed_through)
            write_mart_stamp(connection, stamp)
    for event in events:
        if isinstance(event, Output):
            table = context.asset_key_for_output(event.output_name).path[-1]
            if table in counts:
                # The run's days together (one materialization per day carries it).
                rows = {"rows_in_partitions": counts[table]}
                event = event.with_metadata({**event.metadata, **rows})
        yield event
