"""Collection against real parts: the SDK posting over loopback HTTP to a `clickstream collector`
process that produces to the embedded broker. What the SDK tracked is read back from the topic;
the marts come from the headless catch-up and are compared with the generator's own expectation."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta

import duckdb
import polars as pl
import pyarrow as pa
import pytest
from clickstream_sdk import Tracker
from dagster import instance_for_test

from clickstream_tools.catchup import run_catch_up
from clickstream_tools.generator import send_via_collector
from collector.server import CollectorProcess
from core.contract import parse_events
from resources.kafka import KafkaResource
from resources.warehouse import read_mart
from tests.helpers import START, assert_marts_match, configured, local_env, messy_traffic

pytestmark = pytest.mark.integration


def wait_for(condition, timeout_s: float = 30.0, what: str = "the condition") -> None:
    """Poll until `condition()` holds; a state to reach, not a speed to assert."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout_s:.0f} s")
        time.sleep(0.1)


def topic_records(bootstrap: str, topic: str) -> pa.Table:
    """Every record of the topic, partition by partition in offset order."""
    log = KafkaResource(bootstrap_servers=bootstrap, topic=topic)
    batches = [
        batch
        for partition in log.partitions()
        for batch, _ in log.read(partition, log.beginning_offset(partition))
    ]
    return (
        pa.Table.from_batches(batches)
        if batches
        else pa.table({"value": pa.array([], pa.binary())})
    )


def tracked_ids(bootstrap: str, topic: str) -> list[str]:
    values = topic_records(bootstrap, topic).column("value").to_pylist()
    return [json.loads(v).get("event_id") for v in values]


def post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict, str]:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("POST", "/v1/events", body, headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        connection.close()


def get(url: str, path: str) -> int:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


# Ingest hours are closed by the real clock, so a test that lands what it just sent lives two hours
# in the past: the devices' clocks and the collector's receive clock are set back alike (no device
# offset, so no correction), and the hour they received in has closed.
SHIFT_S = 2 * 3600.0


def shifted_clock() -> float:
    return time.time() - SHIFT_S


_SHIFTED_COLLECTOR = textwrap.dedent(
    f"""
    import time, uvicorn
    from collector.app import CollectorApp
    from collector.server import listen_address, open_sink
    from core.settings import load

    settings = load()
    host, port = listen_address(settings.collector_addr)
    app = CollectorApp(open_sink(settings), clock=lambda: time.time() - {SHIFT_S})
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    """
)


def shifted_collector(env: dict[str, str]) -> CollectorProcess:
    return CollectorProcess(env, argv=[sys.executable, "-c", _SHIFTED_COLLECTOR])


@pytest.fixture
def collection(broker, request, tmp_path):
    """A fresh topic and a collector on it; yields (collector, topic)."""
    topic = f"it.collection.{request.node.name}"[:200].replace("[", ".").replace("]", "")
    KafkaResource(bootstrap_servers=broker.bootstrap, topic=topic).create_topic(2)
    env = {"CLICKSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap, "CLICKSTREAM_TOPIC": topic}
    with CollectorProcess(env) as collector:
        yield collector, topic


# --- end to end -------------------------------------------------------------------------------


def test_sdk_to_collector_to_catch_up_matches_the_expectation(broker, tmp_path):
    topic = "it.collection.end-to-end"
    env = local_env(tmp_path, CLICKSTREAM_KAFKA_BOOTSTRAP=broker.bootstrap, CLICKSTREAM_TOPIC=topic)
    KafkaResource(bootstrap_servers=broker.bootstrap, topic=topic).create_topic(3)
    start = datetime(2026, 11, 20, 6, tzinfo=UTC)
    traffic = messy_traffic(start, start + timedelta(hours=8), events=4_000, seed=23)
    with configured(env) as settings, shifted_collector(env) as collector:
        truth = send_via_collector(traffic, collector.url, queue_dir=tmp_path, clock=shifted_clock)
        with instance_for_test() as instance:
            report = run_catch_up(settings, instance=instance, log=lambda _: None)
    assert all(run["success"] for run in report.runs)
    assert_marts_match(settings.warehouse, truth)
    # Bad events were accepted like any other and ended up in quarantine, every one.
    invalid = truth.filter(~pl.col("valid")).height
    assert invalid > 0
    with duckdb.connect(settings.warehouse, read_only=True) as con:
        assert con.execute("select count(*) from stg_quarantined_events").fetchone() == (invalid,)


# --- the broker paused ------------------------------------------------------------------------


def test_broker_paused_503_then_everything_tracked_reaches_the_topic(broker, collection, tmp_path):
    collector, topic = collection
    tracker = Tracker(
        collector.url,
        "dev-paused",
        queue_path=tmp_path / "queue.sqlite3",
        batch_size=20,
        backoff_base_s=0.2,
        backoff_cap_s=2.0,
    )
    before = [tracker.track("click", page="/") for _ in range(30)]
    assert tracker.flush(30)
    pid = broker._process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        batch = {"sent_at": "2026-11-28T12:00:00Z", "events": [{"device_id": "d", "n": 1}]}
        status, headers, _ = post(collector.url, json.dumps(batch).encode())
        assert status == 503
        assert int(headers["retry-after"]) >= 1
        wait_for(lambda: get(collector.url, "/readyz") == 503, what="/readyz turning 503")
        assert get(collector.url, "/healthz") == 200
        during = [tracker.track("play", title_id="title-0001") for _ in range(70)]
        wait_for(lambda: tracker.retries >= 2, what="the SDK retrying")
        assert tracker.pending == 70 and tracker.sent == 30
    finally:
        os.kill(pid, signal.SIGCONT)
    assert tracker.flush(60)
    tracker.close()
    wait_for(lambda: get(collector.url, "/readyz") == 200, what="/readyz turning 200")
    assert set(before + during) <= set(tracked_ids(broker.bootstrap, topic))


def test_requests_sent_right_at_the_pause_are_answered_503_then_land_on_resend(broker, collection):
    collector, topic = collection
    batches = [
        envelope([{"event_id": f"at-pause-{b}-{i}", "device_id": f"dev-{b}"} for i in range(20)])
        for b in range(8)
    ]
    assert post(collector.url, envelope([{"event_id": "warm", "device_id": "d"}]))[0] == 200
    answers: list[tuple[int, dict, str]] = []
    pid = broker._process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        # Sent at once, before anything could tell the collector: they wait for acks that never
        # come, until the watchdog answers them all.
        threads = [
            threading.Thread(target=lambda body=body: answers.append(post(collector.url, body)))
            for body in batches
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert get(collector.url, "/readyz") == 503
        assert get(collector.url, "/healthz") == 200
    finally:
        os.kill(pid, signal.SIGCONT)
    assert sorted(status for status, _, _ in answers) == [503] * 8
    assert all(int(headers["retry-after"]) >= 1 for _, headers, _ in answers)
    errors = [json.loads(text)["error"] for _, _, text in answers]
    assert any("acknowledged nothing for 100 ms" in error for error in errors), errors
    wait_for(lambda: get(collector.url, "/readyz") == 200, what="/readyz turning 200")
    for body in batches:  # what a device does after a 503
        assert post(collector.url, body)[0] == 200
    expected = {f"at-pause-{b}-{i}" for b in range(8) for i in range(20)}
    assert expected <= set(tracked_ids(broker.bootstrap, topic))


# --- the collector killed ---------------------------------------------------------------------


def test_collector_killed_mid_load_loses_nothing_and_marts_count_once(broker, tmp_path):
    topic = "it.collection.killed"
    env = local_env(tmp_path, CLICKSTREAM_KAFKA_BOOTSTRAP=broker.bootstrap, CLICKSTREAM_TOPIC=topic)
    KafkaResource(bootstrap_servers=broker.bootstrap, topic=topic).create_topic(2)
    collector = shifted_collector(env).start()
    tracker = Tracker(
        collector.url,
        "dev-killed",
        queue_path=tmp_path / "queue.sqlite3",
        batch_size=50,
        backoff_base_s=0.1,
        backoff_cap_s=1.0,
        clock=shifted_clock,
    )
    ids: list[str] = []
    finished = threading.Event()

    def load() -> None:
        for i in range(3_000):
            ids.append(tracker.track("heartbeat", position_ms=i, user_id=f"user-{i % 7}"))
            if i % 100 == 0:
                time.sleep(0.02)
        finished.set()

    thread = threading.Thread(target=load)
    thread.start()
    try:
        wait_for(lambda: tracker.sent >= 500, what="500 events acknowledged")
        collector.kill()  # SIGKILL: whatever it held unanswered is resent by the SDK
        killed_at = tracker.sent
        time.sleep(0.5)
        collector.start()
        thread.join()
        assert tracker.flush(120)
    finally:
        tracker.close(0)
        collector.stop()
    assert killed_at < 3_000  # the kill came in the middle of the load
    received = tracked_ids(broker.bootstrap, topic)
    assert set(received) == set(ids) and len(ids) == 3_000
    with configured(env) as settings, instance_for_test() as instance:
        run_catch_up(settings, instance=instance, log=lambda _: None)
    daily = read_mart(settings.warehouse, "fct_daily_active_users", ["events", "active_users"])
    assert daily.filter(pl.col("events") > 0).select(pl.sum("events")).item() == 3_000
    assert daily.select(pl.max("active_users")).item() == 7


def answers(url: str) -> bool:
    try:
        return get(url, "/healthz") == 200
    except OSError:
        return False


def test_workers_share_the_port_and_die_with_a_killed_collector(broker, tmp_path):
    topic = "it.collection.workers"
    KafkaResource(bootstrap_servers=broker.bootstrap, topic=topic).create_topic(2)
    env = {"CLICKSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap, "CLICKSTREAM_TOPIC": topic}
    argv = [sys.executable, "-m", "clickstream_tools.cli", "collector", "--workers", "2"]
    collector = CollectorProcess(env, argv=argv).start()
    try:
        with Tracker(
            collector.url, "dev-workers", queue_path=tmp_path / "q.sqlite3", batch_size=10
        ) as tracker:
            ids = [tracker.track("click", n=i) for i in range(300)]
            assert tracker.flush(60)
        collector.kill()  # SIGKILL to the supervisor: its workers must not outlive it
        wait_for(lambda: not answers(collector.url), what="the workers exiting with it")
        collector.start()  # the same port: nothing holds it any more
    finally:
        collector.stop()
    assert sorted(tracked_ids(broker.bootstrap, topic)) == sorted(ids)


def scraped_events(text: str) -> float:
    """clickstream_collector_events_total in a Prometheus exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "clickstream_collector_events_total"
    )


def metrics_text(url: str) -> str:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)  # a new connection:
    try:  # any worker may answer
        connection.request("GET", "/metrics")
        return connection.getresponse().read().decode()
    finally:
        connection.close()


def events_counted_by_each_worker(metrics_dir) -> dict[str, float]:
    """Each worker's own count, read from its file alone with prometheus_client's reader."""
    import shutil

    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    counts = {}
    for file in metrics_dir.glob("counter_*.db"):
        alone = metrics_dir.parent / f"alone-{file.stem}"
        alone.mkdir(exist_ok=True)
        shutil.copy(file, alone / file.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        counts[file.stem.removeprefix("counter_")] = scraped_events(
            generate_latest(registry).decode()
        )
    return counts


def test_metrics_of_two_workers_add_up(broker, tmp_path):
    topic = "it.collection.metrics"
    KafkaResource(bootstrap_servers=broker.bootstrap, topic=topic).create_topic(2)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"stale")  # a previous run's: emptied at start
    env = {
        "CLICKSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap,
        "CLICKSTREAM_TOPIC": topic,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    argv = [sys.executable, "-m", "clickstream_tools.cli", "collector", "--workers", "2"]
    sent = 0

    def both_workers_counted() -> bool:
        nonlocal sent
        bodies = [
            envelope([{"device_id": f"d{sent + i}", "n": n} for n in range(3)]) for i in range(8)
        ]
        threads = [threading.Thread(target=post, args=(collector.url, body)) for body in bodies]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        sent += 8 * 3
        counts = events_counted_by_each_worker(metrics_dir)
        return len(counts) == 2 and all(counts.values())

    with CollectorProcess(env, argv=argv) as collector:
        wait_for(both_workers_counted, what="both workers serving requests")
        per_worker = events_counted_by_each_worker(metrics_dir)
        scrapes = [scraped_events(metrics_text(collector.url)) for _ in range(6)]
    assert sum(per_worker.values()) == sent
    assert scrapes == [sent] * 6  # whichever worker answers
    assert len(topic_records(broker.bootstrap, topic)) == sent


# --- the SDK restarted offline ----------------------------------------------------------------

_OFFLINE_SESSION = textwrap.dedent(
    """
    import json, sys
    from clickstream_sdk import Tracker

    drops = []
    tracker = Tracker(sys.argv[1], "dev-offline", queue_path=sys.argv[2],
                      max_queue_events=int(sys.argv[3]), on_drop=lambda n, why: drops.append(n))
    ids = [tracker.track("page_view", page="/", n=i) for i in range(int(sys.argv[4]))]
    tracker.close(timeout_s=0.5)  # offline: nothing is acknowledged; the queue stays on disk
    print(json.dumps({"ids": ids, "dropped": tracker.dropped, "reported": sum(drops)}))
    """
)


def offline_session(queue, max_queue_events: int, events: int) -> dict:
    from resources.broker import free_port

    nobody = f"http://127.0.0.1:{free_port()}"  # no one listens: the device is offline
    done = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SESSION, nobody, str(queue), str(max_queue_events),
         str(events)],
        capture_output=True, check=True, text=True, timeout=120,
    )  # fmt: skip
    return json.loads(done.stdout)


def test_sdk_restarted_offline_keeps_its_queue_and_drains_in_order(broker, collection, tmp_path):
    collector, topic = collection
    session = offline_session(tmp_path / "queue.sqlite3", max_queue_events=1_000, events=120)
    assert session["dropped"] == 0
    with Tracker(collector.url, "dev-offline", queue_path=tmp_path / "queue.sqlite3") as tracker:
        assert tracker.pending == 120
        assert tracker.flush(60)
    # One device, one key, one partition: the topic's order is the order of delivery.
    assert tracked_ids(broker.bootstrap, topic) == session["ids"]


def test_a_full_queue_drops_the_oldest_and_reports_it(broker, collection, tmp_path):
    collector, topic = collection
    session = offline_session(tmp_path / "queue.sqlite3", max_queue_events=40, events=100)
    assert session["dropped"] == 60 and session["reported"] == 60
    with Tracker(collector.url, "dev-offline", queue_path=tmp_path / "queue.sqlite3") as tracker:
        assert tracker.flush(60)
    assert tracked_ids(broker.bootstrap, topic) == session["ids"][60:]


# --- limits and bad bodies --------------------------------------------------------------------


def envelope(events: list, **extra) -> bytes:
    return json.dumps({"sent_at": "2026-11-28T12:00:00Z", "events": events, **extra}).encode()


@pytest.mark.parametrize(
    ("body", "headers", "status", "names"),
    [
        (b"x" * (1024 * 1024 + 1), {}, 413, "1 MiB"),
        (gzip.compress(b" " * (10 * 1024 * 1024 + 1)), {"Content-Encoding": "gzip"}, 413, "10 MiB"),
        (envelope([{}] * 1_001), {}, 413, "1,000"),
        (b"not json", {}, 400, "not JSON"),
        (b"[1, 2]", {}, 400, "events"),
        (b'{"events": {"a": 1}}', {}, 400, "events"),
        (b'{"sent_at": 12, "events": []}', {}, 400, "sent_at"),
        (b"\x1f\x8b\x08\x00garbage", {"Content-Encoding": "gzip"}, 400, "gzip"),
        (envelope([]), {"Content-Encoding": "br"}, 400, "Content-Encoding"),
    ],
)
def test_limits_and_bad_bodies(collection, body, headers, status, names):
    collector, _ = collection
    got, _, text = post(collector.url, body, headers)
    assert got == status
    assert names in json.loads(text)["error"]


def test_invalid_elements_reach_the_topic_and_quarantine(broker, collection):
    collector, topic = collection
    good = {
        "event_id": "e-1",
        "event_type": "click",
        "event_time": "2026-11-28T11:59:59Z",
        "device_id": "dev-1",
    }
    elements = [good, 5, "text", None, {"device_id": 3}, {**good, "event_type": "nope"}]
    status, _, text = post(
        collector.url, gzip.compress(envelope(elements)), {"Content-Encoding": "gzip"}
    )
    assert (status, json.loads(text)) == (200, {"accepted": 6})
    records = topic_records(broker.bootstrap, topic)
    assert records.num_rows == 6
    keys = sorted(k for k in records.column("kafka_key").to_pylist() if k is not None)
    assert keys == [b"dev-1", b"dev-1"]  # a device_id that is not a string gives no key
    reasons = parse_events(records, start=START).column("reason").to_pylist()
    assert sorted(reasons, key=str) == sorted(
        [None, "not_object", "not_object", "not_object", "missing_field:event_time",
         "unknown_event_type"], key=str,
    )  # fmt: skip
    # The batch's sent_at was added to each object without one.
    objects = [json.loads(v) for v in records.column("value").to_pylist()]
    assert [o["sent_at"] for o in objects if isinstance(o, dict)] == ["2026-11-28T12:00:00Z"] * 3


# --- device clocks ----------------------------------------------------------------------------


@pytest.mark.parametrize("skew_s", [3600.0, -3600.0, 30.0, -45.0])
def test_device_clocks_are_corrected_to_within_the_transit(collection, broker, tmp_path, skew_s):
    collector, topic = collection
    tracker = Tracker(
        collector.url,
        "dev-clock",
        queue_path=tmp_path / "queue.sqlite3",
        clock=lambda: time.time() + skew_s,
    )
    before = datetime.now(UTC)
    tracker.track("click", page="/")
    after = datetime.now(UTC)
    assert tracker.flush(30)
    tracker.close()
    records = topic_records(broker.bootstrap, topic)
    row = parse_events(records, start=START).to_pylist()[0]
    sent = json.loads(records.column("value")[0].as_py())
    assert row["reason"] is None
    claimed = datetime.fromisoformat(sent["event_time"])
    if abs(skew_s) <= 60:
        assert row["clock_corrected"] is False
        assert row["event_time"] == claimed  # within the deadband: exactly as stamped
        return
    assert row["clock_corrected"] is True
    # The event time becomes the true time plus the transit (sent -> received), nothing more.
    received = row["kafka_timestamp"]
    transit = received - (datetime.fromisoformat(sent["sent_at"]) - timedelta(seconds=skew_s))
    assert before - timedelta(milliseconds=1) <= row["event_time"]
    assert row["event_time"] <= after + transit + timedelta(milliseconds=1)
