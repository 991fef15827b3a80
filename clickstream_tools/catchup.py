"""Headless catch-up: tick the sensors at a fixed clock and run what they request, in-process,
until nothing is left. It drives the one `Definitions`; there is no second copy of the logic."""

from __future__ import annotations

import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    RunsFilter,
    SensorDefinition,
    build_sensor_context,
    materialize,
)

from partitions import RANGE_END_TAG, RANGE_START_TAG

CURSOR_PREFIX = "clickstream/catch-up/"
MAX_TICKS = 10_000
PID_TAG = "clickstream/pid"
HOST_TAG = "clickstream/host"
"""Run tags naming the process that executes a catch-up run, so that a later catch-up knows a
run left STARTED by a process that no longer exists."""
UNFINISHED = [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]


@dataclass
class CatchUpReport:
    runs: list[dict] = field(default_factory=list)

    def seconds_by_stage(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for run in self.runs:
            totals[run["stage"]] = totals.get(run["stage"], 0.0) + run["seconds"]
        return totals


def _stage(asset_keys) -> str:
    names = {key.to_user_string() for key in asset_keys}
    if names == {"raw_events"}:
        return "landing"
    if names == {"events"}:
        return "cleaning"
    return "marts"


REPO_INSTANCE_SETTINGS = Path(__file__).resolve().parent.parent / "dagster.yaml"


def instance_for(settings) -> DagsterInstance:
    """The persistent Dagster instance under DAGSTER_HOME, created with the repository's
    instance settings (run queue, pools) if absent."""
    os.makedirs(settings.dagster_home, exist_ok=True)
    configured = Path(settings.dagster_home) / "dagster.yaml"
    if not configured.exists() and REPO_INSTANCE_SETTINGS.exists():
        shutil.copyfile(REPO_INSTANCE_SETTINGS, configured)
    os.environ["DAGSTER_HOME"] = settings.dagster_home
    return DagsterInstance.get()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_runs(instance: DagsterInstance, log=print) -> list[str]:
    """Fail the runs a dead catch-up process left unfinished on this host and free their
    concurrency slots, so nothing waits on them. (Runs the daemon launched are watched by run
    monitoring, enabled in dagster.yaml.)"""
    host = socket.gethostname()
    failed = []
    for run in instance.get_runs(RunsFilter(statuses=UNFINISHED)):
        pid = run.tags.get(PID_TAG)
        if pid is None or run.tags.get(HOST_TAG) != host or _alive(int(pid)):
            continue
        instance.report_run_failed(run, message=f"catch-up process {pid} is gone")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        failed.append(run.run_id)
    if failed:
        log(f"failed {len(failed)} run(s) left unfinished by a dead process: {failed}")
    return failed


def run_catch_up(
    settings,
    *,
    until: datetime | None = None,
    instance: DagsterInstance | None = None,
    resources: dict | None = None,
    log=print,
    verbose: bool = False,
) -> CatchUpReport:
    """Treat every ingest hour closed before `until` as closed and run the sensors' requests
    (landing, the rebuilds the ledger owes, marts) until nothing is left. Idempotent.

    `log` gets one line per run; `verbose` also shows the runs' own log (Dagster's and dbt's
    lines), which is otherwise kept for the Dagster run logs."""
    from clickstream_assets.definitions import (
        all_assets,
        all_checks,
        all_sensors,
        build_resources,
        defs,
    )

    until = (until or datetime.now(UTC)).astimezone(UTC)
    instance = instance or instance_for(settings)
    fail_dead_runs(instance, log=log)
    bound = build_resources(settings, as_of=until) | (resources or {})
    owner = {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
    report = CatchUpReport()
    console_level = "DEBUG" if verbose else "WARNING"
    previous: list = []
    for _ in range(MAX_TICKS):
        # Upstream first: landing catches up fully before the reconcile sensor looks, so each
        # hour is cleaned and each day built once, from everything that has landed.
        requests = next(
            (found for s in all_sensors if (found := _tick(s, instance, bound, defs))), []
        )
        if not requests:
            return report
        if requests == previous:
            raise RuntimeError(f"catch-up is not settling: the same requests twice: {requests}")
        previous = requests
        for request in requests:
            selection = list(request.asset_selection or [])
            started = time.perf_counter()
            result = materialize(
                [*all_assets, *all_checks],
                selection=selection,
                partition_key=request.partition_key,
                tags=dict(request.tags) | owner,
                resources=bound,
                instance=instance,
                run_config={"loggers": {"console": {"config": {"log_level": console_level}}}},
            )
            seconds = time.perf_counter() - started
            stage = _stage(selection)
            partitions = (
                request.partition_key
                or f"{request.tags.get(RANGE_START_TAG)}..{request.tags.get(RANGE_END_TAG)}"
            )
            report.runs.append(
                {
                    "stage": stage,
                    "partitions": partitions,
                    "seconds": seconds,
                    "success": result.success,
                }
            )
            log(f"{stage:<9} {partitions:<37} {seconds:7.1f} s")
    raise RuntimeError(f"catch-up did not settle after {MAX_TICKS} sensor ticks")


def _tick(sensor_def: SensorDefinition, instance: DagsterInstance, resources: dict, defs) -> list:
    key = CURSOR_PREFIX + sensor_def.name
    cursor = instance.run_storage.get_cursor_values({key}).get(key)
    with build_sensor_context(
        instance=instance, cursor=cursor, resources=resources, definitions=defs
    ) as context:
        result = sensor_def.evaluate_tick(context)
    if result.cursor is not None:
        instance.run_storage.set_cursor_values({key: result.cursor})
    return list(result.run_requests or [])
