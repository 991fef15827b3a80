"""Known answers end to end: generated traffic (duplicates, late, malformed, skewed clocks) through
the headless catch-up, compared row by row with marts the generator computes on its own from
its ground truth, never from the pipeline's output."""

from datetime import UTC, datetime, timedelta
from functools import partial

import duckdb
import polars as pl
import pytest
from dagster import instance_for_test

from clickstream_tools.catchup import run_catch_up
from resources.event_log import InMemoryKafka
from resources.warehouse import read_mart
from tests.helpers import (
    MARTS,
    assert_mart_matches,
    configured,
    local_env,
    messy_traffic,
)

DAY = datetime(2026, 11, 20, tzinfo=UTC)
UNTIL = DAY + timedelta(days=1, hours=8)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    with configured(local_env(root)) as settings:
        traffic = messy_traffic(DAY, DAY + timedelta(days=1), events=15_000, seed=7)
        kafka = InMemoryKafka(partitions=3)
        kafka.produce(traffic.messages)
        with instance_for_test() as instance:
            catch_up = partial(
                run_catch_up,
                settings,
                until=UNTIL,
                instance=instance,
                resources={"kafka": kafka},
                log=lambda _: None,
            )
            first = catch_up()
            again = catch_up()
            yield settings, traffic, first, again


@pytest.mark.parametrize("mart", MARTS)
def test_marts_equal_the_independent_computation(pipeline, mart):
    settings, traffic, _, _ = pipeline
    assert_mart_matches(settings.warehouse, mart, traffic.truth)


def test_every_invalid_message_is_quarantined(pipeline):
    settings, traffic, _, _ = pipeline
    invalid = traffic.truth.filter(~pl.col("valid")).height
    assert invalid > 0
    with duckdb.connect(settings.warehouse, read_only=True) as con:
        quarantined = con.execute("select count(*) from stg_quarantined_events").fetchone()
    assert quarantined == (invalid,)


def test_catch_up_is_idempotent(pipeline):
    _, _, first, again = pipeline
    assert {run["stage"] for run in first.runs} == {"landing", "cleaning", "marts"}
    assert all(run["success"] for run in first.runs)
    assert again.runs == []


def test_the_finished_day_is_final_and_at_revision_one(pipeline):
    settings, _, _, _ = pipeline
    row = read_mart(
        settings.warehouse, "fct_daily_active_users", ["event_date", "revision", "is_final"]
    )
    first_day = row.filter(pl.col("event_date") == DAY.date())
    assert first_day.rows() == [(DAY.date(), 1, True)]
