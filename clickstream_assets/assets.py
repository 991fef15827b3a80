"""Landing and cleaning assets: thin shells over `landing` and `cleaning`.

A run may cover a range of hours (catch-up after an outage, a backfill): both assets declare a
single-run backfill policy so that one pass over the log or the manifests serves the whole range.
"""

from datetime import UTC, datetime

from dagster import (
    AssetCheckExecutionContext,
    AssetExecutionContext,
    AssetSpec,
    BackfillPolicy,
    MetadataValue,
    ResourceParam,
    asset,
)

from clickstream_assets.cleaning import clean_hour, corrected_winners
from clickstream_assets.landing import (
    hour_label,
    hours_to_rebuild,
    land_hours,
    parse_hour_label,
    read_manifests,
)
from clickstream_assets.pods import CLEANING_POD, LANDING_POD
from partitions import event_hours, ingest_hours
from resources.clock import parse_instant
from resources.kafka import EventLog
from resources.lake import LakeResource

AS_OF_TAG = "clickstream/as_of"
"""Run tag holding the clock a run works to (set by catch-up); absent means now."""


kafka_topic = AssetSpec(
    "kafka_topic",
    description="The Kafka topic of client events: the 7-day buffer that landing reads.",
    group_name="landing",
    kinds={"kafka"},
)


def run_clock(context: AssetExecutionContext) -> datetime:
    """The instant this run treats as now: the `clickstream/as_of` tag, else the wall clock."""
    tag = context.run.tags.get(AS_OF_TAG)
    return parse_instant(tag) if tag else datetime.now(UTC)


HOUR_KEY_FORMAT = "%Y-%m-%d-%H:%M"
"""How Dagster names an hourly partition."""


def partition_key(hour: datetime) -> str:
    return hour.strftime(HOUR_KEY_FORMAT)


def hour_of_key(key: str) -> datetime:
    return datetime.strptime(key, HOUR_KEY_FORMAT).replace(tzinfo=UTC)


def hours_of(context: AssetExecutionContext | AssetCheckExecutionContext) -> list[datetime]:
    """The hours a run covers (one, or a range under the single-run backfill policy)."""
    return [hour_of_key(key) for key in context.partition_keys]


@asset(
    partitions_def=ingest_hours,
    backfill_policy=BackfillPolicy.single_run(),
    group_name="landing",
    kinds={"kafka", "parquet"},
    deps=[kafka_topic],
    pool="landing",
    op_tags=LANDING_POD,
)
def raw_events(
    context: AssetExecutionContext, kafka: ResourceParam[EventLog], lake: LakeResource
) -> None:
    """Bronze: each ingest hour's exact Kafka offset range per partition, as received."""
    for manifest in land_hours(kafka, lake, hours_of(context), now=run_clock(context)):
        ranges = {p: [e["start"], e["end"]] for p, e in manifest["partitions"].items()}
        context.add_asset_metadata(
            {
                "rows": MetadataValue.int(manifest["rows"]),
                "offset_ranges": MetadataValue.json(ranges),
                "event_hours": MetadataValue.json(manifest["event_hours"]),
                "hours_to_rebuild": MetadataValue.json(hours_to_rebuild(manifest)),
                "quarantined": MetadataValue.json(manifest["quarantined"]),
                "clock_corrected": MetadataValue.int(len(manifest["corrected"])),
                "late_rows": MetadataValue.int(
                    sum(
                        n
                        for label, n in manifest["event_hours"].items()
                        if label < manifest["ingest_hour"]
                    )
                ),
            },
            partition_key=partition_key(parse_hour_label(manifest["ingest_hour"])),
        )


@asset(
    partitions_def=event_hours,
    backfill_policy=BackfillPolicy.single_run(),
    group_name="cleaning",
    kinds={"polars", "parquet"},
    deps=[raw_events],
    pool="cleaning",
    op_tags=CLEANING_POD,
)
def events(context: AssetExecutionContext, lake: LakeResource) -> None:
    """Silver: valid, deduplicated events of an event hour, rebuilt from all bronze holding it."""
    manifests = read_manifests(lake)
    winners = corrected_winners(manifests)  # once per run, whatever the number of hours
    for hour in hours_of(context):
        stats = clean_hour(lake, hour, manifests, winners=winners)
        context.log.info("cleaned %s: %s", hour_label(hour), stats)
        context.add_asset_metadata(
            {
                "events": MetadataValue.int(stats["events"]),
                "bronze_rows": MetadataValue.int(stats["bronze_rows"]),
                "duplicates": MetadataValue.int(stats["duplicates"]),
                "quarantined": MetadataValue.int(stats["quarantined"]),
                "quarantined_by_reason": MetadataValue.json(stats["quarantined_by_reason"]),
                "clock_corrected": MetadataValue.int(stats["clock_corrected"]),
                "late_events": MetadataValue.int(stats["late_events"]),
                "source_ingest_hours": MetadataValue.json(stats["source_ingest_hours"]),
            },
            partition_key=partition_key(hour),
        )
