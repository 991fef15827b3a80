"""Which partitions have a run queued or in progress: a sensor never requests a second writer
for a partition that already has one."""

from datetime import date, timedelta

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from core.ledger import HOUR, hour_of_key, partition_key
from partitions import PARTITION_TAG, RANGE_END_TAG, RANGE_START_TAG, STAGE_TAG

UNFINISHED = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]


def in_flight(instance: DagsterInstance, stage: str) -> list[str]:
    """The partition keys of the unfinished runs of `stage` (hourly and daily ranges expanded)."""
    keys: list[str] = []
    for run in instance.get_runs(RunsFilter(statuses=UNFINISHED, tags={STAGE_TAG: stage})):
        tags = run.tags
        if PARTITION_TAG in tags:
            keys.append(tags[PARTITION_TAG])
        elif RANGE_START_TAG in tags:
            keys += _range_keys(tags[RANGE_START_TAG], tags[RANGE_END_TAG])
        else:
            keys.append("*")
    return keys


def _range_keys(first: str, last: str) -> list[str]:
    """The keys from `first` to `last`: event days (YYYY-MM-DD) or hours."""
    if len(first) == len("YYYY-MM-DD"):
        start, end = date.fromisoformat(first), date.fromisoformat(last)
        return [(start + timedelta(days=n)).isoformat() for n in range((end - start).days + 1)]
    hour, end_hour = hour_of_key(first), hour_of_key(last)
    keys = []
    while hour <= end_hour:
        keys.append(partition_key(hour))
        hour += HOUR
    return keys
