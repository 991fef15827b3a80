"""Helpers shared by test modules: compare the warehouse's marts with an independent truth."""

from __future__ import annotations

import duckdb
import polars as pl
from polars.testing import assert_frame_equal

from clickstream_assets.generator import expected_marts

MARTS = (
    "fct_daily_active_users",
    "fct_daily_active_users_by_platform",
    "fct_daily_title_plays",
    "fct_daily_campaign_impressions",
    "fct_hourly_events",
)


def read_mart(warehouse: str, name: str, columns: list[str]) -> pl.DataFrame:
    """`columns` of mart `name`, ordered by all of them; hours in UTC."""
    with duckdb.connect(warehouse, read_only=True) as con:
        frame = pl.from_arrow(
            con.sql(f"select {', '.join(columns)} from {name} order by all").to_arrow_table()
        )
    assert isinstance(frame, pl.DataFrame)
    if "event_hour" in columns:
        frame = frame.with_columns(pl.col("event_hour").dt.convert_time_zone("UTC"))
    return frame


def assert_mart_matches(warehouse: str, mart: str, truth: pl.DataFrame) -> None:
    """Mart `mart` in the warehouse equals the generator's own computation from `truth`."""
    expected = expected_marts(truth)[mart]
    got = read_mart(warehouse, mart, expected.columns)
    if mart == "fct_daily_active_users":
        # A day whose events were all quarantined still gets its (zero) row on record.
        zero = got.filter(pl.col("events") == 0)
        assert zero.select(pl.exclude("event_date")).sum_horizontal().to_list() == [0] * zero.height
        got = got.filter(pl.col("events") > 0)
    assert got.height > 0, f"{mart} is empty"
    assert_frame_equal(got, expected.sort(expected.columns), check_dtypes=False)


def assert_marts_match(warehouse: str, truth: pl.DataFrame) -> None:
    """Every contract mart in the warehouse equals the independent computation from `truth`."""
    for mart in MARTS:
        assert_mart_matches(warehouse, mart, truth)
