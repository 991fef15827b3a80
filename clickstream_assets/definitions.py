"""The one Definitions of the code location, built from explicit lists."""

from datetime import datetime, timedelta

from dagster import (
    AssetSpec,
    Definitions,
    ExecutorDefinition,
    FreshnessPolicy,
    apply_freshness_policy,
)
from dagster_k8s import k8s_job_executor

from clickstream_assets import checks
from clickstream_assets.assets import events, kafka_topic, land_open_hour, raw_events
from clickstream_assets.maintenance import maintenance_schedules
from clickstream_assets.marts import marts
from core.settings import Settings, load
from partitions import allowed_lateness
from resources.clock import ClockResource
from resources.dbt import dbt_resource
from resources.kafka import KafkaResource
from resources.lake import LakeResource
from resources.warehouse import warehouse_resource
from sensors.landing import landing_sensor, slice_sensor
from sensors.reconcile import build_reconcile_sensor

all_assets = [kafka_topic, raw_events, events, marts]
all_checks = checks.all_checks
all_sensors = [landing_sensor, build_reconcile_sensor(list(marts.keys))]
"""The sensors of closed hours, which the headless catch-up ticks too; the open hour's slices
are the live deployment's alone."""


def hourly_freshness(lateness: timedelta) -> FreshnessPolicy:
    """An hourly asset is rebuilt minutes after each hour closes; warn past 1 h 15 min without a
    materialization, fail once even the allowed lateness (and 15 min of slack) has passed."""
    slack = timedelta(minutes=15)
    return FreshnessPolicy.time_window(
        fail_window=timedelta(hours=1) + lateness + slack, warn_window=timedelta(hours=1) + slack
    )


def daily_freshness(lateness: timedelta) -> FreshnessPolicy:
    """A day's marts turn final at midnight UTC + the allowed lateness; give them 2 h more."""
    minutes = int((lateness + timedelta(hours=2)).total_seconds() // 60)
    return FreshnessPolicy.cron(
        deadline_cron=f"{minutes % 60} {minutes // 60 % 24} * * *",
        lower_bound_delta=timedelta(hours=24),
        timezone="UTC",
    )


HOURLY_FRESHNESS = hourly_freshness(allowed_lateness)
DAILY_FRESHNESS = daily_freshness(allowed_lateness)


def with_freshness(spec: AssetSpec) -> AssetSpec:
    if spec.key in (raw_events.key, events.key):
        return apply_freshness_policy(spec, HOURLY_FRESHNESS)
    if spec.key in marts.keys:
        return apply_freshness_policy(spec, DAILY_FRESHNESS)
    return spec


def build_resources(settings: Settings, *, as_of: datetime | None = None) -> dict:
    """Every external system, from the settings; `as_of` pins the clock (catch-up, tests)."""
    return {
        "kafka": KafkaResource(bootstrap_servers=settings.kafka_bootstrap, topic=settings.topic),
        "lake": LakeResource(url=settings.lake_url),
        "dbt": dbt_resource(settings),
        "warehouse": warehouse_resource(settings),
        "clock": ClockResource(as_of=as_of.isoformat() if as_of else None),
    }


def executor(settings: Settings) -> ExecutorDefinition | None:
    """Where steps run: Dagster's default (processes of the run's pod or machine), or, with
    CLICKSTREAM_EXECUTOR=k8s, each step a pod of its own sized by its `dagster-k8s/config` tag
    (landing shards then scale with pods)."""
    return k8s_job_executor if settings.executor == "k8s" else None


SETTINGS = load()
defs = Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=[land_open_hour],
    sensors=[*all_sensors, slice_sensor],
    schedules=maintenance_schedules,
    resources=build_resources(SETTINGS),
    executor=executor(SETTINGS),
).map_resolved_asset_specs(func=with_freshness)
