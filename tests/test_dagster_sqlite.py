"""The local instance's SQLite storage (resources/dagster_sqlite.py), loaded from the repository's
dagster.yaml as `make demo`, `make ui` and catch-up load it: runs and events land where Dagster's
own SQLite storage keeps them, another instance on the same DAGSTER_HOME reads them (as the
webserver does), a run's live log is still pushed to a watcher, and each database file is opened
through one engine however many events a run stores."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
from dagster import (
    AssetCheckResult,
    AssetKey,
    DagsterInstance,
    asset,
    asset_check,
    materialize,
)
from dagster._core.instance.ref import InstanceRef

import resources.dagster_sqlite as dagster_sqlite

REPO = Path(__file__).resolve().parent.parent


@asset
def numbers() -> list[int]:
    return [1, 2, 3]


@asset_check(asset=numbers)
def three_numbers(numbers: list[int]) -> AssetCheckResult:
    return AssetCheckResult(passed=len(numbers) == 3)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A DAGSTER_HOME with the repository's instance settings, as make and catch-up set it up."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def test_runs_and_events_are_stored_where_dagster_keeps_them_and_read_by_another_instance(
    home, monkeypatch
):
    made: list[str] = []
    make = dagster_sqlite._engine
    monkeypatch.setattr(dagster_sqlite, "_engine", lambda url: made.append(url) or make(url))
    with DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_ref().storage_data.class_name == "SqliteStorage"
        result = materialize([numbers, three_numbers], instance=instance)
        assert result.success
        run_id = result.run_id
        stored = instance.get_records_for_run(run_id).records
    # Three files written (the runs, the run's events, the cross-run index), one engine each.
    assert len(stored) >= 20
    assert sorted(Path(url.removeprefix("sqlite:///")).name for url in made) == sorted(
        ["runs.db", "index.db", f"{run_id}.db"]
    )
    assert (home / "history" / "runs.db").exists()
    assert (home / "history" / "runs" / f"{run_id}.db").exists()

    with DagsterInstance.from_config(str(home)) as reader:  # as the webserver, in another process
        run = reader.get_run_by_id(run_id)
        assert run is not None and run.is_success
        assert len(reader.get_records_for_run(run_id).records) == len(stored)
        materialization = reader.get_latest_materialization_event(AssetKey("numbers"))
        assert materialization is not None and materialization.run_id == run_id
        check = reader.event_log_storage.get_latest_asset_check_execution_by_key(
            [three_numbers.check_key]
        )[three_numbers.check_key]
        assert check.run_id == run_id and check.status.value == "SUCCEEDED"


def test_a_watcher_sees_the_events_another_instance_stores(home):
    with DagsterInstance.from_config(str(home)) as writer:
        result = materialize([numbers], instance=writer)
        run = writer.get_run_by_id(result.run_id)
        last = writer.get_records_for_run(result.run_id).cursor
        with DagsterInstance.from_config(str(home)) as webserver:
            seen: list[str] = []
            arrived = threading.Event()

            def callback(event, _cursor) -> None:
                seen.append(event.message)
                arrived.set()

            webserver.event_log_storage.watch(result.run_id, last, callback)
            try:
                writer.report_engine_event("one more line", run)
                assert arrived.wait(20), "the watcher never saw the event"
            finally:
                webserver.event_log_storage.end_watch(result.run_id, callback)
    assert seen == ["one more line"]


def test_commits_are_not_synced_and_the_files_stay_in_wal_mode(home):
    with DagsterInstance.from_config(str(home)) as instance:
        result = materialize([numbers], instance=instance)
        storage = instance.event_log_storage
        with storage.run_connection(result.run_id) as conn:
            assert conn.exec_driver_sql("pragma synchronous").scalar() == 0
    for file in (home / "history" / "runs.db", home / "history" / "runs" / "index.db"):
        with sqlite3.connect(file) as conn:
            assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"


def test_postgres_appended_to_the_settings_replaces_the_local_storage(tmp_path):
    (tmp_path / "dagster.yaml").write_text(
        (REPO / "dagster.yaml").read_text() + (REPO / "deploy/dagster-postgres.yaml").read_text()
    )
    ref = InstanceRef.from_dir(str(tmp_path))
    assert ref.storage_data.class_name == "DagsterPostgresStorage"
    assert ref.run_coordinator_data.class_name == "QueuedRunCoordinator"
