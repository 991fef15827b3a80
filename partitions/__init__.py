"""Partition definitions, the lateness policy and the run tags that name them: what an hour and
a day mean, no logic.

Ingest hours (landing) and event hours (cleaning) share a shape but not a meaning: ingest hour H
holds what Kafka received during H; event hour E holds what happened during E, wherever it landed.
"""

from dagster import DailyPartitionsDefinition, HourlyPartitionsDefinition

from core.settings import load

_settings = load()
_START = _settings.start_datetime.strftime("%Y-%m-%d-%H:%M")

first_instant = _settings.start_datetime
"""The start of the first partition: records received before it land in the first ingest hour;
events dated before it are quarantined (`before_start_date`)."""

ingest_hours = HourlyPartitionsDefinition(start_date=_START, timezone="UTC")
event_hours = HourlyPartitionsDefinition(start_date=_START, timezone="UTC")
event_days = DailyPartitionsDefinition(
    start_date=_settings.start_date.isoformat(), timezone="UTC", end_offset=1
)
"""Today is a partition too (end_offset=1): its marts are built, provisional, as hours close."""
MART_RUN_DAYS = 7
"""The most event days one mart run builds (one dbt build): a catch-up's or a backfill's days go
a week per run, each run paying dbt's and Dagster's fixed cost once."""

allowed_lateness = _settings.allowed_lateness
"""An hour or a day is provisional until every partition has landed through its end plus this."""

AS_OF_TAG = "clickstream/as_of"
"""Run tag holding the clock a run works to (set by the sensors and catch-up); absent: now."""
STAGE_TAG = "clickstream/stage"
"""Run tag naming the stage (landing, cleaning, marts): one writer per stage's partitions."""
LAND_OPEN_HOUR = "land_open_hour"
"""The job that lands the open hour's next slice (the slice sensor requests it)."""
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
PARTITION_TAG = "dagster/partition"
