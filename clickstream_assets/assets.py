"""Landing and cleaning assets: thin shells over `landing` and `cleaning`.

A run may cover a range of hours (catch-up after an outage, a backfill): both assets declare a
single-run backfill policy so that one pass over the log or the ledger serves the whole range.
Each writes the lake's ledger first; the metadata here is a view of it for the UI.
"""

from datetime import UTC, datetime

from dagster import (
    AssetCheckExecutionContext,
    AssetExecutionContext,
    AssetIn,
    AssetsDefinition,
    AssetSpec,
    BackfillPolicy,
    Backoff,
    In,
    MetadataValue,
    Nothing,
    OpExecutionContext,
    ResourceParam,
    RetryPolicy,
    asset,
    graph_asset,
    job,
    op,
)

from clickstream_assets.cleaning import CleaningRun, clean_hours
from clickstream_assets.landing import (
    LandingPlan,
    commit_landing,
    land_hours,
    land_shard,
    land_slice,
    plan_landing,
)
from clickstream_assets.pods import CLEANING_POD, LANDING_POD
from core.ledger import HOUR, Manifest, hour_label, partition_key
from core.settings import load
from partitions import (
    AS_OF_TAG,
    LAND_OPEN_HOUR,
    STAGE_TAG,
    event_hours,
    first_instant,
    ingest_hours,
)
from resources.clock import parse_instant
from resources.event_log import EventLog
from resources.lake import LakeResource

TRANSIENT_RETRIES = RetryPolicy(max_retries=2, delay=5, backoff=Backoff.EXPONENTIAL)
"""A broker or object store that blinks fails the step, not the run: the stamps make a retry
(or the next tick) redo exactly what is owed."""

kafka_topic = AssetSpec(
    "kafka_topic",
    description="The Kafka topic of client events: the 7-day buffer that landing reads.",
    group_name="landing",
    kinds={"kafka"},
)


def run_clock(context: AssetExecutionContext | OpExecutionContext) -> datetime:
    """The instant this run treats as now: the `clickstream/as_of` tag, else the wall clock."""
    tag = context.run.tags.get(AS_OF_TAG)
    return parse_instant(tag) if tag else datetime.now(UTC)


def hours_of(context: AssetExecutionContext | AssetCheckExecutionContext) -> list[datetime]:
    """The hours a run covers (one, or a range under the single-run backfill policy)."""
    window = context.partition_time_window
    count = int((window.end - window.start) / HOUR)
    return [window.start.astimezone(UTC) + i * HOUR for i in range(count)]


def landing_metadata(manifest: Manifest) -> dict:
    """A manifest as the UI shows it."""
    return {
        "rows": MetadataValue.int(manifest.rows),
        "offset_ranges": MetadataValue.json(
            {str(p): [r.start, r.end] for p, r in manifest.partitions.items()}
        ),
        "event_hours": MetadataValue.json(
            {hour_label(h): n for h, n in sorted(manifest.event_hours.items())}
        ),
        "quarantined": MetadataValue.json(manifest.quarantined),
        "clock_corrected": MetadataValue.int(len(manifest.corrected)),
        "late_rows": MetadataValue.int(manifest.late_rows),
        "future_timestamps": MetadataValue.int(manifest.future_timestamps),
        "lost_offsets": MetadataValue.json(
            {str(p): list(r) for p, r in manifest.lost_ranges().items()}
        ),
    }


def hourly_stage(**options):
    """An hourly stage: one run serves a whole range of hours (single-run backfills), in a
    pool of its own, and transient failures retry."""
    return asset(
        backfill_policy=BackfillPolicy.single_run(), retry_policy=TRANSIENT_RETRIES, **options
    )


def record_landing(context: AssetExecutionContext, manifests: list[Manifest]) -> None:
    """Each landed hour's manifest as its partition's metadata; lost offsets as an error."""
    for manifest in manifests:
        lost = manifest.lost_ranges()
        if lost:
            context.log.error(
                f"{hour_label(manifest.ingest_hour)}: offsets deleted before they landed, "
                f"per partition [first, end): {lost}"
            )
        context.add_asset_metadata(
            landing_metadata(manifest), partition_key=partition_key(manifest.ingest_hour)
        )


RAW_EVENTS_DESCRIPTION = (
    "Bronze: each ingest hour's exact Kafka offset range per partition, as received."
)


def landing_step(name: str, after: list[str], **options):
    """An op of the sharded landing: runs after the steps named by `after` (no values pass
    between steps, only the lake), in a landing-sized pod, with the stages' retries."""
    ins = {before: In(Nothing) for before in after}
    return op(name=name, ins=ins, tags=LANDING_POD, retry_policy=TRANSIENT_RETRIES, **options)


def build_raw_events(shards: int) -> AssetsDefinition:
    """`raw_events`: one step that plans, lands every Kafka partition and commits (1 shard), or
    a graph of steps, `plan` -> `land_shard_k` for each shard k -> `commit`, so that each shard
    runs in its own process (or pod, with the k8s executor). The steps share nothing but the
    lake: the plan and the partial entries live there under the run's id."""
    if shards == 1:

        @hourly_stage(
            name="raw_events",
            description=RAW_EVENTS_DESCRIPTION,
            partitions_def=ingest_hours,
            group_name="landing",
            kinds={"kafka", "parquet"},
            deps=[kafka_topic],
            pool="landing",
            op_tags=LANDING_POD,
        )
        def one_step(
            context: AssetExecutionContext, kafka: ResourceParam[EventLog], lake: LakeResource
        ) -> None:
            hours = hours_of(context)
            now = run_clock(context)
            record_landing(
                context, land_hours(kafka, lake, hours, now=now, first_instant=first_instant)
            )

        return one_step

    def token(context: AssetExecutionContext) -> str:
        # The first run's id: a re-execution from a failed step finds the plan and the entries.
        return context.run.root_run_id or context.run_id

    def plan_of(context: AssetExecutionContext, lake: LakeResource) -> LandingPlan:
        return LandingPlan.read(lake, hours_of(context)[0], token(context))

    # Plan and commit write the ledger: one at a time (the landing pool). The shards only write
    # their own partitions' files and entries, so they take no pool slot and run side by side.
    @landing_step("plan_landing", ["topic"], pool="landing")
    def plan(
        context: AssetExecutionContext, kafka: ResourceParam[EventLog], lake: LakeResource
    ) -> None:
        plan_landing(
            kafka,
            lake,
            hours_of(context),
            now=run_clock(context),
            first_instant=first_instant,
            shards=shards,
            token=token(context),
        )

    def land_shard_step(shard: int):
        @landing_step(f"land_shard_{shard}", ["planned"])
        def step(
            context: AssetExecutionContext, kafka: ResourceParam[EventLog], lake: LakeResource
        ) -> None:
            land_shard(kafka, lake, plan_of(context, lake), shard)

        return step

    @landing_step("commit_landing", [f"shard_{k}" for k in range(shards)], pool="landing")
    def commit(
        context: AssetExecutionContext, kafka: ResourceParam[EventLog], lake: LakeResource
    ) -> None:
        record_landing(context, commit_landing(kafka, lake, plan_of(context, lake)))

    @graph_asset(
        name="raw_events",
        description=RAW_EVENTS_DESCRIPTION,
        partitions_def=ingest_hours,
        group_name="landing",
        kinds={"kafka", "parquet"},
        ins={"topic": AssetIn(kafka_topic.key, dagster_type=Nothing)},
        backfill_policy=BackfillPolicy.single_run(),
    )
    def sharded(topic):
        planned = plan(topic)
        return commit(**{f"shard_{k}": land_shard_step(k)(planned) for k in range(shards)})

    return sharded


raw_events = build_raw_events(load().landing_shards)


@hourly_stage(
    partitions_def=event_hours,
    group_name="cleaning",
    kinds={"polars", "parquet"},
    deps=[raw_events],
    pool="cleaning",
    op_tags=CLEANING_POD,
)
def events(context: AssetExecutionContext, lake: LakeResource) -> None:
    """Silver: valid, deduplicated events of an event hour, rebuilt from all bronze holding it."""
    run = CleaningRun.of(lake)  # what the range's hours share is read once
    now = run_clock(context)
    done: list[str] = []
    try:
        for cleaned in clean_hours(
            lake, hours_of(context), first_instant=first_instant, now=now, run=run
        ):
            stamp = cleaned.stamp
            done.append(f"{hour_label(stamp.event_hour)}: {stamp.events} events")
            context.add_asset_metadata(
                {
                    "events": MetadataValue.int(stamp.events),
                    "bronze_rows": MetadataValue.int(stamp.bronze_rows),
                    "duplicates": MetadataValue.int(stamp.duplicates),
                    "quarantined": MetadataValue.int(stamp.quarantined),
                    "quarantined_by_reason": MetadataValue.json(cleaned.quarantined_by_reason),
                    "clock_corrected": MetadataValue.int(cleaned.clock_corrected),
                    "late_events": MetadataValue.int(cleaned.late_events),
                    "inputs": MetadataValue.json([hour_label(h) for h in stamp.inputs]),
                },
                partition_key=partition_key(stamp.event_hour),
            )
    finally:
        # One message a run: each is an event in Dagster's log (~20-30 ms apiece on SQLite).
        context.log.info(f"cleaned {len(done)} event hour(s)\n" + "\n".join(done))


@landing_step("land_slice", [], pool="landing")
def land_slice_step(
    context: OpExecutionContext, kafka: ResourceParam[EventLog], lake: LakeResource
) -> None:
    """Land the open hour's next slice (nothing once it has closed: `raw_events` lands it)."""
    landed = land_slice(kafka, lake, now=run_clock(context), first_instant=first_instant)
    if landed is None:
        context.log.info("no slice landed: no open hour after the ledger's head, or another won")
        return
    ranges = {p: [r.start, r.end] for p, r in landed.partitions.items()}
    context.log.info(f"{hour_label(landed.ingest_hour)}: {landed.rows} records landed {ranges}")


@job(name=LAND_OPEN_HOUR, tags={STAGE_TAG: "landing"})
def land_open_hour():
    """The open ingest hour's next slice (CLICKSTREAM_LANDING_SLICES; the slice sensor runs it)."""
    land_slice_step()
