"""`make bench`: each stage of the pipeline beside its peer, measured in one run on this machine.

    .venv/bin/python benchmarks/bench.py [--events 200000] [--hour-sizes 1000000,2000000]
                                         [--s3-latency-ms 20] [--no-spark]
                                         [--only producer,landing,...,s3-marts]

Sections (each prints as it finishes; a Markdown table of everything comes last):
- producer: KafkaResource.produce vs a bare kafka-python producer (default settings), same
  messages, embedded broker, 4 partitions.
- landing: land_hours from that broker (one process, a partition per core in threads) vs bare
  kafka-python consumers reading the same topic and partitions, a process per core.
- hour: landing and cleaning one ingest hour of each size in --hour-sizes, each in a fresh
  subprocess, for throughput and peak resident memory above the process's start. The records
  come from a Parquet file through the EventLog interface (no broker, no Kafka client), so the
  figures are the pipeline's own.
- day: the realistic day landed above, end to end through the headless catch-up (landing,
  cleaning, marts as Dagster runs); the marts' cost per day rebuilt and for an empty day (the
  fixed cost), then silver rows/s.
- spark: the same bronze -> silver -> marts job on Spark local[2] (pip install -e '.[bench]'),
  beside this pipeline's cleaning + marts from the same bronze.
- s3: the same day caught up into a lake on a real S3 API (moto's server on loopback, in this
  process), stage by stage, with the S3 requests sent, by operation, and the bytes fetched; then
  again with each request --s3-latency-ms longer (an object store's round trip, which loopback
  lacks): what the requests that wait on each other cost.
- rollup: the hourly rollup at reduced scale (--rollup-events, default 1/100 of an hour at a
  billion events a day): a deployment caught up with the hours before, then the time from the
  close of the peak hour to its rows in the warehouse, beside the README's model.
- marts-day: a day of 24 silver hours of --marts-hour-events each: the day's marts after one
  hour is cleaned again (only its hourly rollup reads silver) beside every hour re-read.
- marts-week: a week of such days (--marts-week-hour-events an hour): its marts in one run, as
  a backfill or a catch-up builds them, beside a run per day.
- s3-marts: 4 silver hours of --marts-hour-events each in a lake on moto's S3 server: the
  day's marts (a cold run) and the bytes they fetched from S3, beside the silver's size.

Wall-clock figures on a shared machine move with its load; CPU seconds are printed beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

DAY = datetime(2026, 11, 20, tzinfo=UTC)
PARTITIONS = 4


@dataclass
class Results:
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)

    def add(self, stage: str, measured: str, peer: str = "", ratio: str = "") -> None:
        self.rows.append((stage, measured, peer, ratio))
        print(f"  {stage}: {measured}" + (f" | {peer}" if peer else "") + f" {ratio}", flush=True)

    def table(self) -> str:
        lines = ["| stage | measured | peer in the same run | ratio |", "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in self.rows]
        return "\n".join(lines)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Timer:
    """Wall and CPU seconds; `workers` is the CPU of child processes that ended inside."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        self.workers = _children_cpu()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu
        self.workers = _children_cpu() - self.workers


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM): unlike getrusage's ru_maxrss, which Linux
    carries over from the parent across exec, it starts afresh in a new process."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def day_traffic(events: int):
    from clickstream_tools.generator import TrafficSpec, generate

    spec = TrafficSpec(
        start=DAY,
        end=DAY + timedelta(days=1),
        events=events,
        seed=1,
        receive_until=DAY + timedelta(days=1, hours=6),
    )
    return generate(spec)


# -- producer ------------------------------------------------------------------------------------


def bare_produce(bootstrap: str, topic: str, messages: pa.Table) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=[bootstrap])
    for key, value, ts in zip(
        messages.column("key").to_pylist(),
        messages.column("value").to_pylist(),
        messages.column("timestamp_ms").to_pylist(),
        strict=True,
    ):
        producer.send(topic, key=key, value=value, timestamp_ms=ts)
    producer.flush()
    producer.close()


def bench_producer(results: Results, bootstrap: str, messages: pa.Table, topic: str) -> None:
    from resources.kafka import KafkaResource

    log = KafkaResource(bootstrap_servers=bootstrap, topic=topic)
    log.create_topic(PARTITIONS)
    KafkaResource(bootstrap_servers=bootstrap, topic=topic + ".bare").create_topic(PARTITIONS)
    with Timer() as ours:
        log.produce(messages)
    with Timer() as bare:
        bare_produce(bootstrap, topic + ".bare", messages)
    n = messages.num_rows
    results.add(
        f"producer, {n:,} messages, {PARTITIONS} partitions",
        f"{n / ours.wall:,.0f} msg/s (CPU {ours.cpu:.1f} s)",
        f"bare kafka-python producer: {n / bare.wall:,.0f} msg/s (CPU {bare.cpu:.1f} s)",
        f"{bare.wall / ours.wall:.2f}x",
    )


# -- landing -------------------------------------------------------------------------------------


def _bare_consume(bootstrap: str, topic: str, partition: int) -> int:
    """What any consumer that keeps the records does: assign, seek, poll to the high watermark,
    take each record's offset, timestamp, key and value."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=[bootstrap],
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    tp = TopicPartition(topic, partition)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    kept = 0
    position = 0
    while True:
        polled = consumer.poll(timeout_ms=500, max_records=20_000).get(tp, [])
        if polled:
            columns = (
                [r.offset for r in polled],
                [r.timestamp for r in polled],
                [r.key for r in polled],
                [r.value for r in polled],
            )
            kept += len(columns[0])
            position = polled[-1].offset + 1
        high = consumer.highwater(tp)
        if high is not None and position >= high:
            break
    consumer.close()
    return kept


def bench_landing(results: Results, bootstrap: str, topic: str, lake_dir: str, n: int) -> None:
    from clickstream_assets.landing import land_hours
    from resources.kafka import KafkaResource
    from resources.lake import LakeResource
    from sensors.plan import closed_hours

    log = KafkaResource(bootstrap_servers=bootstrap, topic=topic)
    until = DAY + timedelta(days=1, hours=7)
    hours = closed_hours(DAY, until, limit=1000)
    workers = max(1, min(PARTITIONS, os.cpu_count() or 1, 16))  # every core, for the bare ones
    with Timer() as ours:
        manifests = land_hours(log, LakeResource(url=lake_dir), hours, now=until, first_instant=DAY)
    landed = sum(m.rows for m in manifests)
    with Timer() as bare, ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        kept = sum(pool.map(_bare_consume, [bootstrap] * 4, [topic] * 4, range(PARTITIONS)))
    assert landed == kept == n, (landed, kept, n)
    results.add(
        f"landing, {n:,} records, {PARTITIONS} partitions, {os.cpu_count()} cores",
        f"{n / ours.wall:,.0f} rec/s (CPU {ours.cpu:.1f} s)",
        f"bare kafka-python consumers, same topic, {workers} processes: {n / bare.wall:,.0f} rec/s "
        f"(CPU {bare.cpu + bare.workers:.1f} s); load average {os.getloadavg()[0]:.1f}",
        f"{bare.wall / ours.wall:.2f}x",
    )


# -- one hour, in a subprocess -------------------------------------------------------------------


def _parquet_log(path: str):
    """An EventLog over a Parquet file of one partition's records, streamed in batches: the log
    itself holds almost nothing in memory."""
    from resources.event_log import RECORD_SCHEMA, EventLog, Positioned

    class _Log(EventLog):
        topic = "bench"

        def partitions(self) -> list[int]:
            return [0]

        def beginning_offset(self, partition: int) -> int:
            return 0

        def read(self, partition, start_offset, end_offset=None) -> Iterator[Positioned]:
            # Not pre-buffered: pyarrow keeps every pre-buffered row group of the file until
            # the read ends (+0.9 GiB of the 8M-event hour's landing peak was this log's).
            file = pq.ParquetFile(path, pre_buffer=False)
            position = 0
            for batch in file.iter_batches(batch_size=20_000, columns=RECORD_SCHEMA.names):
                position += batch.num_rows
                yield pa.RecordBatch.from_arrays(batch.columns, schema=RECORD_SCHEMA), position

        def high_watermarks(self, positions):
            return {p: pq.ParquetFile(path).metadata.num_rows for p in positions}

        def commit(self, offsets) -> None:
            pass

        def committed(self):
            return {}

        def produce(self, records) -> None:
            raise NotImplementedError

        def create_topic(self, partitions: int) -> None:
            pass

    return _Log()


def write_hour_records(path: str, events: int, hour: datetime) -> int:
    """Generate `events` events of one hour, all received within it, as Kafka records of one
    partition, in chunks of 1M so that generating 8M does not need 8M in memory at once."""
    from clickstream_tools.generator import TrafficSpec, generate
    from resources.event_log import RECORD_SCHEMA

    rows = 0
    with pq.ParquetWriter(path, RECORD_SCHEMA) as writer:
        for seed, offset in enumerate(range(0, events, 1_000_000)):
            chunk = min(1_000_000, events - offset)
            spec = TrafficSpec(
                start=hour,
                end=hour + timedelta(hours=1),
                events=chunk,
                seed=100 + seed,
                late_rate=0.0,
                skew_rate=0.0,
                receive_until=hour + timedelta(hours=1),
            )
            messages = generate(spec).messages.sort_by("timestamp_ms")
            n = messages.num_rows
            writer.write_table(
                pa.table(
                    [
                        pa.array([0] * n, pa.int32()),
                        pa.array(range(rows, rows + n), pa.int64()),
                        messages.column("timestamp_ms").cast(pa.timestamp("ms", tz="UTC")),
                        messages.column("key").cast(pa.binary()),
                        messages.column("value").cast(pa.binary()),
                    ],
                    schema=RECORD_SCHEMA,
                ),
                row_group_size=100_000,
            )
            rows += n
    return rows


def hour_stage(stage: str, records: str, lake_dir: str, hour_iso: str) -> dict:
    """Run in a fresh process: land or clean one hour; time it and its peak RSS above start."""
    from clickstream_assets.cleaning import clean_hour
    from clickstream_assets.landing import land_hours
    from resources.lake import LakeResource

    hour = datetime.fromisoformat(hour_iso)
    lake = LakeResource(url=lake_dir)
    start = rss_bytes()
    with Timer() as timer:
        if stage == "landing":
            end = hour + timedelta(hours=1)
            landed = land_hours(_parquet_log(records), lake, [hour], now=end, first_instant=DAY)
            rows = landed[0].rows
        else:
            end = hour + timedelta(hours=1)
            cleaned = clean_hour(lake, hour, first_instant=DAY, now=end)
            rows = cleaned.stamp.bronze_rows
    return {
        "rows": rows,
        "seconds": timer.wall,
        "cpu": timer.cpu,
        "peak_above_start_mib": (peak_rss_bytes() - start) / 2**20,
    }


def _in_subprocess(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--hour-stage", *args],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_hours(results: Results, sizes: list[int], workdir: Path) -> None:
    hour = DAY + timedelta(hours=20)
    measured = {}
    for size in sizes:
        records = str(workdir / f"hour-{size}.parquet")
        lake = str(workdir / f"hour-lake-{size}")
        write_hour_records(records, size, hour)
        measured[size] = {
            stage: _in_subprocess(stage, records, lake, hour.isoformat())
            for stage in ("landing", "cleaning")
        }
        os.remove(records)
    for stage in ("landing", "cleaning"):
        for size in sizes:
            m = measured[size][stage]
            results.add(
                f"{stage} one hour of {size / 1e6:g}M events (from a Parquet log, one process)",
                f"{m['rows'] / m['seconds']:,.0f} ev/s, peak +{m['peak_above_start_mib']:,.0f} MiB",
                "",
                f"{m['seconds']:.1f} s (CPU {m['cpu']:.1f} s)",
            )


# -- the realistic day, end to end ---------------------------------------------------------------


def _deployment(root: Path, bootstrap: str, topic: str):
    """Settings of a deployment on `topic` whose lake, warehouse and Dagster home are under
    `root` (set in the environment, as a deployment would)."""
    from core.settings import Settings

    os.environ.update(
        {
            "CLICKSTREAM_KAFKA_BOOTSTRAP": bootstrap,
            "CLICKSTREAM_TOPIC": topic,
            "CLICKSTREAM_LAKE_URL": str(root / "lake"),
            "CLICKSTREAM_WAREHOUSE": str(root / "warehouse.duckdb"),
            "DAGSTER_HOME": str(root / "dagster"),
        }
    )
    return Settings.from_env()


def bench_day(results: Results, bootstrap: str, topic: str, workdir: Path, n: int) -> dict:
    """Catch-up from the broker topic into a fresh lake and warehouse: every stage as the demo
    runs it. Returns the stage seconds for the Spark comparison."""
    root = workdir / "day"
    settings = _deployment(root, bootstrap, topic)
    from dagster import materialize

    from clickstream_assets.definitions import all_assets, all_checks, build_resources
    from clickstream_assets.marts import marts
    from clickstream_tools.catchup import instance_for, run_catch_up

    until = DAY + timedelta(days=1, hours=7)
    with instance_for(settings) as instance, Timer() as total:
        report = run_catch_up(settings, until=until, instance=instance, log=lambda _: None)
    stages = report.seconds_by_stage()
    mart_runs = [r["partitions"] for r in report.runs if r["stage"] == "marts"]
    results.add(
        f"end to end: catch-up of {n:,} records (a day) from the broker",
        f"{n / total.wall:,.0f} ev/s",
        ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in stages.items())
        + f"; mart runs: {', '.join(mart_runs)}",
        f"{total.wall:.1f} s",
    )

    def build(day: str) -> Timer:
        with instance_for(settings) as instance:
            with Timer() as timer:
                result = materialize(
                    [*all_assets, *all_checks],
                    selection=list(marts.keys),
                    partition_key=day,
                    resources=build_resources(settings, as_of=until),
                    instance=instance,
                    run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
                )
            assert result.success
            return timer

    import duckdb

    with duckdb.connect(settings.warehouse, read_only=True) as con:
        silver = con.execute(
            "select count(*) from stg_events where event_date = ?", [DAY.date()]
        ).fetchone()[0]
    # The catch-up above already parsed the dbt project in this process: these are warm runs.
    full = build(DAY.date().isoformat())
    empty = build((DAY - timedelta(days=5)).date().isoformat())
    results.add(
        "marts, one day rebuilt (a Dagster run: dbt in-process, 9 models, 16 data tests)",
        f"{full.wall:.1f} s (CPU {full.cpu:.1f} s) for {silver:,} silver rows",
        f"an empty day, the fixed cost: {empty.wall:.1f} s (CPU {empty.cpu:.1f} s)",
        f"{silver / (full.wall - empty.wall):,.0f} rows/s above the fixed cost"
        if full.wall > empty.wall
        else "the day's rows cost less than the runs' noise",
    )
    return {"root": root, "stages": stages, "silver_rows": silver}


@contextmanager
def _s3_bucket(bucket: str, latency: float = 0.0) -> Iterator[Counter[str]]:
    """A bucket on moto's S3 server on loopback, with the environment pointed at it, and the S3
    requests of every client in this process (the lake's, and the one dbt-duckdb attaches to
    the marts' DuckDB) counted by operation, with the bytes their GETs fetched. Each request
    waits `latency` seconds before it is sent: the round trip to an object store, which
    loopback lacks (requests sent together wait together, as they would there)."""
    import boto3
    import s3fs
    from aiobotocore.client import AioBaseClient
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    requests: Counter[str] = Counter()
    api_call = AioBaseClient._make_api_call

    async def counted(client, operation, params):
        requests[operation] += 1
        await asyncio.sleep(latency)
        response = await api_call(client, operation, params)
        if operation == "GetObject":
            requests["bytes fetched"] += response["ContentLength"]
        return response

    try:
        host, port = server.get_host_and_port()
        os.environ.update(
            AWS_ENDPOINT_URL=f"http://{host}:{port}",
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1",
        )
        boto3.client("s3").create_bucket(Bucket=bucket)
        s3fs.S3FileSystem.clear_instance_cache()  # none is left pointing at an earlier server
        AioBaseClient._make_api_call = counted
        yield requests
    finally:
        AioBaseClient._make_api_call = api_call
        server.stop()


def _requests(requests: Counter[str]) -> str:
    fetched = requests["bytes fetched"]
    counts = [(name, count) for name, count in requests.most_common() if name != "bytes fetched"]
    return (
        f"{sum(count for _, count in counts):,} S3 requests: "
        + ", ".join(f"{name} {count:,}" for name, count in counts)
        + f"; {fetched / 2**20:,.1f} MiB fetched"
    )


def bench_s3(
    results: Results, bootstrap: str, topic: str, workdir: Path, n: int, latency: float
) -> None:
    """The day's catch-up from the broker into a lake on S3 (moto's server on loopback): what
    the object store's round trips add to each stage, and how many requests were sent; on
    loopback, then with each request `latency` seconds longer."""
    from clickstream_tools.catchup import instance_for, run_catch_up
    from core.settings import Settings

    for delay in (0.0, latency):
        bucket = f"bench-{delay * 1000:.0f}ms"  # moto's buckets outlive its server in a process
        with _s3_bucket(bucket, delay) as requests:
            _deployment(workdir / bucket, bootstrap, topic)
            os.environ["CLICKSTREAM_LAKE_URL"] = f"s3://{bucket}/lake"
            settings = Settings.from_env()
            until = DAY + timedelta(days=1, hours=7)
            requests.clear()
            with instance_for(settings) as instance, Timer() as total:
                report = run_catch_up(settings, until=until, instance=instance, log=lambda _: None)
        stages = report.seconds_by_stage()
        results.add(
            f"end to end on S3: catch-up of {n:,} records into a lake on moto's S3 server"
            + (f", each request {delay * 1000:.0f} ms longer" if delay else ""),
            f"{n / total.wall:,.0f} ev/s; "
            + ", ".join(f"{stage} {sec:.1f} s" for stage, sec in stages.items())
            + f", the sensors' ticks {total.wall - sum(stages.values()):.1f} s",
            _requests(requests),
            f"{total.wall:.1f} s",
        )


def bench_s3_marts(results: Results, workdir: Path, hour_events: int, hours: int = 4) -> None:
    """A day's marts built from `hours` silver hours of `hour_events` events each
    (`_silver_hours`) in a lake on S3 (moto's server on loopback): the bytes the marts' DuckDB
    fetches, against the silver's size."""
    import s3fs

    from core.ledger import HOUR
    from core.settings import Settings

    settings, write_hour, hour_rows = _silver_hours(workdir / "s3-marts", hour_events)
    for i in range(hours):
        write_hour(DAY + i * HOUR, "first")
    local = Path(settings.lake_url)
    silver = sum(path.stat().st_size for path in (local / "silver").rglob("*.parquet"))
    with _s3_bucket("bench-marts") as requests:
        s3fs.S3FileSystem().put(f"{local}/", "bench-marts/lake/", recursive=True)
        os.environ["CLICKSTREAM_LAKE_URL"] = "s3://bench-marts/lake"
        requests.clear()
        built = _build_marts(Settings.from_env(), DAY + timedelta(days=1), DAY.date())
    results.add(
        f"marts on S3: a day of {hours} silver hours of {hour_rows:,} events "
        f"({silver / 2**20:,.1f} MiB of silver) in a lake on moto's S3 server",
        f"{built.wall:.1f} s (CPU {built.cpu:.1f} s), a cold run",
        _requests(requests),
        f"{requests['bytes fetched'] / silver:.2f}x the silver's bytes fetched",
    )


# -- the hourly rollup after an hour closes ------------------------------------------------------

BILLION_A_DAY_HOUR = 1_000_000_000 // 24


def bench_rollup(results: Results, bootstrap: str, workdir: Path, events: int) -> None:
    """From the close of an ingest hour of `events` records to its rollup in the warehouse, in a
    deployment that has caught up with the hours before it (landed, cleaned, marts built): the
    catch-up at the close lands the hour, cleans the event hours it holds and rebuilds the day.
    Twice: the hour landed whole at its close, and landed in 12 slices as it arrived (every
    5 minutes), so that the close lands only the last."""
    from clickstream_tools.generator import TrafficSpec, generate

    hour = DAY + timedelta(hours=20)  # the diurnal peak
    close = hour + timedelta(hours=1)
    # The three hours before, and their late records and retries that arrive in the hour.
    before = generate(
        TrafficSpec(start=hour - timedelta(hours=3), end=hour, events=events // 4, seed=7)
    ).messages
    during = generate(
        TrafficSpec(start=hour, end=close, events=events, seed=8, receive_until=close)
    ).messages
    earlier = _received(before, None, hour)
    closing = pa.concat_tables([_received(before, hour, close), during]).sort_by("timestamp_ms")
    n, cores = closing.num_rows, os.cpu_count() or 1
    # The model's per-record cost of landing and cleaning (README, "Hourly rollups").
    modelled = n * 1_150 / BILLION_A_DAY_HOUR / cores
    for slices in (0, 12):
        timer, stages, sliced = _rollup(bootstrap, workdir, earlier, closing, hour, slices)
        how = (
            f"landed every {60 // slices} minutes as it arrived ({sliced:.1f} s of slices before "
            "the close)"
            if slices
            else "landed whole at the close"
        )
        results.add(
            f"hourly rollup after an ingest hour of {n:,} records closes "
            f"(1/{BILLION_A_DAY_HOUR / n:.0f} of a billion-a-day hour), {how}",
            f"{timer.wall:.1f} s (CPU {timer.cpu + timer.workers:.1f} s): "
            + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in stages.items()),
            f"the README's model for landing and cleaning it all on {cores} cores: "
            f"{modelled:.1f} s plus the day's marts",
            f"{n / timer.wall:,.0f} rec/s",
        )


def _received(messages: pa.Table, start: datetime | None, end: datetime) -> pa.Table:
    """The messages received in [start, end)."""
    received = pc.field("timestamp_ms")
    ms = messages.schema.field("timestamp_ms").type
    mask = received < pa.scalar(int(end.timestamp() * 1000), ms)
    if start is not None:
        mask &= received >= pa.scalar(int(start.timestamp() * 1000), ms)
    return messages.filter(mask)


def _rollup(
    bootstrap: str,
    workdir: Path,
    earlier: pa.Table,
    closing: pa.Table,
    hour: datetime,
    slices: int,
) -> tuple[Timer, dict[str, float], float]:
    """One deployment through the hour: caught up at its start, the hour's records produced (in
    `slices` parts, each landed as a slice when it has arrived), then the catch-up at the close,
    timed. Returns that timer, its stages' seconds and the slices' seconds."""
    from clickstream_assets.landing import land_slice
    from clickstream_tools.catchup import instance_for, run_catch_up
    from clickstream_tools.generator.send import produce
    from partitions import first_instant
    from resources.kafka import KafkaResource
    from resources.lake import LakeResource

    topic = f"rollup-{slices}.{int(time.time())}"
    settings = _deployment(workdir / f"rollup-{slices}", bootstrap, topic)
    log = KafkaResource(bootstrap_servers=bootstrap, topic=topic)
    log.create_topic(PARTITIONS)
    cores = os.cpu_count() or 1
    produce(log, earlier, workers=cores)
    close = hour + timedelta(hours=1)
    edges = [hour + (close - hour) * i / max(slices, 1) for i in range(1, max(slices, 1))]
    sliced = 0.0
    with instance_for(settings) as instance:
        run_catch_up(settings, until=hour, instance=instance, log=lambda _: None)
        previous = hour
        for edge in edges:
            produce(log, _received(closing, previous, edge), workers=cores)
            with Timer() as timer:
                landed = land_slice(
                    log, LakeResource(url=settings.lake_url), now=edge, first_instant=first_instant
                )
            assert landed is not None
            sliced += timer.wall
            previous = edge
        produce(log, _received(closing, previous, close), workers=cores)
        with Timer() as timer:
            report = run_catch_up(settings, until=close, instance=instance, log=lambda _: None)
    return timer, report.seconds_by_stage(), sliced


# -- Spark ---------------------------------------------------------------------------------------

SPARK_JOB = Path(__file__).with_name("spark_job.py")


def bench_spark(results: Results, day: dict, workdir: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(SPARK_JOB), str(day["root"] / "lake"), str(workdir / "spark-out")],
        check=True,
        capture_output=True,
        text=True,
    )
    total, job_only, rows = out.stdout.strip().splitlines()[-1].split()
    ours = day["stages"].get("cleaning", 0.0) + day["stages"].get("marts", 0.0)
    results.add(
        "bronze -> silver -> marts (the realistic day)",
        f"this pipeline (cleaning + marts runs): {ours:.1f} s",
        f"Spark local[2], same parse/validate/dedup/marts: {float(total):.1f} s "
        f"({float(job_only):.1f} s after the JVM is up), {int(rows):,} clean rows",
        f"{float(total) / ours:.2f}x",
    )


# -- the marts at a larger scale: a day after an hour changes, a week in one run -------------------


def _silver_hours(root: Path, hour_events: int):
    """A deployment under `root` and how to write an hour of silver there: one hour of
    `hour_events` events generated, landed and cleaned, then copied to any hour under its own
    clean stamp (`write_hour(hour, cleaned_at)`)."""
    import polars as pl

    from clickstream_assets.cleaning import clean_hour
    from clickstream_assets.landing import land_hours
    from core.ledger import HOUR, STAMP_KEY, CleanStamp, events_file
    from resources.lake import LakeResource

    settings = _deployment(root, "localhost:9", f"bench.{root.name}")
    lake = LakeResource(url=settings.lake_url)
    generated = DAY + timedelta(hours=20)
    records = str(root.parent / f"{root.name}-hour.parquet")
    write_hour_records(records, hour_events, generated)
    land_hours(_parquet_log(records), lake, [generated], now=generated + HOUR, first_instant=DAY)
    clean_hour(lake, generated, first_instant=DAY, now=generated + HOUR)
    os.remove(records)
    silver = pl.read_parquet(Path(settings.lake_url) / events_file(generated))
    moved = ["event_time", "event_hour", "ingest_hour", "received_at"]

    def write_hour(hour: datetime, cleaned_at: str) -> None:
        shift = hour - generated
        table = silver.with_columns(pl.col(moved) + shift).to_arrow()
        stamp = CleanStamp(hour, (hour,), events=silver.height, cleaned_at=cleaned_at)
        path = Path(settings.lake_url) / events_file(hour)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.replace_schema_metadata({STAMP_KEY: stamp.to_bytes()}), path)

    return settings, write_hour, silver.height


def _build_marts(settings, as_of: datetime, first: date, last: date | None = None) -> Timer:
    """One Dagster run of the marts for day `first`, or for the days `first`..`last`, as the
    reconcile sensor requests it."""
    from dagster import materialize

    from clickstream_assets.definitions import all_assets, all_checks, build_resources
    from clickstream_assets.marts import marts
    from clickstream_tools.catchup import instance_for
    from sensors.reconcile import marts_request

    request = marts_request(list(marts.keys), first, last or first, as_of)
    with instance_for(settings) as instance, Timer() as timer:
        result = materialize(
            [*all_assets, *all_checks],
            selection=list(marts.keys),
            partition_key=request.partition_key,
            tags=dict(request.tags),
            resources=build_resources(settings, as_of=as_of),
            instance=instance,
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
    assert result.success
    return timer


def bench_marts_day(results: Results, workdir: Path, hour_events: int) -> None:
    """A day of 24 silver hours of `hour_events` events each (`_silver_hours`). The day's marts
    are built three ways: after one hour is cleaned again (its rollup alone is read from
    silver), with every hour re-read from silver (what each build did before the hourly
    rollup), and with nothing changed."""
    from clickstream_assets import marts as marts_module
    from core.ledger import HOUR

    settings, write_hour, hour_rows = _silver_hours(workdir / "marts-day", hour_events)
    for i in range(24):
        write_hour(DAY + i * HOUR, "first")

    def build() -> Timer:
        return _build_marts(settings, DAY + timedelta(days=1), DAY.date())

    build()  # the first build: the rollup table is created from every hour
    write_hour(DAY + 23 * HOUR, "again")  # the day's last hour, cleaned again
    one_hour = build()
    unchanged = build()
    version = marts_module._rollup_version
    marts_module._rollup_version = lambda: "another version"  # every hour is read again
    try:
        whole_day = build()
    finally:
        marts_module._rollup_version = version
    rows = 24 * hour_rows
    results.add(
        f"the day's marts after one of its hours is cleaned again ({rows:,} silver rows in the"
        " day)",
        f"{one_hour.wall:.1f} s (CPU {one_hour.cpu:.1f} s); nothing changed: "
        f"{unchanged.wall:.1f} s (CPU {unchanged.cpu:.1f} s)",
        f"every hour re-read from silver, as each build did before the hourly rollup: "
        f"{whole_day.wall:.1f} s (CPU {whole_day.cpu:.1f} s)",
        f"{whole_day.wall / one_hour.wall:.1f}x wall, {whole_day.cpu / one_hour.cpu:.1f}x CPU",
    )


def bench_marts_week(results: Results, workdir: Path, hour_events: int) -> None:
    """A week of days of 24 silver hours of `hour_events` events each (`_silver_hours`), its
    marts built as a backfill or a catch-up after an outage builds them: one run for the week
    (`MART_RUN_DAYS`), beside a run per day; each into an empty warehouse, after a build that
    has dbt parsed in this process."""
    from core.ledger import HOUR
    from partitions import MART_RUN_DAYS

    settings, write_hour, hour_rows = _silver_hours(workdir / "marts-week", hour_events)
    days = [DAY + timedelta(days=d) for d in range(MART_RUN_DAYS)]
    for day in days:
        for i in range(24):
            write_hour(day + i * HOUR, "first")
    as_of, dates = days[-1] + timedelta(days=2), [day.date() for day in days]

    def empty_warehouse() -> None:
        for path in (Path(settings.warehouse), Path(f"{settings.warehouse}.wal")):
            path.unlink(missing_ok=True)

    _build_marts(settings, as_of, dates[0])
    empty_warehouse()
    per_day = [_build_marts(settings, as_of, day) for day in dates]
    empty_warehouse()
    together = _build_marts(settings, as_of, dates[0], dates[-1])
    wall, cpu = sum(t.wall for t in per_day), sum(t.cpu for t in per_day)
    results.add(
        f"a week of marts built ({len(days)} days, {len(days) * 24 * hour_rows:,} silver rows)",
        f"one run: {together.wall:.1f} s (CPU {together.cpu:.1f} s)",
        f"a run per day: {wall:.1f} s (CPU {cpu:.1f} s)",
        f"{wall / together.wall:.1f}x wall, {cpu / together.cpu:.1f}x CPU",
    )


# -- main ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events in the realistic day")
    parser.add_argument(
        "--hour-sizes",
        default="1000000,2000000",
        help="events in the one-hour runs (the README's memory row uses 1000000,8000000)",
    )
    parser.add_argument(
        "--rollup-events",
        type=int,
        default=BILLION_A_DAY_HOUR // 100,
        help="records in the closing hour of the rollup stage (default: 1/100 of an hour of a "
        "billion events a day)",
    )
    parser.add_argument(
        "--marts-hour-events",
        type=int,
        default=1_000_000,
        help="silver events in each of the 24 hours of the marts-day stage",
    )
    parser.add_argument(
        "--marts-week-hour-events",
        type=int,
        default=5_000,
        help="silver events in each hour of the marts-week stage's 7 days",
    )
    parser.add_argument(
        "--s3-latency-ms",
        type=float,
        default=20.0,
        help="the s3 stage's second run: each S3 request this much longer (an object store's "
        "round trip)",
    )
    parser.add_argument("--no-spark", action="store_true")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the working directory (its lakes, warehouses and logs: gigabytes) to look into",
    )
    parser.add_argument(
        "--only",
        default="producer,landing,hour,day,spark,s3,rollup,marts-day,marts-week,s3-marts",
    )
    parser.add_argument("--hour-stage", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hour_stage:
        print(json.dumps(hour_stage(*args.hour_stage)))
        return

    only = set(args.only.split(","))
    if args.no_spark:
        only.discard("spark")
    results = Results()
    workdir = Path(tempfile.mkdtemp(prefix="clickstream-bench-"))
    print(f"working in {workdir}", flush=True)
    try:
        _stages(args, only, results, workdir)
    finally:
        if args.keep:
            print(f"kept {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"`{' '.join([Path(sys.executable).name, 'benchmarks/bench.py', *sys.argv[1:]])}`")
    print(f"on {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end")
    print()
    print(results.table())


def _stages(args: argparse.Namespace, only: set[str], results: Results, workdir: Path) -> None:
    from resources.broker import EmbeddedBroker

    with EmbeddedBroker.on_free_port() as broker:
        topic = f"bench.{int(time.time())}"
        if only & {"producer", "landing", "day", "spark", "s3"}:
            with Timer() as generated:
                traffic = day_traffic(args.events)
            n = traffic.messages.num_rows
            print(f"generated {n:,} messages of a day in {generated.wall:.1f} s", flush=True)
            bench_producer(results, broker.bootstrap, traffic.messages, topic)
            del traffic
        if "landing" in only:
            bench_landing(results, broker.bootstrap, topic, str(workdir / "landing-lake"), n)
        if "hour" in only:
            bench_hours(results, [int(s) for s in args.hour_sizes.split(",")], workdir)
        day = None
        if only & {"day", "spark"}:
            day = bench_day(results, broker.bootstrap, topic, workdir, n)
        if "spark" in only and day is not None:
            bench_spark(results, day, workdir)
        if "s3" in only:
            bench_s3(results, broker.bootstrap, topic, workdir, n, args.s3_latency_ms / 1000)
        if "rollup" in only:
            bench_rollup(results, broker.bootstrap, workdir, args.rollup_events)
    if "marts-day" in only:
        bench_marts_day(results, workdir, args.marts_hour_events)
    if "marts-week" in only:
        bench_marts_week(results, workdir, args.marts_week_hour_events)
    if "s3-marts" in only:
        bench_s3_marts(results, workdir, args.marts_hour_events)


if __name__ == "__main__":
    main()
