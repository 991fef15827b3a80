"""Cleaning: an event hour rebuilt whole, deduplicated by the contract's first-received rule.

Every scenario goes through the real landing (in-memory Kafka, lake on tmp_path) and states the
expected silver rows by hand: which copy of each event wins and why.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clickstream_assets.cleaning import (
    SILVER_SCHEMA,
    Cleaned,
    CleaningRun,
    bucket_count,
    clean_hour,
    clean_hours,
    corrected_winners,
    first_copies,
)
from clickstream_assets.landing import land_hours
from core.contract import UTC_US
from core.ledger import (
    HOUR,
    CorrectedCopy,
    Manifest,
    bronze_file,
    cleaning_quarantine_file,
    events_file,
)
from resources.event_log import InMemoryKafka
from resources.lake import LakeResource
from tests.helpers import (
    START,
    all_manifests,
    at,
    histogram,
    messy_traffic,
    produce,
    to_ms,
    value,
)

CLEANED_AT = at(23)
"""The clock of every cleaning run here: a re-run with the same clock writes the same bytes."""


def land(log: InMemoryKafka, lake: LakeResource, first: int, last: int) -> None:
    hours = [at(h) for h in range(first, last + 1)]
    land_hours(log, lake, hours, now=hours[-1] + HOUR, first_instant=START)


def clean(lake: LakeResource, hour: int, **options) -> Cleaned:
    return clean_hour(lake, at(hour), first_instant=START, now=CLEANED_AT, **options)


def silver(lake: LakeResource, hour: int) -> list[dict]:
    return pq.read_table(lake.path(events_file(at(hour)))).to_pylist()


def quarantined(lake: LakeResource, hour: int) -> list[dict]:
    return pq.read_table(lake.path(cleaning_quarantine_file(at(hour)))).to_pylist()


def winners(rows: list[dict]) -> list[tuple[str, int, int]]:
    return [(r["event_id"], r["kafka_partition"], r["kafka_offset"]) for r in rows]


def counts(cleaned: Cleaned) -> tuple[int, int, int]:
    """Events, duplicates and quarantined rows of a cleaning run."""
    return cleaned.stamp.events, cleaned.stamp.duplicates, cleaned.stamp.quarantined


def reconciles(cleaned: Cleaned) -> bool:
    stamp = cleaned.stamp
    return (
        stamp.events + stamp.duplicates + stamp.quarantined
        == stamp.bronze_rows
        == cleaned.expected_bronze_rows
    )


@pytest.fixture
def log() -> InMemoryKafka:
    return InMemoryKafka(topic="t", partitions=3)


# --- the dedup rule with conflicting copies ---------------------------------------------------


def test_earliest_kafka_timestamp_wins_over_a_lower_partition(log, lake):
    t = at(10, 1)
    produce(log, 0, [(at(10, 10), value("e", t, page="from-p0"))])
    produce(log, 1, [(at(10, 5), value("e", t, page="from-p1"))])
    land(log, lake, 10, 10)
    stats = clean(lake, 10)
    [row] = silver(lake, 10)
    assert (row["page"], row["kafka_partition"], row["kafka_offset"]) == ("from-p1", 1, 0)
    assert row["received_at"] == at(10, 5)
    assert counts(stats) == (1, 1, 0)
    assert reconciles(stats)


def test_earliest_kafka_timestamp_wins_over_a_lower_offset(log, lake):
    t = at(10, 1)
    produce(log, 0, [(at(10, 10), value("e", t, page="first-offset"))])
    produce(log, 0, [(at(10, 5), value("e", t, page="earlier-stamp"))])
    land(log, lake, 10, 10)
    clean(lake, 10)
    [row] = silver(lake, 10)
    assert (row["page"], row["kafka_offset"]) == ("earlier-stamp", 1)


def test_timestamp_tie_goes_to_the_lower_partition(log, lake):
    t = at(10, 1)
    produce(log, 2, [(at(10, 5), value("e", t, page="p2"))])
    produce(log, 1, [(at(10, 5), value("e", t, page="p1"))])
    produce(log, 0, [(at(10, 1), value("other", t)), (at(10, 5), value("e", t, page="p0"))])
    land(log, lake, 10, 10)
    stats = clean(lake, 10)
    rows = {r["event_id"]: r for r in silver(lake, 10)}
    assert (rows["e"]["page"], rows["e"]["kafka_partition"], rows["e"]["kafka_offset"]) == (
        "p0",
        0,
        1,
    )
    assert (stats.stamp.events, stats.stamp.duplicates) == (2, 2)
    assert reconciles(stats)


def test_timestamp_and_partition_tie_goes_to_the_lower_offset(log, lake):
    t = at(10, 1)
    produce(
        log,
        1,
        [
            (at(10, 5), value("e", t, page="offset-0")),
            (at(10, 5), value("e", t, page="offset-1")),
            (at(10, 5), value("e", t, page="offset-2")),
        ],
    )
    land(log, lake, 10, 10)
    stats = clean(lake, 10)
    [row] = silver(lake, 10)
    assert (row["page"], row["kafka_offset"]) == ("offset-0", 0)
    assert stats.stamp.duplicates == 2


def test_an_invalid_copy_never_wins(log, lake):
    t = at(10, 1)
    produce(
        log,
        0,
        [
            (at(10, 2), value("e", t, device_id=...)),  # first received, but invalid
            (at(10, 3), value("e", t, event_type="click", page="valid")),
        ],
    )
    produce(log, 1, [(at(10, 1), value("e", t, event_type="purchase"))])  # earliest, invalid
    land(log, lake, 10, 10)
    stats = clean(lake, 10)
    [row] = silver(lake, 10)
    assert (row["page"], row["kafka_partition"], row["kafka_offset"]) == ("valid", 0, 1)
    assert counts(stats) == (1, 0, 2)
    assert stats.quarantined_by_reason == {
        "missing_field:device_id": 1,
        "unknown_event_type": 1,
    }
    bad = quarantined(lake, 10)
    assert [(r["kafka_partition"], r["kafka_offset"], r["reason"]) for r in bad] == [
        (0, 0, "missing_field:device_id"),
        (1, 0, "unknown_event_type"),
    ]
    assert {r["stage"] for r in bad} == {"cleaning"}
    assert bad[1]["value"] == value("e", t, event_type="purchase")
    assert reconciles(stats)


def test_duplicates_across_ingest_hours(log, lake):
    t = at(10, 57)
    produce(
        log,
        0,
        [
            (at(10, 58), value("e", t, page="first")),
            (at(11, 2), value("e", t, page="retry")),
            (at(11, 3), value("f", at(11, 3))),
        ],
    )
    land(log, lake, 10, 11)
    stats = clean(lake, 10)
    [row] = silver(lake, 10)
    assert (row["page"], row["ingest_hour"]) == ("first", at(10))
    assert (stats.stamp.events, stats.stamp.duplicates, stats.stamp.bronze_rows) == (1, 1, 2)
    assert stats.source_ingest_hours == [at(10), at(11)]
    assert stats.late_events == 0
    assert reconciles(stats)
    assert [r["event_id"] for r in silver(lake, 10)] == ["e"]  # "f" belongs to hour 11
    clean(lake, 11)
    assert winners(silver(lake, 11)) == [("f", 0, 2)]


def test_duplicates_across_ingest_hours_and_partitions(log, lake):
    t = at(10, 50)
    produce(log, 2, [(at(10, 55), value("e", t, page="p2-first"))])
    produce(log, 0, [(at(12, 1), value("e", t, page="p0-retry"))])
    produce(log, 1, [(at(11, 1), value("e", t, page="p1-retry"))])
    land(log, lake, 10, 12)
    stats = clean(lake, 10)
    [row] = silver(lake, 10)
    assert (row["page"], row["kafka_partition"]) == ("p2-first", 2)
    assert (stats.stamp.events, stats.stamp.duplicates, stats.stamp.bronze_rows) == (1, 2, 3)
    assert reconciles(stats)


# --- late data ----------------------------------------------------------------------------------


def test_a_late_event_rebuilds_the_earlier_event_hour(log, lake):
    produce(log, 0, [(at(10, 30), value("on-time", at(10, 29)))])
    land(log, lake, 10, 10)
    first = clean(lake, 10)
    assert winners(silver(lake, 10)) == [("on-time", 0, 0)]
    assert first.late_events == 0

    produce(
        log,
        1,
        [(at(14, 10), value("late", at(10, 15))), (at(14, 11), value("on-time", at(10, 29)))],
    )
    land(log, lake, 11, 14)
    manifests = all_manifests(lake)
    assert histogram(manifests[at(14)]) == {"2026-11-27T10": 2}
    again = clean(lake, 10)
    rows = silver(lake, 10)
    # Sorted by event_time: the late one happened first.
    assert winners(rows) == [("late", 1, 0), ("on-time", 0, 0)]
    assert [r["ingest_hour"] for r in rows] == [at(14), at(10)]
    assert (again.stamp.events, again.stamp.duplicates, again.late_events) == (2, 1, 1)
    assert again.source_ingest_hours == [at(10), at(14)]
    assert reconciles(again)


# --- future clock -------------------------------------------------------------------------------


def test_future_clock_event_counts_once_across_event_hours(log, lake):
    device_time = at(12, 0)  # the device clock is far ahead of the first sends
    produce(
        log,
        0,
        [
            (at(10, 10), value("ahead", device_time, page="first")),  # corrected -> 10:10
            (at(11, 20), value("ahead", device_time, page="retry-1")),  # corrected -> 11:20
            (at(11, 58), value("ahead", device_time, page="retry-2")),  # 2 min ahead: kept, 12
        ],
    )
    produce(log, 1, [(at(11, 30), value("normal", at(11, 30)))])
    land(log, lake, 10, 11)
    manifests = all_manifests(lake)
    assert histogram(manifests[at(10)]) == {"2026-11-27T10": 1}
    assert histogram(manifests[at(11)]) == {"2026-11-27T11": 2, "2026-11-27T12": 1}

    s10, s11, s12 = clean(lake, 10), clean(lake, 11), clean(lake, 12)
    [kept] = silver(lake, 10)
    assert (kept["page"], kept["event_time"], kept["clock_corrected"]) == (
        "first",
        at(10, 10),
        True,
    )
    assert winners(silver(lake, 11)) == [("normal", 1, 0)]
    assert silver(lake, 12) == []
    total = sum(1 for h in (10, 11, 12) for r in silver(lake, h) if r["event_id"] == "ahead")
    assert total == 1
    assert (s10.stamp.events, s10.stamp.duplicates, s10.clock_corrected) == (1, 0, 1)
    assert (s11.stamp.events, s11.stamp.duplicates) == (1, 1)
    assert (s12.stamp.events, s12.stamp.duplicates) == (0, 1)
    assert all(reconciles(s) for s in (s10, s11, s12))


def test_future_clock_first_copy_wins_even_when_a_retry_lands_in_an_earlier_partition(log, lake):
    device_time = at(13, 0)
    produce(log, 1, [(at(10, 40), value("ahead", device_time, page="first"))])  # -> hour 10
    produce(log, 0, [(at(12, 57), value("ahead", device_time, page="retry"))])  # kept -> hour 13
    land(log, lake, 10, 12)
    clean(lake, 10)
    s13 = clean(lake, 13)
    assert [r["page"] for r in silver(lake, 10)] == ["first"]
    assert silver(lake, 13) == []
    assert (s13.stamp.events, s13.stamp.duplicates) == (0, 1)
    assert reconciles(s13)


# --- reconciliation, re-runs, empty hours ---------------------------------------------------


def test_reconciliation_on_a_mixed_hour(log, lake):
    t = at(10, 20)
    produce(
        log,
        0,
        [
            (at(10, 1), value("a", t)),
            (at(10, 2), value("a", t)),  # duplicate
            (at(10, 3), value("b", t, event_type="play")),  # missing_title_id
            (at(10, 4), None),  # unreadable: quarantined at landing, not here
            (at(10, 5), b"{"),  # unreadable
            (at(10, 6), value("c", t, event_type="ad_impression", campaign_id="c1")),
            (at(10, 7), value("d", at(9, 59))),  # event hour 9
        ],
    )
    produce(log, 1, [(at(10, 8), value("a", t)), (at(10, 9), value("", t))])
    land(log, lake, 10, 10)
    stats = clean(lake, 10)
    assert stats.stamp.bronze_rows == 6
    assert stats.expected_bronze_rows == 6
    assert counts(stats) == (2, 2, 2)
    assert stats.quarantined_by_reason == {"missing_field:event_id": 1, "missing_title_id": 1}
    assert sorted(r["event_id"] for r in silver(lake, 10)) == ["a", "c"]
    assert reconciles(stats)
    s9 = clean(lake, 9)
    assert (s9.stamp.events, s9.stamp.bronze_rows, s9.late_events) == (1, 1, 1)


def test_rerun_produces_identical_silver_bytes(log, lake):
    t = at(10, 20)
    produce(log, 0, [(at(10, 1), value("a", t)), (at(10, 2), value("b", t, event_type="x"))])
    produce(log, 1, [(at(10, 1), value("a", t)), (at(10, 3), value("c", at(10, 3)))])
    land(log, lake, 10, 10)
    first = clean(lake, 10)
    silver_bytes = lake.fs.cat(lake.path(events_file(at(10))))
    quarantine_bytes = lake.fs.cat(lake.path(cleaning_quarantine_file(at(10))))
    second = clean(lake, 10)
    assert second == first
    assert lake.fs.cat(lake.path(events_file(at(10)))) == silver_bytes
    assert lake.fs.cat(lake.path(cleaning_quarantine_file(at(10)))) == quarantine_bytes


def test_silver_schema_and_order(log, lake):
    produce(
        log,
        0,
        [
            (at(10, 50), value("z", at(10, 5))),
            (at(10, 51), value("b", at(10, 40))),
            (at(10, 52), value("a", at(10, 40))),
        ],
    )
    land(log, lake, 10, 10)
    clean(lake, 10)
    table = pq.read_table(lake.path(events_file(at(10))))
    assert table.schema.equals(SILVER_SCHEMA)
    assert table.column("event_id").to_pylist() == ["z", "a", "b"]


@pytest.mark.parametrize("landed", [False, True], ids=["no-manifests", "nothing-in-hour"])
def test_an_empty_hour_yields_an_empty_silver_file(log, lake, landed):
    if landed:
        produce(log, 0, [(at(10, 5), value("a", at(10, 5)))])
        land(log, lake, 10, 11)
    stats = clean(lake, 11)
    table = pq.read_table(lake.path(events_file(at(11))))
    assert table.num_rows == 0
    assert table.schema.equals(SILVER_SCHEMA)
    assert pq.read_table(lake.path(cleaning_quarantine_file(at(11)))).num_rows == 0
    assert counts(stats) == (0, 0, 0)
    assert (stats.stamp.bronze_rows, stats.expected_bronze_rows) == (0, 0)


# --- the pure helpers -----------------------------------------------------------------------


def frame(
    rows: list[tuple[str, datetime, int, int]], reasons: tuple[str | None, ...] = ()
) -> pa.Table:
    """Copies received at their event time, valid unless `reasons` says otherwise."""
    return pl.DataFrame(
        {
            "event_id": [r[0] for r in rows],
            "event_time": [r[1] for r in rows],
            "received_at": [r[1] for r in rows],
            "kafka_partition": pl.Series([r[2] for r in rows], dtype=pl.Int32),
            "kafka_offset": pl.Series([r[3] for r in rows], dtype=pl.Int64),
            "reason": pl.Series(list(reasons) or [None] * len(rows), dtype=pl.String),
        }
    ).to_arrow()


NO_WINNERS = pl.DataFrame(
    schema={"event_id": pl.String, "kafka_partition": pl.Int32, "kafka_offset": pl.Int64}
)


def test_first_copies_by_arrival_order():
    valid = frame(
        [
            ("a", at(10, 5), 1, 9),
            ("a", at(10, 4), 2, 0),  # earliest: wins
            ("b", at(10, 5), 1, 3),
            ("b", at(10, 5), 0, 7),  # tie on time, lower partition: wins
            ("c", at(10, 5), 0, 8),
            ("c", at(10, 5), 0, 6),  # tie on time and partition, lower offset: wins
            ("d", at(10, 9), 2, 2),
        ]
    )
    kept = valid.take(first_copies(valid, NO_WINNERS))
    got = sorted((r["event_id"], r["kafka_partition"], r["kafka_offset"]) for r in kept.to_pylist())
    assert got == [("a", 2, 0), ("b", 0, 7), ("c", 0, 6), ("d", 2, 2)]


def test_first_copies_never_keeps_an_invalid_copy():
    rows = frame(
        [("a", at(10, 4), 0, 1), ("a", at(10, 5), 0, 2), ("b", at(10, 6), 0, 3)],
        reasons=("wrong_type:user_id", None, "unknown_event_type"),
    )
    assert first_copies(rows, NO_WINNERS).to_pylist() == [1]


def test_first_copies_in_silver_order():
    rows = frame([("b", at(10, 7), 0, 1), ("c", at(10, 5), 0, 2), ("a", at(10, 7), 0, 3)])
    assert first_copies(rows, NO_WINNERS).to_pylist() == [1, 2, 0]


def test_first_copies_keeps_a_corrected_event_only_at_its_global_winner():
    valid = frame([("x", at(11, 5), 0, 4), ("y", at(11, 6), 0, 5)])
    global_winners = pl.DataFrame(
        {
            "event_id": ["x", "y"],
            "kafka_partition": pl.Series([1, 0], dtype=pl.Int32),
            "kafka_offset": pl.Series([0, 5], dtype=pl.Int64),
        }
    )
    kept = valid.take(first_copies(valid, global_winners))
    assert kept["event_id"].to_pylist() == ["y"]


def test_corrected_winners_pick_the_first_received_copy():
    def copy(event_id, partition, offset, received):
        return CorrectedCopy(
            event_id=event_id,
            kafka_partition=partition,
            kafka_offset=offset,
            kafka_timestamp_ms=to_ms(received),
            event_hour="2026-11-27T10",
            device_hour="2026-11-27T13",
        )

    def manifest(hour: datetime, *corrected: CorrectedCopy) -> Manifest:
        return Manifest(hour, "t", partitions={}, event_hours={}, corrected=corrected)

    manifests = [
        manifest(at(11), copy("x", 0, 9, at(11, 1)), copy("y", 0, 10, at(11, 2))),
        manifest(at(10), copy("x", 1, 3, at(10, 1)), copy("y", 1, 4, at(11, 2))),
        manifest(at(12)),
    ]
    got = sorted(corrected_winners(manifests).iter_rows())
    # x: earliest timestamp; y: same timestamp, lower partition.
    assert got == [("x", 1, 3), ("y", 0, 10)]


@pytest.mark.parametrize(
    ("rows", "bucket_rows", "expected"),
    [(0, 10, 1), (10, 10, 1), (11, 10, 2), (95, 10, 16), (10**9, 1, 256)],
)
def test_bucket_count_is_a_bounded_power_of_two(rows, bucket_rows, expected):
    assert bucket_count(rows, bucket_rows) == expected


def test_a_huge_hour_cleaned_in_buckets_gives_the_same_events(log, lake, tmp_path):
    # 60 events, each sent twice (second copy an hour later), 4 invalid: cleaning it in 16
    # bounded buckets must keep exactly the events that one bucket keeps.
    rows = [(at(10, m), value(f"e{m}", at(10, m))) for m in range(60)]
    rows += [(at(11, m), value(f"e{m}", at(10, m))) for m in range(60)]
    rows += [(at(10, 30), value(f"bad{i}", at(10, 30), event_type="nope")) for i in range(4)]
    no_id = b'{"event_type": "click", "event_time": "2026-11-27T10:31:00Z", "device_id": "d"}'
    rows += [(at(10, 31), no_id)] * 3  # no event_id, so no dedup bucket
    produce(log, 0, sorted(rows, key=lambda r: r[0]))
    land(log, lake, 10, 11)
    bucketed = clean(lake, 10, bucket_rows=8)
    bucketed_ids = sorted(r["event_id"] for r in silver(lake, 10))
    whole = clean(lake, 10)
    assert bucketed.dedup_buckets == 16 and whole.dedup_buckets == 1
    assert bucketed_ids == sorted(r["event_id"] for r in silver(lake, 10))
    assert bucketed_ids == sorted(f"e{m}" for m in range(60))
    for key in ("bronze_rows", "events", "duplicates", "quarantined"):
        assert getattr(bucketed.stamp, key) == getattr(whole.stamp, key)
    assert counts(bucketed) == (60, 60, 7)
    assert len(quarantined(lake, 10)) == 7


def test_bronze_landed_without_typed_events_is_refused_by_name(log, lake):
    # Bronze of an earlier version held the records as received and no typed columns.
    produce(log, 0, [(at(10, 5), value("a", at(10, 5)))])
    land(log, lake, 10, 10)
    path = lake.path(bronze_file(at(10), 0))
    received = pq.read_table(path).select(
        ["kafka_partition", "kafka_offset", "kafka_timestamp", "kafka_key", "value"]
    )
    pq.write_table(
        received.append_column(
            "ingest_hour", pa.repeat(pa.scalar(at(10), UTC_US), 1)
        ).append_column("event_hour", pa.repeat(pa.scalar(at(10), UTC_US), 1)),
        path,
    )
    with pytest.raises(ValueError, match=r"ingest hours 2026-11-27T10 .*re-land"):
        clean(lake, 10)


def test_a_corrected_first_copy_landing_late_restates_the_hour_its_retry_was_counted_in(log, lake):
    # Retry B (12:40, clock fine: event hour 12) lands in ingest hour 12 and is counted there.
    # The first copy A was received earlier (10:00) with a clock 2.5 h ahead, but sits after an
    # hour boundary in the log, so it lands only with ingest hour 13, corrected to event hour 10.
    claimed = at(12, 30)
    produce(log, 0, [(at(12, 40), value("ev", claimed))])
    land(log, lake, 10, 12)
    clean(lake, 12)
    assert winners(silver(lake, 12)) == [("ev", 0, 0)]

    produce(log, 0, [(at(13, 1), value("other", at(13, 1))), (at(10), value("ev", claimed))])
    [manifest] = land_hours(log, lake, [at(13)], now=at(14), first_instant=START)
    assert manifest.hours_to_rebuild() == [at(10), at(12), at(13)]
    for hour in (10, 12, 13):
        clean(lake, hour)
    # Only the first received copy counts, once, at its receive time.
    assert winners(silver(lake, 10)) == [("ev", 0, 2)]
    assert winners(silver(lake, 12)) == []


def test_hours_cleaned_two_at_a_time_write_what_one_at_a_time_writes(tmp_path):
    # Generated traffic: the late events of many hours share row groups, re-stamped copies and
    # invalid rows span hours; every silver, quarantine and copies file must be byte-identical,
    # whether a run's hours share their row groups (two at a time or one) or each hour reads
    # its files alone, without a run.
    traffic = messy_traffic(at(0), at(6), events=6000, seed=3, max_late=timedelta(hours=3))
    log = InMemoryKafka(partitions=3)
    log.produce(traffic.messages)
    one, two, apart = (LakeResource(url=str(tmp_path / name)) for name in ("one", "two", "apart"))
    for lake in (one, two, apart):
        land(log, lake, 0, 9)
    event_hours = sorted({h for m in all_manifests(one).values() for h in m.event_hours})
    run = CleaningRun.of(one)
    alone = [clean_hour(one, h, first_instant=START, now=CLEANED_AT, run=run) for h in event_hours]
    both = clean_hours(
        two,
        event_hours,
        first_instant=START,
        now=CLEANED_AT,
        run=CleaningRun.of(two),
        bucket_rows=2500,
    )
    by_itself = [clean_hour(apart, h, first_instant=START, now=CLEANED_AT) for h in event_hours]
    assert [c.stamp for c in both] == [c.stamp for c in alone] == [c.stamp for c in by_itself]
    assert len(event_hours) >= 6 and sum(c.stamp.quarantined for c in alone) > 0

    def files(lake: LakeResource) -> dict[str, bytes]:
        root = Path(lake.url)
        return {
            str(f.relative_to(root)): f.read_bytes()
            for f in root.rglob("*.parquet")
            if f.parts[len(root.parts)] in {"silver", "quarantine"} or "copies" in f.name
        }

    assert files(two) == files(one) == files(apart)
