"""Keeping the platform healthy over years: Dagster's run history and the lake's tiers are pruned
by two daily jobs, so storage grows with the retained horizon, not with the platform's age.

Run history: Dagster's runs and event log are a view of the lake's ledger (losing them loses
nothing), so finished runs past the history horizon are deleted whole, events included, oldest
first and in bounded batches.

Lake tiers (`CLICKSTREAM_RETENTION_BRONZE`, `_SILVER`, `_QUARANTINE`): only whole partitions go,
and only when nothing that is kept could need them to be rebuilt:
- bronze ingest hour H goes once H and every event hour it holds events of (or whose device
  claimed one of its corrected events) are past the bronze horizon: cleaning an event hour reads
  every bronze file holding it, so a kept hour never loses a source;
- silver goes a whole event day at a time, once the day is past the silver horizon: a mart day
  is built from all of its hours, never from a partial day;
- quarantine (landing by ingest hour, cleaning by event hour) once past its horizon;
- manifests (the ledger) are never deleted: each hour's range starts where the last one ended,
  and they are a few KB an hour.
Bronze must be kept at least as long as silver (checked at start by the settings).
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from dagster import (
    Config,
    DagsterRunStatus,
    DefaultScheduleStatus,
    OpExecutionContext,
    RunsFilter,
    ScheduleDefinition,
    job,
    op,
)

from core.ledger import DAY, HOUR, Ledger, Manifest, hour_dir
from core.settings import Retention, load
from resources.clock import ClockResource
from resources.lake import LakeResource

FINISHED = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]

TIERS = {
    "bronze": "bronze",
    "silver": "silver/events",
    "landing_quarantine": "quarantine/landing",
    "cleaning_quarantine": "quarantine/cleaning",
}
"""Where each tier keeps its `date=YYYY-MM-DD/hour=HH` partitions."""


def _expired(end: datetime, horizon: timedelta | None, now: datetime) -> bool:
    return horizon is not None and end + horizon <= now


@dataclass(frozen=True)
class RetentionPlan:
    """The whole partitions to delete, by tier (hours, oldest first)."""

    bronze: list[datetime]
    silver: list[datetime]
    landing_quarantine: list[datetime]
    cleaning_quarantine: list[datetime]

    def by_tier(self) -> dict[str, list[datetime]]:
        return {tier: getattr(self, tier) for tier in TIERS}


def plan_retention(
    retention: Retention,
    *,
    now: datetime,
    ledger: dict[datetime, Manifest],
    present: dict[str, list[datetime]],
) -> RetentionPlan:
    """Which partitions `present` on the lake (hours by tier) have expired under `retention`.

    `ledger` holds the manifests of the bronze hours present: a bronze hour without one is a
    landing in flight, never touched."""

    def bronze_expired(hour: datetime) -> bool:
        manifest = ledger.get(hour)
        if manifest is None or not _expired(hour + HOUR, retention.bronze, now):
            return False
        return all(_expired(e + HOUR, retention.bronze, now) for e in manifest.hours_to_rebuild())

    def silver_expired(hour: datetime) -> bool:
        day_start = hour.replace(hour=0)
        return _expired(day_start + DAY, retention.silver, now)

    return RetentionPlan(
        bronze=sorted(h for h in present.get("bronze", []) if bronze_expired(h)),
        silver=sorted(h for h in present.get("silver", []) if silver_expired(h)),
        landing_quarantine=sorted(
            h
            for h in present.get("landing_quarantine", [])
            if _expired(h + HOUR, retention.quarantine, now)
        ),
        cleaning_quarantine=sorted(
            h
            for h in present.get("cleaning_quarantine", [])
            if _expired(h + HOUR, retention.quarantine, now)
        ),
    )


def _horizon(tier: str, retention: Retention) -> timedelta | None:
    return retention.quarantine if tier.endswith("quarantine") else getattr(retention, tier)


def partitions_present(
    lake: LakeResource, retention: Retention, now: datetime
) -> dict[str, list[datetime]]:
    """The hour partitions of each tier old enough to have expired: only the day folders before
    the tier's horizon are listed, so a run's listing does not grow with the kept history."""
    present: dict[str, list[datetime]] = {}
    for tier, root in TIERS.items():
        horizon = _horizon(tier, retention)
        if horizon is None:
            continue
        hours = []
        for day_name in lake.list(root):
            if not day_name.startswith("date="):
                continue
            day = datetime.fromisoformat(day_name.removeprefix("date=")).replace(tzinfo=UTC)
            if day + HOUR + horizon > now:
                continue  # not even its first hour has expired
            for hour_name in lake.list(f"{root}/{day_name}"):
                if hour_name.startswith("hour="):
                    hours.append(day.replace(hour=int(hour_name.removeprefix("hour="))))
        present[tier] = sorted(hours)
    return present


def apply_retention(lake: LakeResource, plan: RetentionPlan) -> dict[str, int]:
    """Delete the planned partitions, each folder whole, and day folders left empty."""
    deleted = {}
    for tier, hours in plan.by_tier().items():
        root = TIERS[tier]
        for hour in hours:
            lake.remove(f"{root}/{hour_dir(hour)}")
        for day in sorted({hour_dir(h).split("/")[0] for h in hours}):
            if not lake.list(f"{root}/{day}"):
                lake.remove(f"{root}/{day}")
        deleted[tier] = len(hours)
    return deleted


@op
def expire_lake_partitions(
    context: OpExecutionContext, lake: LakeResource, clock: ClockResource
) -> None:
    """Deletes the lake partitions past their tier's retention (CLICKSTREAM_RETENTION_*)."""
    retention = load().retention
    now = clock.now()
    present = partitions_present(lake, retention, now)
    ledger = Ledger(lake)
    recorded = set(ledger.recorded_hours())
    manifests = ledger.manifests(h for h in present.get("bronze", []) if h in recorded)
    plan = plan_retention(retention, now=now, ledger=manifests, present=present)
    deleted = apply_retention(lake, plan)
    context.log.info(f"retention at {now.isoformat()}: deleted partitions {deleted}")


class RunHistoryConfig(Config):
    keep_days: int = 90
    """Finished runs whose last update is older than this are deleted, with their events."""
    batch: int = 5_000
    """At most this many runs per run of the job, oldest first (the next day takes the rest)."""


@op
def purge_run_history(
    context: OpExecutionContext, config: RunHistoryConfig, clock: ClockResource
) -> None:
    """Deletes finished runs (and their event logs) older than the history horizon."""
    cutoff = clock.now() - timedelta(days=config.keep_days)
    records = context.instance.get_run_records(
        filters=RunsFilter(statuses=FINISHED, updated_before=cutoff),
        limit=config.batch,
        order_by="update_timestamp",
        ascending=True,
    )
    for record in records:
        context.instance.delete_run(record.dagster_run.run_id)
    context.log.info(f"deleted {len(records)} run(s) last updated before {cutoff.isoformat()}")


@job(description="Deletes finished Dagster runs and their event logs past the history horizon.")
def purge_run_history_job():
    purge_run_history()


@job(description="Deletes whole lake partitions past their tier's retention.")
def lake_retention_job():
    expire_lake_partitions()


maintenance_schedules = [
    ScheduleDefinition(
        job=purge_run_history_job,
        cron_schedule="17 3 * * *",
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
    ),
    ScheduleDefinition(
        job=lake_retention_job,
        cron_schedule="47 3 * * *",
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
    ),
]
