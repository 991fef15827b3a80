"""The lake on a real S3 API (moto's server on loopback): landing, cleaning and the dbt marts
read and write s3:// through s3fs, and the marts equal the independent expectation."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import boto3
import pyarrow as pa
import pytest
from dagster import instance_for_test

from clickstream_assets.cleaning import CleaningRun, clean_hours
from clickstream_assets.landing import land_hours
from clickstream_tools.catchup import run_catch_up
from core.ledger import Ledger
from resources.event_log import InMemoryKafka
from resources.lake_store import Lake
from sensors.plan import plan_rebuilds
from tests.helpers import assert_marts_match, configured, local_env, messy_traffic

pytestmark = pytest.mark.integration

BUCKET = "clickstream-lake"
START = datetime(2026, 5, 4, 9, tzinfo=UTC)
END = START + timedelta(hours=6)
UNTIL = END + timedelta(hours=6)


@pytest.fixture(scope="module")
def s3_api():
    """The environment that points botocore at a real S3 API on loopback (moto's server)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield {
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    finally:
        server.stop()


@pytest.fixture(scope="module")
def s3_lake(tmp_path_factory, s3_api):
    root = tmp_path_factory.mktemp("s3")
    env = local_env(root, **s3_api, CLICKSTREAM_LAKE_URL=f"s3://{BUCKET}/lake")
    with configured(env) as settings:
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        traffic = messy_traffic(START, END, events=6_000, seed=3, max_late=timedelta(hours=4))
        kafka = InMemoryKafka(partitions=3)
        kafka.produce(traffic.messages)
        with instance_for_test() as instance:
            report = run_catch_up(
                settings,
                until=UNTIL,
                instance=instance,
                resources={"kafka": kafka},
                log=lambda _: None,
            )
        keys = [
            item["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for item in page.get("Contents", [])
        ]
        uploads = s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
        yield settings, traffic, report, keys, uploads


def test_catch_up_on_s3_matches_the_expectation(s3_lake):
    settings, traffic, report, _, _ = s3_lake
    assert settings.lake_url.startswith("s3://")
    assert report.runs and all(run["success"] for run in report.runs)
    assert_marts_match(settings.warehouse, traffic.truth)


def test_bronze_silver_and_manifests_are_in_the_bucket(s3_lake):
    _, _, _, keys, uploads = s3_lake
    assert any(k.startswith("lake/bronze/date=") and k.endswith(".parquet") for k in keys)
    assert any(k.startswith("lake/bronze/_manifests/") and k.endswith(".json") for k in keys)
    assert any(k.startswith("lake/silver/events/date=") and k.endswith(".parquet") for k in keys)
    assert any(k.startswith("lake/quarantine/") for k in keys)
    assert not [k for k in keys if k.endswith(".tmp")], "a temporary file was left behind"
    assert not uploads, "an upload was left incomplete"


# -- the lake's writes on S3: whole or nothing, without a rename ---------------------------------

TABLE = pa.table({"n": pa.array(range(1000), pa.int64()), "s": [f"row {i}" for i in range(1000)]})


@pytest.fixture
def bucket(s3_api, monkeypatch):
    """A fresh bucket, its Lake under `lake/`, and a boto3 client to look at it directly."""
    for name, value in s3_api.items():
        monkeypatch.setenv(name, value)
    name = f"b{uuid.uuid4().hex[:16]}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=name)

    def keys() -> list[str]:
        return sorted(item["Key"] for item in s3.list_objects_v2(Bucket=name).get("Contents", []))

    def uploads() -> list[str]:
        return [u["Key"] for u in s3.list_multipart_uploads(Bucket=name).get("Uploads", [])]

    lake = Lake(url=f"s3://{name}/lake")
    return SimpleNamespace(lake=lake, name=name, keys=keys, uploads=uploads)


@contextmanager
def s3_events(fs, event: str, take: Callable[..., object]) -> Iterator[list]:
    """What `take` makes of each botocore `event` (such as "before-call.s3") of `fs`'s S3 client
    while inside: the requests a piece of code sends, as the client sends them. `take` may be a
    coroutine function: the request waits for it."""
    seen: list = []

    async def record(**kwargs) -> None:  # None: a handler's value would stand for a response
        taken = take(**kwargs)
        seen.append(await taken if inspect.isawaitable(taken) else taken)

    fs.connect()
    fs.s3.meta.events.register(event, record)
    try:
        yield seen
    finally:
        fs.s3.meta.events.unregister(event, record)


def operation(model, **_) -> str:
    return model.name


def test_a_parquet_file_appears_whole_and_alone(bucket):
    with bucket.lake.parquet_writer("bronze/a.parquet", TABLE.schema) as writer:
        writer.write_table(TABLE.slice(0, 600))
        assert bucket.keys() == [], "the file showed before it was finished"
        writer.write_table(TABLE.slice(600))
    assert bucket.keys() == ["lake/bronze/a.parquet"]
    assert bucket.lake.read_parquet(["bronze/a.parquet"]).equals(TABLE)
    assert bucket.uploads() == []


def test_a_failed_or_unwanted_parquet_file_leaves_nothing(bucket, monkeypatch):
    with (
        pytest.raises(RuntimeError, match="mid-write"),
        bucket.lake.parquet_writer("bronze/a.parquet", TABLE.schema) as writer,
    ):
        writer.write_table(TABLE)
        raise RuntimeError("mid-write")
    with bucket.lake.parquet_writer("bronze/b.parquet", TABLE.schema, keep=lambda: False) as w:
        w.write_table(TABLE)
    # A file past S3's smallest part: its multipart upload has begun, and is aborted.
    monkeypatch.setattr(bucket.lake.fs, "default_block_size", 5 * 2**20)
    big = pa.table({"v": [os.urandom(1024) for _ in range(8 * 1024)]})
    with (
        pytest.raises(RuntimeError, match="mid-upload"),
        bucket.lake.parquet_writer("bronze/c.parquet", big.schema) as writer,
    ):
        writer.write_table(big)
        assert bucket.uploads() == ["lake/bronze/c.parquet"]
        raise RuntimeError("mid-upload")
    assert bucket.keys() == []
    assert bucket.uploads() == []


def test_an_exclusive_write_loses_to_the_first_and_a_plain_one_replaces(bucket):
    lake = bucket.lake
    assert lake.write_bytes("m/h.json", b"first", exclusive=True)
    assert not lake.write_bytes("m/h.json", b"second", exclusive=True)
    assert lake.fs.cat_file(lake.path("m/h.json")) == b"first"
    assert lake.write_bytes("m/h.json", b"third")
    assert lake.fs.cat_file(lake.path("m/h.json")) == b"third"
    lake.write_files({f"i/{hour}/x": b"" for hour in range(30)})
    assert bucket.keys() == sorted(["lake/m/h.json", *(f"lake/i/{hour}/x" for hour in range(30))])


def test_a_file_read_by_row_group_is_looked_up_once_and_read_exactly(bucket):
    with bucket.lake.parquet_writer("bronze/a.parquet", TABLE.schema) as writer:
        for start in range(0, TABLE.num_rows, 200):
            writer.write_table(TABLE.slice(start, 200))
    with s3_events(bucket.lake.fs, "before-call.s3", operation) as calls:
        (whole,) = bucket.lake.dataset(["bronze/a.parquet"], TABLE.schema).get_fragments()
        pieces = whole.split_by_row_group()
        read = pa.concat_tables(piece.to_table(schema=TABLE.schema) for piece in pieces)
    assert len(pieces) == 5 and read.equals(TABLE)
    assert calls.count("HeadObject") == 1, calls
    assert set(calls) == {"HeadObject", "GetObject"}


def test_footers_and_json_are_read_without_a_lookup(bucket):
    lake = bucket.lake
    wide = pa.table({f"c{i}": list(range(100)) for i in range(60)})
    with lake.parquet_writer("s/small.parquet", TABLE.schema) as writer:
        writer.write_table(TABLE)
    with lake.parquet_writer("s/wide.parquet", wide.schema) as writer:
        for _ in range(50):  # a footer of ~330 KB: past the first read from the end
            writer.write_table(wide, row_group_size=100)
    lake.write_json("m/h.json", {"rows": 5})
    with s3_events(lake.fs, "before-call.s3", operation) as calls:
        small, big, absent = lake.footers([f"s/{n}.parquet" for n in ("small", "wide", "none")])
        manifest = lake.read_json("m/h.json")
    assert (small.num_rows, big.num_rows, big.num_row_groups) == (1000, 5000, 50)
    assert absent is None and manifest == {"rows": 5}
    assert "HeadObject" not in calls, calls
    assert calls.count("GetObject") == 3 + 1 + 1  # the wide footer's second read, the JSON


@contextmanager
def in_flight(fs, operation_name: str) -> Iterator[list[int]]:
    """The most requests of `operation_name` that `fs` had in flight at once while inside
    (each held 50 ms before it is sent: a round trip to S3, which loopback does not have)."""
    now, most = [0], [0]

    async def held(**_) -> None:
        now[0] += 1
        most[0] = max(most[0], now[0])
        await asyncio.sleep(0.05)
        now[0] -= 1

    with s3_events(fs, f"before-call.s3.{operation_name}", held):
        yield most


def land_messy_hours(lake: Lake) -> list[datetime]:
    """Six ingest hours of messy traffic (3,000 events, late by up to 4 hours, 3 partitions)
    landed into `lake`; returns the hours."""
    traffic = messy_traffic(START, END, events=3_000, seed=5, max_late=timedelta(hours=4))
    kafka = InMemoryKafka(partitions=3)
    kafka.produce(traffic.messages)
    hours = [START + timedelta(hours=i) for i in range(6)]
    land_hours(kafka, lake, hours, now=END, first_instant=START)
    return hours


def test_a_ticks_plan_reads_the_ledger_in_few_round_trips(bucket):
    """The reconcile sensor's plan on S3: a day's index and claims in one listing each (not one
    per hour), and the clean stamps of every hour of the day read at once."""
    land_messy_hours(bucket.lake)

    def plan():
        return plan_rebuilds(
            Ledger(bucket.lake, remember=True),
            {},
            settled_from=None,
            first_hour=START,
            now=UNTIL,
            lateness=timedelta(hours=2),
        )

    # Owed at first: every event hour in the index (read here with boto3), once it has closed.
    keys = bucket.keys()
    indexed = {key.split("/")[3] for key in keys if key.startswith("lake/bronze/_index/")}
    event_hours = {datetime.strptime(h, "%Y-%m-%dT%H").replace(tzinfo=UTC) for h in indexed}
    expected = sorted(h for h in event_hours if h >= START and h + timedelta(hours=1) <= UNTIL)
    owed = plan()
    assert owed.event_hours == expected and len(expected) >= 6
    assert not owed.days  # a day waits while its hours are owed
    run = CleaningRun.of(bucket.lake)
    list(clean_hours(bucket.lake, owed.event_hours, first_instant=START, now=UNTIL, run=run))
    listing = "before-parameter-build.s3.ListObjectsV2"
    with (
        s3_events(bucket.lake.fs, listing, lambda params, **_: params["Prefix"]) as listed,
        in_flight(bucket.lake.fs, "GetObject") as most,
    ):
        settled = plan()
    days = sorted({hour.date() for hour in expected})
    assert settled.event_hours == [] and settled.days == days
    assert sorted(listed) == sorted(
        ["lake/bronze/_manifests/"]
        + [f"lake/bronze/{root}/{day:%Y-%m-%d}T" for root in ("_index", "_claims") for day in days]
    )
    assert most[0] >= len(expected)  # the clean stamps' footers, at once


def test_the_marts_duckdb_reads_only_the_columns_a_query_needs(bucket):
    """The marts' DuckDB reads the lake through the filesystem that the dbt profile's `s3` target
    attaches (as dbt-duckdb attaches it): a query of a narrow column of a wide file fetches that
    column's bytes and the footer, not the file. s3fs's default read-ahead fetched the file."""
    import duckdb
    import fsspec
    import yaml

    from core.warehouse import DBT_PROJECT_DIR

    profile = yaml.safe_load((DBT_PROJECT_DIR / "profiles.yml").read_text())
    (spec,) = profile["clickstream"]["outputs"]["s3"]["filesystems"]
    options = {key: value for key, value in spec.items() if key != "fs"}
    fs = fsspec.filesystem(spec["fs"], **options)
    # 4 row groups of 1 MiB: DuckDB reads a file of one small row group whole.
    wide = pa.table({"n": range(4000), "v": [os.urandom(1024) for _ in range(4000)]})
    with bucket.lake.parquet_writer("silver/w.parquet", wide.schema) as writer:
        writer.write_table(wide, row_group_size=1000)
    size = bucket.lake.fs.size(bucket.lake.path("silver/w.parquet"))
    got = s3_events(fs, "after-call.s3.GetObject", lambda parsed, **_: parsed["ContentLength"])
    with got as fetched, duckdb.connect() as con:
        con.register_filesystem(fs)
        query = f"select sum(n) from 's3://{bucket.name}/lake/silver/w.parquet'"
        (total,) = con.execute(query).fetchone()
    assert total == sum(range(4000))
    assert 0 < sum(fetched) < size / 20, (fetched, size)


def test_a_cleaning_run_looks_each_bronze_file_up_once(bucket):
    """A run's row-group reads and its valid copies (the re-stamped copies' frames) share the
    run's lookups: each bronze file is looked up (a HEAD) at most once, and the silver is the
    same as a run without them would write (the known-answer tests check its contents)."""
    hours = land_messy_hours(bucket.lake)
    head = "before-parameter-build.s3.HeadObject"  # the request's parameters: its key
    with s3_events(bucket.lake.fs, head, lambda params, **_: params["Key"]) as looked_up:
        run = CleaningRun.of(bucket.lake)
        manifests = run.ledger.manifests(hours).values()
        event_hours = sorted({h for m in manifests for h in m.event_hours})
        cleaned = list(
            clean_hours(bucket.lake, event_hours, first_instant=START, now=UNTIL, run=run)
        )
    listed = bucket.keys()
    bronze = [key for key in listed if key.startswith("lake/bronze/date=")]
    assert len(bronze) >= 12 and sum(c.stamp.bronze_rows for c in cleaned) > 3_000
    looked_up_bronze = [key for key in looked_up if key.startswith("lake/bronze/date=")]
    assert sorted(looked_up_bronze) == sorted(set(looked_up_bronze)), looked_up_bronze


KILLED_WRITER = """
import os, signal, sys
import pyarrow as pa
from resources.lake_store import Lake

lake = Lake(url=sys.argv[1])
lake.fs.default_block_size = 5 * 2**20  # S3's smallest part: a part is uploaded early
big = pa.table({"v": [os.urandom(1024) for _ in range(8 * 1024)]})  # 8 MiB, incompressible
with lake.parquet_writer("bronze/big.parquet", big.schema) as writer:
    writer.write_table(big)
    writer.write_table(big)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_writer_killed_mid_upload_leaves_no_object(bucket, s3_api):
    env = os.environ | s3_api | {"PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, f"s3://{bucket.name}/lake"],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    assert bucket.uploads() == ["lake/bronze/big.parquet"], "no part had been uploaded"
    assert bucket.keys() == []
