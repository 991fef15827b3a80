"""The reconcile sensor: compares what each clean hour and mart day records it was built from
with the ledger, and requests exactly the partitions that differ (late data included, whatever
its age), then each provisional day once more when the landed watermark makes it final.

Its cursor only remembers the first ingest hour not yet proven settled, to keep a tick's read
small; losing it costs one full read of the ledger, never a missed or repeated partition.
"""

import json
from datetime import UTC, date, datetime, timedelta

from dagster import (
    AssetKey,
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from dagster_duckdb import DuckDBResource

from core.ledger import Ledger, hour_label, parse_hour_label, partition_key
from partitions import (
    AS_OF_TAG,
    MART_RUN_DAYS,
    RANGE_END_TAG,
    RANGE_START_TAG,
    STAGE_TAG,
    allowed_lateness,
    first_instant,
)
from resources.clock import ClockResource
from resources.lake import LakeResource
from resources.warehouse import WarehouseBusy, read_mart_stamps
from sensors.in_flight import in_flight
from sensors.plan import contiguous_runs, plan_rebuilds

EVENTS = AssetKey("events")


def build_reconcile_sensor(mart_keys: list[AssetKey]) -> SensorDefinition:
    @sensor(
        asset_selection=[EVENTS, *mart_keys],
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.RUNNING,
    )
    def reconcile_sensor(
        context: SensorEvaluationContext,
        lake: LakeResource,
        warehouse: DuckDBResource,
        clock: ClockResource,
    ):
        """Rebuilds the clean hours and daily marts whose inputs differ from the ledger."""
        now = clock.now()
        state = json.loads(context.cursor) if context.cursor else {}
        try:
            stamps = read_mart_stamps(warehouse.database)
        except WarehouseBusy:
            return SkipReason("the warehouse is being written; next tick")
        settled = state.get("settled_from") if stamps else None  # a lost warehouse: read all
        plan = plan_rebuilds(
            Ledger(lake, remember=True),  # this tick's: each listing and manifest read once
            stamps,
            settled_from=parse_hour_label(settled) if settled else None,
            first_hour=first_instant,
            now=min(now, datetime.now(UTC)),  # only partitions that exist by the wall clock
            lateness=allowed_lateness,
        )
        busy_hours = set(in_flight(context.instance, "cleaning"))
        busy_days = set(in_flight(context.instance, "marts"))
        hours = [h for h in plan.event_hours if partition_key(h) not in busy_hours]
        requests = [
            RunRequest(
                asset_selection=[EVENTS],
                tags={
                    RANGE_START_TAG: partition_key(first),
                    RANGE_END_TAG: partition_key(last),
                    AS_OF_TAG: now.isoformat(),
                    STAGE_TAG: "cleaning",
                },
            )
            for first, last in contiguous_runs(hours)
        ] + [
            # Consecutive days build in one run (one dbt build), a week at most.
            marts_request(mart_keys, first, last, now)
            for first, last in contiguous_runs(
                [day for day in plan.days if day.isoformat() not in busy_days],
                step=timedelta(days=1),
                most=MART_RUN_DAYS,
            )
        ]
        settled_from = plan.settled_from
        cursor = json.dumps({"settled_from": hour_label(settled_from) if settled_from else None})
        if not requests:
            return SensorResult(skip_reason=SkipReason("nothing owed"), cursor=cursor)
        return SensorResult(run_requests=requests, cursor=cursor)

    return reconcile_sensor


def marts_request(mart_keys: list[AssetKey], first: date, last: date, now: datetime) -> RunRequest:
    """One mart run built at `now`: a day, or the days `first`..`last` as a partition range (the
    catch-up, the bench and the tests run it as the daemon would)."""
    tags = {AS_OF_TAG: now.isoformat(), STAGE_TAG: "marts"}
    if first == last:
        return RunRequest(asset_selection=mart_keys, partition_key=first.isoformat(), tags=tags)
    days = {RANGE_START_TAG: first.isoformat(), RANGE_END_TAG: last.isoformat()}
    return RunRequest(asset_selection=mart_keys, tags=days | tags)
