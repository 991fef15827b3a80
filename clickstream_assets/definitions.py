"""The one Definitions of the code location, built from explicit lists."""

from datetime import datetime

from dagster import Definitions

from clickstream_assets.assets import events, kafka_topic, raw_events
from clickstream_assets.marts import marts
from clickstream_assets.settings import Settings, load
from resources.clock import ClockResource
from resources.dbt import dbt_resource
from resources.kafka import KafkaResource
from resources.lake import LakeResource
from resources.warehouse import warehouse_resource
from sensors.landing import landing_sensor
from sensors.late_data import build_late_data_sensor

all_assets = [kafka_topic, raw_events, events, marts]
all_checks: list = []
all_sensors = [landing_sensor, build_late_data_sensor(list(marts.keys))]


def build_resources(settings: Settings, *, as_of: datetime | None = None) -> dict:
    """Every external system, from the settings; `as_of` pins the clock (catch-up, tests)."""
    return {
        "kafka": KafkaResource(bootstrap_servers=settings.kafka_bootstrap, topic=settings.topic),
        "lake": LakeResource(url=settings.lake_url),
        "dbt": dbt_resource(settings),
        "warehouse": warehouse_resource(settings),
        "clock": ClockResource(as_of=as_of.isoformat() if as_of else None),
    }


defs = Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    sensors=all_sensors,
    resources=build_resources(load()),
)
