"""The landing sensor: lands every closed ingest hour, and records the pipeline's lag.

Lag per Kafka partition = the log's high watermark minus the landed end offset, in records, and
in seconds since the end of the last landed hour while records wait. It is recorded as an
observation of the topic's source asset and logged as a warning past `LAG_WARNING`.
"""

from datetime import timedelta

from dagster import (
    AssetObservation,
    DefaultSensorStatus,
    MetadataValue,
    ResourceParam,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from clickstream_assets.assets import AS_OF_TAG, kafka_topic, partition_key, raw_events
from clickstream_assets.landing import HOUR, first_ingest_hour, read_manifests, recorded_hours
from resources.clock import ClockResource
from resources.kafka import EventLog
from resources.lake import LakeResource
from sensors.plan import closed_hours

LAG_WARNING = timedelta(hours=2)
MAX_HOURS_PER_RUN = 24


def measure_lag(kafka: EventLog, manifests: dict, now) -> dict:
    """Records and seconds between the log's head and what has landed, per partition."""
    last = max(manifests) if manifests else None
    landed = {int(p): e["end"] for p, e in manifests[last]["partitions"].items()} if last else {}
    positions = {p: landed.get(p, kafka.beginning_offset(p)) for p in kafka.partitions()}
    heads = kafka.high_watermarks(positions)
    # Seconds count from where landing stands: the end of the last landed hour, or, before the
    # first landing, the start of the hour of the log's oldest record (a backlog is lag too).
    landed_until = last + HOUR if last else first_ingest_hour(kafka)
    lag = {}
    for p, head in sorted(heads.items()):
        records = max(head - positions[p], 0)
        seconds = (now - landed_until).total_seconds() if records and landed_until else 0.0
        lag[p] = {"records": records, "seconds": max(seconds, 0.0)}
    return lag


@sensor(
    asset_selection=[raw_events],
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
)
def landing_sensor(
    context: SensorEvaluationContext,
    kafka: ResourceParam[EventLog],
    lake: LakeResource,
    clock: ClockResource,
):
    """Lands every ingest hour that has closed, oldest first, and records the lag."""
    now = clock.now()
    landed = recorded_hours(lake)
    manifests = read_manifests(lake, landed[-1:])  # the head of the ledger is all lag needs
    lag = measure_lag(kafka, manifests, now)
    total = sum(v["records"] for v in lag.values())
    worst = max((v["seconds"] for v in lag.values()), default=0.0)
    if worst > LAG_WARNING.total_seconds():
        context.log.warning(
            f"landing lags {total} records, {worst / 3600:.1f} h behind the log's head"
        )
    observation = AssetObservation(
        asset_key=kafka_topic.key,
        metadata={
            "lag_records": MetadataValue.int(total),
            "lag_seconds": MetadataValue.float(worst),
            "lag_by_partition": MetadataValue.json({str(p): v for p, v in lag.items()}),
        },
    )
    first = max(manifests) + HOUR if manifests else first_ingest_hour(kafka)
    hours = closed_hours(first, now, limit=MAX_HOURS_PER_RUN) if first else []
    if not hours:
        return SensorResult(
            asset_events=[observation], skip_reason=SkipReason("no closed hour to land")
        )
    start, end = partition_key(hours[0]), partition_key(hours[-1])
    return SensorResult(
        asset_events=[observation],
        run_requests=[
            RunRequest(
                run_key=f"land:{start}:{end}",
                asset_selection=[raw_events.key],
                tags={
                    "dagster/asset_partition_range_start": start,
                    "dagster/asset_partition_range_end": end,
                    AS_OF_TAG: now.isoformat(),
                    # Live landing jumps the run queue ahead of backfills and reprocessing.
                    "dagster/priority": "10",
                },
            )
        ],
    )
