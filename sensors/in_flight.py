"""Which partitions have a run queued or in progress: a sensor never requests a second writer
for a partition that already has one."""

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
    """The partition keys of the unfinished runs of `stage` (hourly ranges expanded)."""
    keys: list[str] = []
    for run in instance.get_runs(RunsFilter(statuses=UNFINISHED, tags={STAGE_TAG: stage})):
        tags = run.tags
        if PARTITION_TAG in tags:
            keys.append(tags[PARTITION_TAG])
        elif RANGE_START_TAG in tags:
            hour, last = hour_of_key(tags[RANGE_START_TAG]), hour_of_key(tags[RANGE_END_TAG])
            while hour <= last:
                keys.append(partition_key(hour))
                hour += HOUR
        else:
            keys.append("*")
    return keys
