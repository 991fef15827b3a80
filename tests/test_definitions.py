"""The code location loads as Dagster sees it, and bad configuration fails at start with a
message that says what to fix, before any output."""

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dagster import AssetKey

from clickstream_assets.definitions import defs
from clickstream_assets.landing import land_hours
from core.ledger import MANIFESTS
from core.settings import ConfigError, Settings, parse_duration
from resources.event_log import InMemoryKafka, KafkaUnavailable
from resources.kafka import KafkaResource
from resources.lake import LakeResource
from resources.lake_store import LakeUnavailable

ROOT = Path(__file__).resolve().parent.parent


def test_dagster_validates_the_workspace(tmp_path):
    env = os.environ | {"DAGSTER_HOME": str(tmp_path)}
    dagster = Path(sys.executable).parent / "dagster"
    result = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_graph_runs_from_the_topic_to_the_marts():
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert {"kafka_topic", "raw_events", "events", "stg_events", "fct_daily_active_users"} <= keys
    assert AssetKey("events") in graph.get(AssetKey("stg_events")).parent_keys
    assert AssetKey("raw_events") in graph.get(AssetKey("events")).parent_keys
    assert {s.name for s in defs.sensors or []} == {
        "landing_sensor",
        "reconcile_sensor",
        "slice_sensor",
    }
    assert defs.get_job_def("land_open_hour").name == "land_open_hour"


@pytest.mark.parametrize(
    ("variable", "value", "hint"),
    [
        ("CLICKSTREAM_ALLOWED_LATENESS", "three hours", "such as 30m, 3h or 1d"),
        ("CLICKSTREAM_START_DATE", "01/01/2026", "use YYYY-MM-DD"),
        ("CLICKSTREAM_LAKE_URL", "gs://bucket/lake", "s3://bucket/prefix"),
        # Every process of a deployment must share the lake: one process's memory cannot hold it.
        ("CLICKSTREAM_LAKE_URL", "memory://lake", "s3://bucket/prefix"),
        ("CLICKSTREAM_TOPIC", " ", "name the events topic"),
    ],
)
def test_a_bad_setting_names_the_variable_and_the_fix(variable, value, hint):
    with pytest.raises(ConfigError) as error:
        Settings.from_env({variable: value})
    assert variable in str(error.value) and hint in str(error.value)


def test_durations():
    assert parse_duration("90m", variable="X") == timedelta(minutes=90)
    assert parse_duration("1d", variable="X") == timedelta(days=1)


def test_defaults_work_on_one_machine():
    settings = Settings.from_env({})
    assert settings.kafka_bootstrap == "localhost:9092"
    assert settings.topic == "clickstream.events"
    assert settings.allowed_lateness == timedelta(hours=3)
    assert os.path.isabs(settings.lake_url) and os.path.isabs(settings.warehouse)


def test_an_unreachable_broker_says_where_it_looked():
    kafka = KafkaResource(bootstrap_servers="127.0.0.1:1", topic="t", request_timeout_ms=2000)
    with pytest.raises(KafkaUnavailable, match=r"no Kafka broker answers at 127\.0\.0\.1:1"):
        kafka.partitions()


def test_an_unwritable_lake_fails_before_any_output(tmp_path):
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    lake = LakeResource(url=str(blocked / "lake"))
    hour = datetime(2026, 11, 27, 10, tzinfo=UTC)
    with pytest.raises(LakeUnavailable, match="set CLICKSTREAM_LAKE_URL"):
        land_hours(InMemoryKafka(), lake, [hour], now=hour + timedelta(hours=1), first_instant=hour)
    assert not (tmp_path / "lake" / MANIFESTS).exists()


def test_the_instance_settings_load(tmp_path, monkeypatch):
    from dagster import DagsterInstance

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))  # as under `dagster dev` and the daemon
    (tmp_path / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        limits = instance.get_concurrency_config().run_queue_config
        assert limits is not None and limits.max_concurrent_runs == 4
        assert limits.tag_concurrency_limits == [{"key": "dagster/backfill", "limit": 1}]
