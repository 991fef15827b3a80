"""The lake on a real S3 API (moto's server on loopback): landing, cleaning and the dbt marts
read and write s3:// through s3fs, and the marts equal the independent expectation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import boto3
import pytest
from dagster import instance_for_test

from clickstream_tools.catchup import run_catch_up
from resources.event_log import InMemoryKafka
from tests.helpers import assert_marts_match, configured, local_env, messy_traffic

pytestmark = pytest.mark.integration

BUCKET = "clickstream-lake"
START = datetime(2026, 5, 4, 9, tzinfo=UTC)
END = START + timedelta(hours=6)
UNTIL = END + timedelta(hours=6)


@pytest.fixture(scope="module")
def s3_lake(tmp_path_factory):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    root = tmp_path_factory.mktemp("s3")
    env = local_env(
        root,
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        CLICKSTREAM_LAKE_URL=f"s3://{BUCKET}/lake",
    )
    try:
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
            yield settings, traffic, report, keys
    finally:
        server.stop()


def test_catch_up_on_s3_matches_the_expectation(s3_lake):
    settings, traffic, report, _ = s3_lake
    assert settings.lake_url.startswith("s3://")
    assert report.runs and all(run["success"] for run in report.runs)
    assert_marts_match(settings.warehouse, traffic.truth)


def test_bronze_silver_and_manifests_are_in_the_bucket(s3_lake):
    _, _, _, keys = s3_lake
    assert any(k.startswith("lake/bronze/date=") and k.endswith(".parquet") for k in keys)
    assert any(k.startswith("lake/bronze/_manifests/") and k.endswith(".json") for k in keys)
    assert any(k.startswith("lake/silver/events/date=") and k.endswith(".parquet") for k in keys)
    assert any(k.startswith("lake/quarantine/") for k in keys)
    assert not [k for k in keys if k.endswith(".tmp")], "a temporary file was left behind"
