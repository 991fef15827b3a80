"""The deployment shape on PostgreSQL: a code server, `dagster-daemon` and instance storage on
Postgres (dagster.yaml + deploy/dagster-postgres.yaml), traffic in the embedded broker, and the
sensors doing the work on the wall clock, no catch-up.

- The sensors land, clean and build the marts, and the marts equal the generator's expectation.
- While a backfill of past weeks runs (`dagster/backfill`), a freshly closed hour still lands
  first and the run queue's limits hold: asserted on the run records, never on durations.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.scheduler.instigation import InstigatorType, TickStatus

from clickstream_assets.definitions import defs
from clickstream_tools.generator import produce
from core.ledger import Ledger, floor_hour
from partitions import MART_RUN_DAYS, RANGE_END_TAG, RANGE_START_TAG
from resources.kafka import KafkaResource
from resources.lake import LakeResource
from sensors.landing import landing_sensor
from tests.helpers import assert_marts_match, configured, local_env, messy_traffic

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STAGES = ("landing", "cleaning", "marts")
SENSOR_NAMES = {sensor.name for sensor in defs.sensors}
FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
SETTLE_DEADLINE = timedelta(minutes=30)
"""Only a guard against a hang: nothing is asserted about how long anything takes."""

PG = {
    "DAGSTER_PG_HOST": os.environ.get("DAGSTER_PG_HOST", "127.0.0.1"),
    "DAGSTER_PG_PORT": os.environ.get("DAGSTER_PG_PORT", "5432"),
    "DAGSTER_PG_USERNAME": os.environ.get("DAGSTER_PG_USERNAME", "clickstream"),
    "DAGSTER_PG_PASSWORD": os.environ.get("DAGSTER_PG_PASSWORD", "clickstream"),
}


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh database on the local PostgreSQL (deploy/postgres-setup.sh), dropped afterwards."""
    import psycopg2

    params = {
        "host": PG["DAGSTER_PG_HOST"],
        "port": int(PG["DAGSTER_PG_PORT"]),
        "user": PG["DAGSTER_PG_USERNAME"],
        "password": PG["DAGSTER_PG_PASSWORD"],
        "dbname": "postgres",
    }
    try:
        admin = psycopg2.connect(**params)
    except psycopg2.OperationalError as error:
        pytest.fail(
            f"PostgreSQL is not reachable at {params['host']}:{params['port']} as "
            f"{params['user']} ({error}): run `bash deploy/postgres-setup.sh` as root"
        )
    admin.autocommit = True
    name = f"dagster_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cursor:
        cursor.execute(f'create database "{name}"')
    try:
        yield name
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'drop database if exists "{name}" with (force)')
        admin.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Deployment:
    """A code server and (once started) a daemon on one Postgres-backed instance."""

    root: Path
    env: dict[str, str]
    instance: DagsterInstance
    workspace: Path
    processes: list[subprocess.Popen]

    # Processes run in the test's own directory, not the repository's: Dagster loads the .env of
    # its working directory, and a developer's (make demo writes one) must not change the test.
    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            [str(BIN / args[0]), *args[1:]], env=self.env, stdout=log, stderr=log, cwd=self.root
        )
        self.processes.append(process)
        return process

    def cli(self, *args: str) -> None:
        subprocess.run(
            [str(BIN / "dagster"), *args, "-w", str(self.workspace)],
            env=self.env,
            cwd=self.root,
            check=True,
            capture_output=True,
        )

    def start_daemon(self) -> None:
        self._spawn("daemon", "dagster-daemon", "run", "-w", str(self.workspace))

    def runs(self) -> list:
        return list(self.instance.get_run_records(ascending=True))

    def stop(self) -> None:
        """Terminate the processes, the daemon first (nothing requests or launches a run once
        it has stopped); kill any that has not exited within 30 s: on a loaded machine the code
        server's graceful stop has taken longer (CI, 2026-12-03)."""
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def latest_ticks(self) -> dict[str, object]:
        states = self.instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
        ticks = {}
        for state in states:
            found = self.instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)
            if found:
                ticks[state.instigator_name] = found[0]
        return ticks

    def wait(self, condition, what: str) -> None:
        deadline = time.monotonic() + SETTLE_DEADLINE.total_seconds()
        while not condition():
            for process in self.processes:
                if process.poll() is not None:
                    pytest.fail(f"{process.args[:2]} exited: see {self.root}/*.log")
            if time.monotonic() > deadline:
                summary = [(r.dagster_run.status.value, _stage(r)) for r in self.runs()]
                pytest.fail(f"{what} did not happen; runs: {summary}; logs in {self.root}")
            time.sleep(2)

    def settled(self) -> bool:
        """No run waits or runs, and every sensor has skipped a tick since the last run ended."""
        runs = self.runs()
        if not runs or any(r.dagster_run.status not in FINISHED for r in runs):
            return False
        last_end = max(r.end_time or 0 for r in runs)
        ticks = self.latest_ticks()
        return set(ticks) == SENSOR_NAMES and all(
            t.timestamp > last_end and t.status == TickStatus.SKIPPED for t in ticks.values()
        )


@contextmanager
def deployment(root: Path, database: str, **clickstream: str) -> Iterator[Deployment]:
    """The repository's instance settings + Postgres storage, a workspace on a gRPC code server."""
    home = root / "dagster_home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(
        (REPO / "dagster.yaml").read_text() + (REPO / "deploy/dagster-postgres.yaml").read_text()
    )
    port = _free_port()
    workspace = root / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - grpc_server:\n"
        f"      host: 127.0.0.1\n      port: {port}\n      location_name: clickstream\n"
    )
    env = local_env(root, **clickstream) | PG | {"DAGSTER_PG_DB": database}
    env["DAGSTER_HOME"] = str(home)
    with configured(env):
        full_env = {
            **os.environ,
            "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        }
        running = Deployment(
            root=root,
            env=full_env,
            instance=DagsterInstance.from_config(str(home)),
            workspace=workspace,
            processes=[],
        )
        try:
            running._spawn(
                "code-server",
                "dagster",
                "code-server",
                "start",
                "-m",
                "clickstream_assets.definitions",
                "-d",
                str(REPO),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "--location-name",
                "clickstream",
            )
            running.wait(lambda: _serving(port, full_env), "the code server answering")
            yield running
        finally:
            running.stop()
            running.instance.dispose()


def _serving(port: int, env: dict[str, str]) -> bool:
    check = [str(BIN / "dagster"), "api", "grpc-health-check", "-p", str(port), "-h", "127.0.0.1"]
    return subprocess.run(check, env=env, capture_output=True).returncode == 0


def _stage(record) -> str:
    names = {key.to_user_string() for key in record.dagster_run.asset_selection or []}
    return {"raw_events": "landing", "events": "cleaning"}.get(",".join(sorted(names)), "marts")


def _kafka(broker, topic: str) -> KafkaResource:
    kafka = KafkaResource(bootstrap_servers=broker.bootstrap, topic=topic)
    kafka.create_topic(3)
    return kafka


def test_the_daemon_and_sensors_build_the_expected_marts(broker, pg_database, tmp_path):
    # Ingest hours that have all closed: events of 3 h, received at most 2 h late.
    top = floor_hour(datetime.now(UTC))
    topic = f"pg.{uuid.uuid4().hex[:8]}"
    kafka = _kafka(broker, topic)
    traffic = messy_traffic(
        top - timedelta(hours=6),
        top - timedelta(hours=3),
        events=3_000,
        seed=23,
        max_late=timedelta(hours=2),
    )
    produce(kafka, traffic.messages, chunk_rows=5_000)
    with deployment(
        tmp_path, pg_database, CLICKSTREAM_KAFKA_BOOTSTRAP=broker.bootstrap, CLICKSTREAM_TOPIC=topic
    ) as running:
        assert type(running.instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(running.instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        running.start_daemon()
        running.wait(
            lambda: (
                {"landing", "cleaning", "marts"} <= {_stage(r) for r in running.runs()}
                and running.settled()
            ),
            "landing, cleaning and marts runs, then two quiet sensor ticks",
        )
        runs = running.runs()
        running.stop()  # the warehouse is read only once no run can write it

    assert [r.dagster_run.status for r in runs] == [DagsterRunStatus.SUCCESS] * len(runs)
    # Every run was requested by a sensor (a landing's materializations, not its run's end,
    # are what the late-data sensor reacts to), and each stage was first requested in order.
    unrequested = [
        (r.dagster_run.run_id, dict(r.dagster_run.tags))
        for r in runs
        if r.dagster_run.tags.get("dagster/sensor_name") not in SENSOR_NAMES
    ]
    assert unrequested == []
    first = {s: min(r.create_timestamp for r in runs if _stage(r) == s) for s in STAGES}
    assert first["landing"] < first["cleaning"] < first["marts"]
    assert_marts_match(str(tmp_path / "warehouse.duckdb"), traffic.truth)


def test_a_fresh_hour_lands_first_while_weeks_are_backfilled(broker, pg_database, tmp_path):
    top = floor_hour(datetime.now(UTC))
    topic = f"pg.{uuid.uuid4().hex[:8]}"
    kafka = _kafka(broker, topic)
    fresh = messy_traffic(
        top - timedelta(hours=2),
        top - timedelta(hours=1),
        events=600,
        seed=29,
        max_late=timedelta(minutes=30),
    )
    produce(kafka, fresh.messages, chunk_rows=5_000)
    with deployment(
        tmp_path, pg_database, CLICKSTREAM_KAFKA_BOOTSTRAP=broker.bootstrap, CLICKSTREAM_TOPIC=topic
    ) as running:
        # Operators' CLI: hold the sensors, so the backfill is queued before the hour is seen.
        for name in sorted(SENSOR_NAMES):
            running.cli("sensor", "stop", name)
        from clickstream_assets.marts import marts

        # Four weeks: a week per run (the marts' backfill policy), so the queue holds runs.
        days = [(top.date() - timedelta(days=d)).isoformat() for d in range(29, 1, -1)]
        backfill_id = f"week{uuid.uuid4().hex[:6]}"
        running.instance.add_backfill(
            PartitionBackfill.from_asset_partitions(
                backfill_id=backfill_id,
                asset_graph=defs.resolve_asset_graph(),
                partition_names=days,
                asset_selection=list(marts.keys),
                backfill_timestamp=time.time(),
                tags={},
                dynamic_partitions_store=running.instance,
                all_partitions=False,
                title="reprocess past weeks",
                description=None,
                run_config=None,
            )
        )
        running.start_daemon()

        def backfill_runs():
            return [r for r in running.runs() if r.dagster_run.tags.get("dagster/backfill")]

        def queue_is_holding_the_backfill() -> bool:
            statuses = {r.dagster_run.status for r in backfill_runs()}
            return DagsterRunStatus.QUEUED in statuses and len(backfill_runs()) >= 2

        running.wait(queue_is_holding_the_backfill, "backfill runs waiting in the queue")
        running.cli("sensor", "start", landing_sensor.name)
        running.wait(
            lambda: (
                running.instance.get_backfill(backfill_id).status != BulkActionStatus.REQUESTED
                and all(r.dagster_run.status in FINISHED for r in running.runs())
                and any(_stage(r) == "landing" for r in running.runs())
            ),
            "the backfill and the landing finishing",
        )
        runs = running.runs()

    backfill = [r for r in runs if r.dagster_run.tags.get("dagster/backfill") == backfill_id]
    landing = sorted((r for r in runs if _stage(r) == "landing"), key=lambda r: r.create_timestamp)
    # A week per run (the marts' backfill policy), each under the backfill's tag.
    assert sorted(
        (r.dagster_run.tags[RANGE_START_TAG], r.dagster_run.tags[RANGE_END_TAG]) for r in backfill
    ) == [(days[k], days[k + 6]) for k in range(0, len(days), MART_RUN_DAYS)]
    assert all(r.dagster_run.status == DagsterRunStatus.SUCCESS for r in runs)
    # The hour closed when the sensor started; one more if the wall clock crossed an hour since.
    assert 1 <= len(landing) <= 2
    assert all(r.dagster_run.tags["dagster/priority"] == "10" for r in landing)
    land = landing[0]
    # Landed first: backfill runs queued before the landing was requested started after it.
    overtaken = [
        r
        for r in backfill
        if r.create_timestamp < land.create_timestamp and r.start_time > land.start_time
    ]
    assert overtaken, [(r.create_timestamp, r.start_time) for r in backfill]
    # The queue's limits: one backfill run at a time, never more than max_concurrent_runs.
    spans = sorted((r.start_time, r.end_time) for r in backfill)
    assert all(end <= next_start for (_, end), (next_start, _) in pairwise(spans))
    edges = sorted([(r.start_time, 1) for r in runs] + [(r.end_time, -1) for r in runs])
    in_progress = [sum(step for _, step in edges[: i + 1]) for i in range(len(edges))]
    assert max(in_progress) <= 4
    # And the fresh hour holds what was produced in it.
    ledger = Ledger(LakeResource(url=str(tmp_path / "lake")))
    manifests = ledger.manifests(ledger.recorded_hours())
    assert sum(m.rows for m in manifests.values()) == fresh.messages.num_rows
    assert AssetKey("raw_events") in {k for r in landing for k in r.dagster_run.asset_selection}
