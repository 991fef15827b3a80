"""The DuckDB warehouse: the Dagster resource, the mart stamps (what each mart day was built
from), and helpers to read a table as Polars."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import polars as pl
from dagster_duckdb import DuckDBResource

from core.ledger import MartStamp
from core.settings import Settings, load

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


def warehouse_resource(settings: Settings | None = None) -> DuckDBResource:
    """The DuckDB resource on the settings' warehouse file (its directory is created)."""
    settings = settings or load()
    if "://" not in settings.warehouse and not settings.warehouse.startswith(("md:", ":memory:")):
        Path(settings.warehouse).parent.mkdir(parents=True, exist_ok=True)
    return DuckDBResource(database=settings.warehouse)


def read_table(
    warehouse: DuckDBResource, table: str, *, order_by: str | None = None
) -> pl.DataFrame:
    """All rows of a warehouse table (or view) as a Polars frame, for tests and reports.

    Opens the file only for the read: DuckDB allows one writing process, and dbt is one.
    """
    if not _IDENTIFIER.match(table):
        raise ValueError(f"not a table name: {table!r}")
    query = f"select * from {table}"
    if order_by:
        columns = [column.strip() for column in order_by.split(",")]
        if not all(_IDENTIFIER.match(column) for column in columns):
            raise ValueError(f"order_by must list column names: {order_by!r}")
        query += " order by " + ", ".join(columns)
    with warehouse.get_connection() as connection:
        # Days and hours are UTC in the contract, whatever the machine's zone.
        connection.execute("set TimeZone = 'UTC'")
        return connection.sql(query).pl()


def read_mart(path: str, table: str, columns: list[str]) -> pl.DataFrame:
    """`columns` of `table` in the warehouse file at `path`, ordered by all of them, times in
    UTC: the shape in which a mart is compared with an independent computation."""
    if not all(_IDENTIFIER.match(name) for name in [table, *columns]):
        raise ValueError(f"not a table and column names: {table!r}, {columns!r}")
    with duckdb.connect(path, read_only=True) as connection:
        connection.execute("set TimeZone = 'UTC'")
        frame = connection.sql(f"select {', '.join(columns)} from {table} order by all").pl()
    return frame.with_columns(pl.col(pl.Datetime).dt.convert_time_zone("UTC"))


class WarehouseBusy(RuntimeError):
    """Another process is writing the warehouse (DuckDB allows one writer); try again later."""


ROLLUP_TABLE = "int_hourly_activity"
MART_STAMPS_DDL = """
create table if not exists mart_stamps (
    event_date date primary key,
    inputs_digest varchar not null,
    is_final boolean not null,
    landed_through timestamptz,
    built_at timestamptz not null
)
"""


def has_table(connection: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether the warehouse holds table `name` yet (a new warehouse holds none)."""
    found = connection.execute(
        "select count(*) from information_schema.tables where table_name = ?", [name]
    ).fetchone()
    return bool(found and found[0])


def read_mart_stamps(path: str) -> dict[date, MartStamp]:
    """What each mart day records it was built from; empty for a warehouse not built yet."""
    if not Path(path).exists():
        return {}
    try:
        connection = duckdb.connect(path, read_only=True)
    except duckdb.IOException as error:
        raise WarehouseBusy(str(error)) from None
    with connection:
        connection.execute("set TimeZone = 'UTC'")
        if not has_table(connection, "mart_stamps"):
            return {}
        rows = connection.execute(
            "select event_date, inputs_digest, is_final, landed_through from mart_stamps"
        ).fetchall()
    return {
        row[0]: MartStamp(
            event_date=row[0], inputs_digest=row[1], is_final=row[2], landed_through=row[3]
        )
        for row in rows
    }


def read_rollups_built(connection: duckdb.DuckDBPyConnection, day: date) -> dict[datetime, str]:
    """What each event hour of `day` in the hourly rollup was built from (its rows' built_from;
    ledger.rollup_digests): empty before the rollup's first build."""
    if not has_table(connection, ROLLUP_TABLE):
        return {}
    rows = connection.execute(
        f"select event_hour, any_value(built_from) from {ROLLUP_TABLE}"
        " where event_date = ? and built_from is not null group by event_hour",
        [day],
    ).fetchall()
    return {row[0].astimezone(UTC): row[1] for row in rows}


def write_mart_stamp(connection: duckdb.DuckDBPyConnection, stamp: MartStamp) -> None:
    """Record what a mart day was built from: the last write of a mart run."""
    connection.execute(MART_STAMPS_DDL)
    connection.execute(
        "insert or replace into mart_stamps values (?, ?, ?, ?, now())",
        [stamp.event_date, stamp.inputs_digest, stamp.is_final, stamp.landed_through],
    )
