"""The traffic generator: deterministic, honest about its rates, and its oracle agrees with a
second, deliberately naive reading of the raw messages."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from clickstream_tools.generator import (
    MALFORMED_KINDS,
    PLATFORMS,
    TrafficSpec,
    accepted_events,
    expected_marts,
    generate,
    produce,
    write_expected_marts,
)
from clickstream_tools.generator import traffic as traffic_module
from resources.event_log import InMemoryKafka
from resources.kafka import KafkaResource

START = datetime(2026, 3, 1, tzinfo=UTC)
KNOWN_TYPES = {"page_view", "click", "play", "pause", "seek", "ad_impression", "heartbeat"}


def spec(**overrides) -> TrafficSpec:
    values = dict(
        start=START,
        end=START + timedelta(days=1),
        events=30_000,
        seed=11,
        duplicate_rate=0.05,
        late_rate=0.03,
        malformed_rate=0.01,
        skew_rate=0.01,
    )
    return TrafficSpec(**(values | overrides))


@pytest.fixture(scope="module")
def traffic():
    return generate(spec())


def naive_read(value: bytes | None) -> dict | None:
    """The contract's validity rules, read straight from the text; None when invalid."""
    if value is None:
        return None
    try:
        event = json.loads(value)
    except ValueError:
        return None
    if not isinstance(event, dict):
        return None
    for name in ("event_id", "event_type", "event_time", "device_id"):
        if not isinstance(event.get(name), str) or not event[name]:
            return None
    if event["event_type"] not in KNOWN_TYPES:
        return None
    try:
        moment = datetime.fromisoformat(event["event_time"])
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    if event["event_type"] in ("play", "pause", "seek") and not isinstance(
        event.get("title_id"), str
    ):
        return None
    if event["event_type"] == "ad_impression" and not isinstance(event.get("campaign_id"), str):
        return None
    sent_at = event.get("sent_at")
    if sent_at is not None:
        try:
            sent = datetime.fromisoformat(sent_at) if isinstance(sent_at, str) else None
        except ValueError:
            sent = None
        if sent is None or sent.tzinfo is None:
            return None
        event["_sent_at"] = sent.astimezone(UTC)
    return event | {"_time": moment.astimezone(UTC)}


def naive_events(traffic) -> list[dict]:
    """First received valid copy per event_id, with the device-clock rule, by a plain loop."""
    seen: set[str] = set()
    kept = []
    rows = zip(
        traffic.messages.column("value").to_pylist(),
        traffic.messages.column("timestamp_ms").to_pylist(),
        strict=True,
    )
    for value, timestamp_ms in rows:  # already in receive (and production) order
        event = naive_read(value)
        if event is None or event["event_id"] in seen:
            continue
        seen.add(event["event_id"])
        received = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
        if "_sent_at" in event:
            if abs(received - event["_sent_at"]) > timedelta(seconds=60):
                event["_time"] += received - event["_sent_at"]
        elif event["_time"] - received > timedelta(minutes=5):
            event["_time"] = received
        event["_actor"] = event.get("user_id") or "device:" + event["device_id"]
        kept.append(event)
    return kept


def test_same_seed_same_bytes_and_another_seed_differs():
    first, again, other = generate(spec(events=3000)), generate(spec(events=3000)), None
    assert first.messages.equals(again.messages)
    assert first.truth.equals(again.truth)
    other = generate(spec(events=3000, seed=12))
    assert not first.messages.equals(other.messages)


def test_messages_handed_to_arrow_in_slices_are_the_same_messages(monkeypatch):
    # A day past 2 GiB of values goes to Arrow in slices (binary's offsets are 32-bit): slices
    # of 700 messages give the bytes of the day converted whole.
    whole = generate(spec(events=3000)).messages
    monkeypatch.setattr(traffic_module, "MESSAGE_SLICE_ROWS", 700)
    sliced = generate(spec(events=3000)).messages
    assert whole.num_rows > 2800
    assert sliced.column("value").num_chunks == -(-whole.num_rows // 700)
    assert sliced.equals(whole)
    assert sliced.schema == traffic_module.MESSAGE_SCHEMA


def test_messages_are_sorted_keyed_by_device_and_within_the_horizon(traffic):
    timestamps = traffic.messages.column("timestamp_ms").to_pylist()
    assert timestamps == sorted(timestamps)
    assert traffic.messages.column("key").to_pylist() == [
        d.encode() for d in traffic.truth["device_id"].to_list()
    ]
    assert traffic.truth["message_index"].to_list() == list(range(traffic.messages.num_rows))
    # By default no horizon: late copies may arrive after the span; with one, none do.
    capped = generate(spec(events=5000, receive_until=START + timedelta(days=1)))
    assert max(capped.messages.column("timestamp_ms").to_pylist()) < int(
        (START + timedelta(days=1)).timestamp() * 1000
    )


def test_truth_validity_matches_the_contract_read_from_the_bytes(traffic):
    naive_valid = [naive_read(v) is not None for v in traffic.messages.column("value").to_pylist()]
    assert naive_valid == traffic.truth["valid"].to_list()


def test_rates_are_roughly_honoured(traffic):
    counts = traffic.counts
    n = counts["events"]
    assert n == 30_000
    assert 0.04 < counts["duplicated_events"] / n < 0.075  # skewed events retry more often
    assert counts["duplicated_across_ingest_hours"] > 0
    assert 0.02 < counts["late_events"] / n < 0.04
    assert 0.007 < counts["skewed_events"] / n < 0.013
    assert counts["skewed_events_retried"] > 0
    assert counts["malformed_messages"] == round(counts["messages"] * 0.01)
    assert counts["received_after_watermark"] > 0


def test_every_malformed_kind_is_present(traffic):
    assert all(traffic.counts["malformed"][kind] > 0 for kind in MALFORMED_KINDS)
    assert set(traffic.truth["malformed_reason"].drop_nulls().unique()) == set(MALFORMED_KINDS)
    assert None in traffic.messages.column("value").to_pylist()  # a Kafka null value


def test_traffic_looks_like_traffic(traffic):
    valid = traffic.truth.filter(pl.col("valid"))
    platforms = set(valid["platform_text"].unique())
    assert set(PLATFORMS) <= platforms and platforms - set(PLATFORMS)  # some unknown text
    assert valid["user_id"].null_count() > 0 and valid["user_id"].drop_nulls().len() > 0
    assert set(valid["event_type"].unique()) == KNOWN_TYPES
    texts = valid["event_time_text"]
    for marker in ("Z", "+05:30", "-08:00"):
        assert texts.str.ends_with(marker).any()
    assert texts.str.contains(r"\.\d{3}[Z+-]").any() and texts.str.contains(r"\.\d{6}").any()
    by_hour = valid.group_by(pl.col("true_time").dt.hour().alias("h")).len().sort("len")
    assert 17 <= by_hour["h"][-1] <= 22  # the evening peak
    plays = valid.filter(pl.col("event_type") == "play")["title_id"].value_counts(sort=True)
    assert plays["count"][0] > 5 * plays["count"][20]  # a few titles dominate


def test_expected_marts_agree_with_a_naive_reading(traffic):
    marts = expected_marts(traffic.truth)
    events = naive_events(traffic)

    actors, users, devices, per_day = (
        defaultdict(set),
        defaultdict(set),
        defaultdict(set),
        defaultdict(int),
    )
    plays: dict[tuple, int] = defaultdict(int)
    hourly: dict[tuple, int] = defaultdict(int)
    for e in events:
        day = e["_time"].date()
        actors[day].add(e["_actor"])
        devices[day].add(e["device_id"])
        per_day[day] += 1
        if e.get("user_id"):
            users[day].add(e["user_id"])
        if e["event_type"] == "play":
            plays[(day, e["title_id"])] += 1
        hourly[(e["_time"].replace(minute=0, second=0, microsecond=0), e["event_type"])] += 1

    dau = marts["fct_daily_active_users"]
    assert dau["event_date"].to_list() == sorted(actors)
    assert dau["active_users"].to_list() == [len(actors[d]) for d in sorted(actors)]
    assert dau["logged_in_users"].to_list() == [len(users[d]) for d in sorted(actors)]
    assert dau["active_devices"].to_list() == [len(devices[d]) for d in sorted(actors)]
    assert dau["events"].to_list() == [per_day[d] for d in sorted(actors)]
    assert dau["events"].sum() == traffic.counts["valid_events"] == len(events)

    title_plays = marts["fct_daily_title_plays"]
    assert dict(
        zip(
            zip(title_plays["event_date"], title_plays["title_id"], strict=True),
            title_plays["plays"],
            strict=True,
        )
    ) == dict(plays)
    hours = marts["fct_hourly_events"]
    assert dict(
        zip(
            zip(hours["event_hour"], hours["event_type"], strict=True), hours["events"], strict=True
        )
    ) == dict(hourly)

    by_platform = marts["fct_daily_active_users_by_platform"]
    assert set(by_platform["platform"]) == {*PLATFORMS, "other"}
    campaigns = marts["fct_daily_campaign_impressions"]
    assert campaigns["impressions"].sum() == sum(e["event_type"] == "ad_impression" for e in events)


def test_future_clock_retry_counts_once_at_the_first_receive_time(traffic):
    truth = traffic.truth
    retried = (
        truth.filter(pl.col("is_skewed") & pl.col("valid"))
        .group_by("event_id")
        .agg(copies=pl.len(), first=pl.col("kafka_timestamp").min())
        .filter(pl.col("copies") > 1)
    )
    assert retried.height > 0
    hourly = expected_marts(truth)["fct_hourly_events"]
    assert hourly["events"].sum() == traffic.counts["valid_events"]


def test_write_expected_marts(tmp_path, traffic):
    written = write_expected_marts(traffic.truth, tmp_path)
    names = {p.stem for p in written}
    assert names >= {
        "fct_daily_active_users",
        "fct_daily_active_users_by_platform",
        "fct_daily_title_plays",
        "fct_daily_campaign_impressions",
        "fct_hourly_events",
    }
    assert pl.read_parquet(tmp_path / "fct_daily_active_users.parquet").equals(
        expected_marts(traffic.truth)["fct_daily_active_users"]
    )


def test_produce_sends_in_chunks_with_progress():
    small = generate(spec(events=2500))
    log = InMemoryKafka(partitions=3)
    seen = []
    sent = produce(log, small.messages, chunk_rows=1000, progress=lambda d, t: seen.append((d, t)))
    total = small.messages.num_rows
    assert sent == total and seen[-1] == (total, total) and len(seen) == -(-total // 1000)
    landed = sum(log.high_watermarks({p: 0 for p in log.partitions()}).values())
    assert landed == total


def test_sdk_clocks_send_sent_at_and_are_corrected_to_within_the_transit(traffic):
    truth = traffic.truth
    share = truth["sent_at"].is_not_null().mean()
    assert 0.55 < share < 0.85  # the devices whose SDK stamps sent_at
    accepted = accepted_events(truth).filter(pl.col("sent_at").is_not_null())
    skewed = accepted.filter(pl.col("is_skewed"))
    claimed = truth.filter(pl.col("is_skewed") & pl.col("sent_at").is_not_null())
    assert (claimed["event_time"] < claimed["true_time"] - timedelta(minutes=10)).any()  # behind
    assert (claimed["event_time"] > claimed["true_time"] + timedelta(minutes=10)).any()  # ahead
    assert skewed.height > 0 and skewed["clock_corrected"].all()
    # Corrected = true time + transit (at most 5 s), less the stamp's truncation (under 1 s).
    error = (skewed["event_time"] - skewed["true_time"]).dt.total_microseconds()
    assert error.min() > -1_000_000 and error.max() <= 5_000_000
    # A clock within the deadband (most, and the slightly drifting ones) is left exactly.
    kept = accepted.filter(~pl.col("is_skewed"))
    assert not kept["clock_corrected"].any()
    original = truth.filter(pl.col("valid")).unique("event_id").select("event_id", "event_time")
    assert kept.join(original, on="event_id")["event_time_right"].equals(
        kept.join(original, on="event_id")["event_time"]
    )


def test_a_producer_process_opens_the_log_without_importing_dagster():
    # Dagster would be most of a spawned producer's start-up (`clickstream generate --workers`):
    # a producer process unpickles the log's opener, which may not bring Dagster in.
    kafka = KafkaResource(bootstrap_servers="127.0.0.1:1", topic="t", group_id="g")
    script = (
        "import pickle, sys\n"
        "log = pickle.loads(sys.stdin.buffer.read())()\n"
        "print(type(log).__name__, log.topic, log.group_id)\n"
        "print('dagster' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        input=pickle.dumps(kafka.opener()),
        capture_output=True,
        check=True,
    )
    assert result.stdout.decode().split() == ["KafkaLog", "t", "g", "False"]
