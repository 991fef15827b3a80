"""The landing sensors: one lands every closed ingest hour and records the pipeline's lag; the
other lands the open hour in slices (CLICKSTREAM_LANDING_SLICES), so that its close leaves only
its last minutes to land.

Lag per Kafka partition = the log's high watermark minus the landed end offset, in records, and
in seconds since the end of the last landed hour while records wait. It is recorded as an
observation of the topic's source asset and logged as a warning past `LAG_WARNING`.
"""

from datetime import UTC, datetime, timedelta

from dagster import (
    AssetKey,
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

from core.ledger import HOUR, Ledger, Manifest, floor_hour, hour_label, partition_key
from core.settings import load
from partitions import (
    AS_OF_TAG,
    LAND_OPEN_HOUR,
    RANGE_END_TAG,
    RANGE_START_TAG,
    STAGE_TAG,
    first_instant,
)
from resources.clock import ClockResource
from resources.event_log import EventLog
from resources.lake import LakeResource
from sensors.in_flight import in_flight
from sensors.plan import (
    LANDING_RUN_RECORDS,
    OWED_HOURS_READ,
    closed_hours,
    landing_run_hours,
    next_slice,
)


def first_ingest_hour(event_log: EventLog, *, not_before: datetime) -> datetime | None:
    """Where the ledger starts when nothing has landed: the hour of the log's oldest record,
    or the first partition when the log holds records from before it (they land there)."""
    oldest = (event_log.oldest_timestamp(p) for p in event_log.partitions())
    earliest = [instant for instant in oldest if instant is not None]
    if not earliest:
        return None
    return max(floor_hour(min(earliest)), floor_hour(not_before))


LAG_WARNING = timedelta(hours=2)
RAW_EVENTS = AssetKey("raw_events")
KAFKA_TOPIC = AssetKey("kafka_topic")


def first_hour_to_land(kafka: EventLog, head: Manifest | None) -> datetime | None:
    """Where landing stands: the end of the ledger's head, or, before the first landing, the
    start of the hour of the log's oldest record; None while the log is empty."""
    return head.ingest_hour + HOUR if head else first_ingest_hour(kafka, not_before=first_instant)


def measure_lag(
    kafka: EventLog, head: Manifest | None, now: datetime, landed_until: datetime | None
) -> dict:
    """Records and seconds between the log's head and what has landed, per partition; seconds
    count from `landed_until` (`first_hour_to_land`: a backlog before the first landing is lag
    too)."""
    landed = head.ends if head else {}
    positions = {p: max(landed.get(p, 0), kafka.beginning_offset(p)) for p in kafka.partitions()}
    heads = kafka.high_watermarks(positions)
    lag = {}
    for p, high in sorted(heads.items()):
        records = max(high - landed.get(p, positions[p]), 0)
        seconds = (now - landed_until).total_seconds() if records and landed_until else 0.0
        lag[p] = {"records": records, "seconds": max(seconds, 0.0)}
    return lag


@sensor(
    asset_selection=[RAW_EVENTS],
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
    head = Ledger(lake).head()  # the head of the ledger is all landing and lag need
    # Before the first landing this reads the log's first records: once a tick.
    first = first_hour_to_land(kafka, head)
    lag = measure_lag(kafka, head, now, first)
    total = sum(v["records"] for v in lag.values())
    worst = max((v["seconds"] for v in lag.values()), default=0.0)
    if worst > LAG_WARNING.total_seconds():
        context.log.warning(
            f"landing lags {total} records, {worst / 3600:.1f} h behind the log's head"
        )
    observation = AssetObservation(
        asset_key=KAFKA_TOPIC,
        metadata={
            "lag_records": MetadataValue.int(total),
            "lag_seconds": MetadataValue.float(worst),
            "lag_by_partition": MetadataValue.json({str(p): v for p, v in lag.items()}),
        },
    )
    # An hour exists as a partition once it has closed by the wall clock too: a clock pinned
    # in the future (catch-up --until) never names an hour Dagster does not know yet.
    closed_by = min(now, datetime.now(UTC))
    owed = closed_hours(first, closed_by, limit=OWED_HOURS_READ) if first else []
    hours = owed[: landing_run_hours(len(owed), total, LANDING_RUN_RECORDS)]
    if not hours:
        return SensorResult(
            asset_events=[observation], skip_reason=SkipReason("no closed hour to land")
        )
    if in_flight(context.instance, "landing"):
        # One landing at a time: the one in flight lands these hours or leaves them owed.
        return SensorResult(
            asset_events=[observation], skip_reason=SkipReason("a landing run is in flight")
        )
    start, end = partition_key(hours[0]), partition_key(hours[-1])
    return SensorResult(
        asset_events=[observation],
        run_requests=[
            RunRequest(
                run_key=f"land:{start}:{end}",
                asset_selection=[RAW_EVENTS],
                tags={
                    RANGE_START_TAG: start,
                    RANGE_END_TAG: end,
                    AS_OF_TAG: now.isoformat(),
                    STAGE_TAG: "landing",
                    # Live landing jumps the run queue ahead of backfills and reprocessing.
                    "dagster/priority": "10",
                },
            )
        ],
    )


@sensor(
    job_name=LAND_OPEN_HOUR,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
)
def slice_sensor(context: SensorEvaluationContext, lake: LakeResource, clock: ClockResource):
    """Lands the open hour's next slice every CLICKSTREAM_LANDING_SLICES, decided from the
    ledger alone: the hour after its head, and when its last slice was landed."""
    interval = load().landing_slices
    if interval is None:
        return SkipReason("CLICKSTREAM_LANDING_SLICES is off: each hour lands whole at its close")
    now = clock.now()
    ledger = Ledger(lake)
    recorded = ledger.recorded_hours()
    head = recorded[-1] if recorded else None
    landed = (
        [datetime.fromisoformat(s.landed_at) for s in ledger.slices(head + HOUR)] if head else []
    )
    owed = next_slice(head, landed, now, interval)
    if owed is None:
        return SkipReason("no open hour owes a slice")
    if in_flight(context.instance, "landing"):
        return SkipReason("a landing run is in flight")
    hour, piece = owed
    return RunRequest(
        run_key=f"slice:{hour_label(hour)}:{piece}",
        tags={AS_OF_TAG: now.isoformat(), STAGE_TAG: "landing", "dagster/priority": "10"},
    )
