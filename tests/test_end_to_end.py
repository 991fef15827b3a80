"""Known answers end to end: generated traffic (duplicates, late, malformed, skewed clocks) through
the headless catch-up, compared row by row with marts the generator computes on its own from
its ground truth, never from the pipeline's output."""

from datetime import UTC, datetime, timedelta

import duckdb
import polars as pl
import pytest
from dagster import instance_for_test
from polars.testing import assert_frame_equal

from clickstream_assets.catchup import run_catch_up
from clickstream_assets.generator import TrafficSpec, expected_marts, generate
from clickstream_assets.settings import Settings
from resources.kafka import InMemoryKafka

DAY = datetime(2026, 11, 20, tzinfo=UTC)
UNTIL = DAY + timedelta(days=1, hours=8)


def _mart(warehouse: str, name: str, columns: list[str]) -> pl.DataFrame:
    with duckdb.connect(warehouse, read_only=True) as con:
        frame = pl.from_arrow(
            con.sql(f"select {', '.join(columns)} from {name} order by all").to_arrow_table()
        )
    assert isinstance(frame, pl.DataFrame)
    if "event_hour" in columns:
        frame = frame.with_columns(pl.col("event_hour").dt.convert_time_zone("UTC"))
    return frame


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    env = {
        "CLICKSTREAM_LAKE_URL": str(root / "lake"),
        "CLICKSTREAM_WAREHOUSE": str(root / "warehouse.duckdb"),
        "DAGSTER_HOME": str(root / "dagster"),
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        settings = Settings.from_env()
        traffic = generate(
            TrafficSpec(
                start=DAY,
                end=DAY + timedelta(days=1),
                events=15_000,
                seed=7,
                duplicate_rate=0.05,
                late_rate=0.03,
                malformed_rate=0.01,
                skew_rate=0.01,
                receive_until=DAY + timedelta(days=1, hours=6),
            )
        )
        kafka = InMemoryKafka(partitions=3)
        kafka.produce(traffic.messages)
        with instance_for_test() as instance:
            first = run_catch_up(
                settings,
                until=UNTIL,
                instance=instance,
                resources={"kafka": kafka},
                log=lambda _: None,
            )
            again = run_catch_up(
                settings,
                until=UNTIL,
                instance=instance,
                resources={"kafka": kafka},
                log=lambda _: None,
            )
            yield settings, traffic, first, again


@pytest.mark.parametrize(
    "mart",
    [
        "fct_daily_active_users",
        "fct_daily_active_users_by_platform",
        "fct_daily_title_plays",
        "fct_daily_campaign_impressions",
        "fct_hourly_events",
    ],
)
def test_marts_equal_the_independent_computation(pipeline, mart):
    settings, traffic, _, _ = pipeline
    expected = expected_marts(traffic.truth)[mart]
    got = _mart(settings.warehouse, mart, expected.columns)
    if mart == "fct_daily_active_users":
        # A day whose events were all quarantined still gets its (zero) row on record.
        zero = got.filter(pl.col("events") == 0)
        assert zero.select(pl.exclude("event_date")).sum_horizontal().to_list() == [0] * zero.height
        got = got.filter(pl.col("events") > 0)
    assert got.height > 0
    assert_frame_equal(got, expected.sort(expected.columns), check_dtypes=False)


def test_every_invalid_message_is_quarantined(pipeline):
    settings, traffic, _, _ = pipeline
    invalid = traffic.truth.filter(~pl.col("valid")).height
    assert invalid > 0
    with duckdb.connect(settings.warehouse, read_only=True) as con:
        quarantined = con.execute("select count(*) from quarantined_events").fetchone()
    assert quarantined == (invalid,)


def test_catch_up_is_idempotent(pipeline):
    _, _, first, again = pipeline
    assert {run["stage"] for run in first.runs} == {"landing", "cleaning", "marts"}
    assert all(run["success"] for run in first.runs)
    assert again.runs == []


def test_the_finished_day_is_final_and_at_revision_one(pipeline):
    settings, _, _, _ = pipeline
    row = _mart(
        settings.warehouse, "fct_daily_active_users", ["event_date", "revision", "is_final"]
    )
    first_day = row.filter(pl.col("event_date") == DAY.date())
    assert first_day.rows() == [(DAY.date(), 1, True)]
