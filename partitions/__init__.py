"""Partition definitions and the lateness policy: what an hour and a day mean, no logic.

Ingest hours (landing) and event hours (cleaning) share a shape but not a meaning: ingest hour H
holds what Kafka received during H; event hour E holds what happened during E, wherever it landed.
"""

from dagster import DailyPartitionsDefinition, HourlyPartitionsDefinition

from core.settings import load

_settings = load()
_START = _settings.start_datetime.strftime("%Y-%m-%d-%H:%M")

ingest_hours = HourlyPartitionsDefinition(start_date=_START, timezone="UTC")
event_hours = HourlyPartitionsDefinition(start_date=_START, timezone="UTC")
event_days = DailyPartitionsDefinition(
    start_date=_settings.start_date.isoformat(), timezone="UTC", end_offset=1
)
"""Today is a partition too (end_offset=1): its marts are built, provisional, as hours close."""

allowed_lateness = _settings.allowed_lateness
"""An hour or a day is provisional until its end plus this, then final."""
