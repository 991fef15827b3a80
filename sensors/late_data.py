"""The late-data sensor: turns what landings found into rebuilds of the affected partitions.

It reads every landing and cleaning materialization since its cursor (not only the latest), and
requests the event hours that the landings hold events of, then the days those hours belong to,
then, once a provisional day's watermark passes, that day once more so that it becomes final.
A materialization whose run failed one of its blocking asset checks propagates nothing: a
blocking check stops what is downstream in its own run, and this sensor must not undo that in
the next one. Re-materializing the partition once fixed makes a new record that propagates.
"""

import json
from datetime import date

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from clickstream_assets.assets import AS_OF_TAG, events, hour_of_key, partition_key, raw_events
from partitions import allowed_lateness
from resources.clock import ClockResource
from sensors.plan import contiguous_runs, propagate

PAGE = 1000


def _materializations_since(context: SensorEvaluationContext, key: AssetKey, after: int):
    """Every materialization of `key` with a storage id above `after`, oldest first."""
    records = []
    while True:
        page = context.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=key, after_storage_id=after), limit=PAGE, ascending=True
        )
        records += page.records
        if not page.records or not page.has_more:
            return records
        after = page.records[-1].storage_id


def _passed_checks(context: SensorEvaluationContext, records: list) -> list:
    """The records whose run failed none of the blocking asset checks on their asset."""
    failed: set[tuple[str, AssetKey]] = set()
    for run_id in {record.run_id for record in records}:
        for entry in context.instance.all_logs(
            run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION
        ):
            evaluation = entry.dagster_event.event_specific_data if entry.dagster_event else None
            if evaluation is not None and evaluation.blocking and not evaluation.passed:
                failed.add((run_id, evaluation.asset_key))
    held = [r for r in records if (r.run_id, r.asset_key) in failed]
    if held:
        context.log.warning(
            f"holding back {len(held)} materialization(s) whose blocking checks failed, "
            f"runs {sorted({r.run_id for r in held})}"
        )
    return [r for r in records if (r.run_id, r.asset_key) not in failed]


def build_late_data_sensor(mart_keys: list[AssetKey]) -> SensorDefinition:
    @sensor(
        asset_selection=[events.key, *mart_keys],
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.RUNNING,
    )
    def late_data_sensor(context: SensorEvaluationContext, clock: ClockResource):
        """Rebuilds the clean hours and daily marts that new landings affect, late data included."""
        now = clock.now()
        state = json.loads(context.cursor) if context.cursor else {}
        landed = _materializations_since(context, raw_events.key, state.get("raw_events", 0))
        cleaned = _materializations_since(context, events.key, state.get("events", 0))
        plan = propagate(
            [
                label
                for record in _passed_checks(context, landed)
                for label in record.asset_materialization.metadata["hours_to_rebuild"].value
            ],
            [
                hour_of_key(record.asset_materialization.partition)
                for record in _passed_checks(context, cleaned)
            ],
            [date.fromisoformat(d) for d in state.get("pending_final", [])],
            now=now,
            lateness=allowed_lateness,
        )
        requests = [
            RunRequest(
                asset_selection=[events.key],
                tags={
                    "dagster/asset_partition_range_start": partition_key(first),
                    "dagster/asset_partition_range_end": partition_key(last),
                    AS_OF_TAG: now.isoformat(),
                },
            )
            for first, last in contiguous_runs(plan.event_hours)
        ] + [
            RunRequest(
                asset_selection=mart_keys,
                partition_key=day.isoformat(),
                tags={AS_OF_TAG: now.isoformat()},
            )
            for day in plan.days
        ]
        cursor = json.dumps(
            {
                "raw_events": landed[-1].storage_id if landed else state.get("raw_events", 0),
                "events": cleaned[-1].storage_id if cleaned else state.get("events", 0),
                "pending_final": [d.isoformat() for d in plan.pending_final],
            }
        )
        if not requests:
            return SensorResult(skip_reason=SkipReason("nothing new"), cursor=cursor)
        return SensorResult(run_requests=requests, cursor=cursor)

    return late_data_sensor
