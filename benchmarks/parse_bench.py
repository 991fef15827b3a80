"""The landing parse alone: `core.contract.parse_events` over the generator's messy traffic.

    .venv/bin/python benchmarks/parse_bench.py [--rows 100000,500000] [--small 1000] [--profile]

Prints CPU seconds per million rows at each size (best of --repeat), the fixed cost of a call on
a small table, and with --profile DuckDB's operator profile of one call. Before timing, each
size is checked against the generator's own truth (valid messages have no reason, invalid ones
have one; a valid message's event_id, event_type, device_id and platform are what was
generated), so a faster parse that breaks the contract prints an error instead of a figure.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402
import pyarrow as pa  # noqa: E402

from clickstream_tools.generator import TrafficSpec, generate  # noqa: E402
from core.contract import PLATFORMS, parse_events  # noqa: E402
from resources.event_log import RECORD_SCHEMA  # noqa: E402

DAY = datetime(2026, 11, 20, tzinfo=UTC)


def records(rows: int, *, seed: int = 7) -> tuple[pa.Table, pl.DataFrame]:
    """`rows` Kafka records of a day's traffic (duplicates, skewed clocks, late and malformed
    messages at the generator's rates, the malformed ones 10x as often), and its truth."""
    spec = TrafficSpec(
        start=DAY,
        end=DAY + timedelta(days=1),
        events=rows,
        seed=seed,
        malformed_rate=0.05,
        receive_until=DAY + timedelta(days=1, hours=6),
    )
    traffic = generate(spec)
    messages = traffic.messages.slice(0, rows)
    n = messages.num_rows
    table = pa.table(
        [
            pa.array([0] * n, pa.int32()),
            pa.array(range(n), pa.int64()),
            messages.column("timestamp_ms").cast(pa.timestamp("ms", tz="UTC")),
            messages.column("key").cast(pa.binary()),
            messages.column("value").cast(pa.binary()),
        ],
        schema=RECORD_SCHEMA,
    )
    return table, traffic.truth.slice(0, n)


def check(parsed: pa.Table, truth: pl.DataFrame) -> None:
    """The generator's expectations, computed by the generator, not by the parse."""
    # Row order is not part of parse_events' contract: the offsets are the message indexes.
    got = pl.from_arrow(
        parsed.select(["kafka_offset", "reason", "event_id", "event_type", "device_id", "platform"])
    )
    assert isinstance(got, pl.DataFrame)
    got = got.sort("kafka_offset").drop("kafka_offset")
    want = truth.select(
        "valid",
        "platform_text",
        pl.col("event_id").alias("want_event_id"),
        pl.col("event_type").alias("want_event_type"),
        pl.col("device_id").alias("want_device_id"),
    )
    both = pl.concat([got, want], how="horizontal")
    # Messages broken on purpose carry a reason; the generator's valid ones carry none, except
    # those the contract rejects for their clock (an event time before the start date).
    wrongly_valid = both.filter(~pl.col("valid") & pl.col("reason").is_null())
    if wrongly_valid.height:
        raise AssertionError(f"{wrongly_valid.height} injected messages parsed as valid")
    valid = both.filter(pl.col("valid"))
    rejected = valid.filter(
        pl.col("reason").is_not_null() & (pl.col("reason") != "before_start_date")
    )
    if rejected.height:
        raise AssertionError(f"{rejected.height} valid messages rejected: {rejected.head(3)}")
    platform = pl.when(pl.col("platform_text").is_in(PLATFORMS)).then("platform_text")
    mismatched = valid.filter(pl.col("reason").is_null()).filter(
        (pl.col("event_id") != pl.col("want_event_id"))
        | (pl.col("event_type") != pl.col("want_event_type"))
        | (pl.col("device_id") != pl.col("want_device_id"))
        | (pl.col("platform") != platform.otherwise(pl.lit("other")))
    )
    if mismatched.height:
        raise AssertionError(f"{mismatched.height} valid messages typed wrongly")


def cpu_per_call(table: pa.Table, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        parse_events(table, start=DAY)
        best = min(best, time.process_time() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="100000,500000")
    parser.add_argument("--small", type=int, default=1000, help="rows of the fixed-cost call")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="DuckDB's profile of one call")
    args = parser.parse_args()
    sizes = [int(s) for s in args.rows.split(",")]
    table, truth = records(max(sizes))
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")
    parse_events(table.slice(0, args.small), start=DAY)  # the thread's connection, opened once
    small = cpu_per_call(table.slice(0, args.small), args.repeat * 3)
    print(f"fixed cost: {small * 1e3:.1f} ms CPU a call of {args.small:,} rows")
    for size in sizes:
        part = table.slice(0, size)
        check(parse_events(part, start=DAY), truth.slice(0, size))
        cpu = cpu_per_call(part, args.repeat)
        started = time.perf_counter()
        parse_events(part, start=DAY)
        wall = time.perf_counter() - started
        print(
            f"{size:>9,} rows: {cpu / size * 1e6:.2f} CPU-s per million rows "
            f"({cpu:.2f} CPU-s a call, {wall:.2f} s wall; checked against the generator)"
        )
    if args.profile:
        from core import contract

        con = contract._connection()
        con.execute("pragma enable_profiling = 'query_tree'")
        try:
            parse_events(table.slice(0, sizes[0]), start=DAY)
        finally:
            con.execute("pragma disable_profiling")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
