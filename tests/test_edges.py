"""Edges of Kafka and time, one rule at a time, with hand-counted answers: a far-future Kafka
timestamp never stalls a partition, records from before the start date land and events dated
before it are quarantined, optional fields are typed, ranges are offsets (compaction, markers),
offsets deleted before they landed are recorded and never shrink bronze, copies re-stamped into
other hours count once, RFC 3339's edge cases are decided."""

from __future__ import annotations

import json
import random
import shutil
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from clickstream_assets import cleaning
from clickstream_assets.checks import bronze_row_problems, lost_offset_problems
from clickstream_assets.cleaning import (
    BUCKET_ROWS,
    ROW_COLUMNS,
    CleaningRun,
    SharedRowGroups,
    clean_hour,
    clean_hours,
    restamped,
)
from clickstream_assets.landing import BRONZE_SCHEMA, cut_timestamps, land_hours
from core.contract import UTC_US, parse_events
from core.ledger import Ledger, bronze_file, copies_file, events_file
from resources.event_log import InMemoryKafka, OffsetsGone
from resources.lake import LakeResource
from tests.helpers import START, CountingLake, at, produce, to_ms, value

H10, H11, H12 = at(10), at(11), at(12)


def land(log, lake, *hours, now=None):
    return land_hours(log, lake, list(hours), now=now or at(13, 5), first_instant=START)


def parse(*bodies, received: datetime = H10) -> list[dict]:
    records = pa.table(
        {
            "kafka_timestamp": pa.array([to_ms(received)] * len(bodies), pa.int64()).cast(
                pa.timestamp("ms", tz="UTC")
            ),
            "value": pa.array([json.dumps(b).encode() for b in bodies], pa.binary()),
        }
    )
    return parse_events(records, start=START).to_pylist()


def event(**fields) -> dict:
    body = {"event_id": "e", "event_type": "click", "event_time": "2026-11-27T10:00:00Z"}
    return body | {"device_id": "d"} | fields


# --- a far-future Kafka timestamp --------------------------------------------------------------


def test_a_future_timestamp_counts_as_the_one_before_it():
    stamps = pa.array(
        [to_ms(at(10, 10)), to_ms(datetime(2031, 1, 1, tzinfo=UTC)), to_ms(at(11, 5))], pa.int64()
    ).cast(pa.timestamp("ms", tz="UTC"))
    cut_by, future = cut_timestamps(stamps, carry=H10, now=at(13))
    assert cut_by.to_pylist() == [at(10, 10), at(10, 10), at(11, 5)]
    assert future.to_pylist() == [False, True, False]
    # A future first record takes the carry (the hour being cut).
    cut_by, _ = cut_timestamps(stamps.slice(1), carry=H10, now=at(13))
    assert cut_by.to_pylist() == [H10, at(11, 5)]


def test_a_future_timestamp_mid_partition_never_stalls_later_hours(lake):
    log = InMemoryKafka(topic="t", partitions=1)
    far = datetime(2031, 5, 1, tzinfo=UTC)
    produce(
        log,
        0,
        [
            (at(10, 10), value("a", at(10, 10))),  # 0
            (far, value("b", at(10, 20))),  # 1: a broken collector clock
            (at(10, 40), value("c", at(10, 40))),  # 2
            (at(11, 10), value("d", at(11, 10))),  # 3
            (at(12, 30), value("e", at(12, 30))),  # 4
        ],
    )
    manifests = land(log, lake, H10, H11, H12)
    assert [(m.partitions[0].start, m.partitions[0].end) for m in manifests] == [
        (0, 3),
        (3, 4),
        (4, 5),
    ]
    assert [m.future_timestamps for m in manifests] == [1, 0, 0]
    bronze = lake.read_parquet([bronze_file(H10, 0)]).sort_by("kafka_offset")
    assert bronze.column("kafka_timestamp")[1].as_py() == far  # kept as received


# --- the start date ----------------------------------------------------------------------------


def test_records_before_the_start_date_land_and_events_before_it_are_quarantined(lake):
    log = InMemoryKafka(topic="t", partitions=1)
    before = START - timedelta(days=2)
    produce(
        log,
        0,
        [
            (before, value("old", before)),  # received and dated before the start
            (START + timedelta(minutes=20), value("new", START + timedelta(minutes=15))),
            (START + timedelta(minutes=30), value("back", START - timedelta(hours=1))),
        ],
    )
    (manifest,) = land_hours(
        log, lake, [START], now=START + timedelta(hours=1, minutes=5), first_instant=START
    )
    assert (manifest.partitions[0].start, manifest.partitions[0].end) == (0, 3)
    assert manifest.event_hours == {START: 1}
    assert manifest.quarantined == {"before_start_date": 2}


# --- typed optional fields, RFC 3339 ---------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"user_id": False}, "wrong_type:user_id"),
        ({"user_id": 0}, "wrong_type:user_id"),
        ({"user_id": {"id": "u"}}, "wrong_type:user_id"),
        ({"session_id": 7}, "wrong_type:session_id"),
        ({"title_id": 5}, "wrong_type:title_id"),
        ({"app_version": ["1"]}, "wrong_type:app_version"),
        ({"position_ms": "12"}, "wrong_type:position_ms"),
        ({"position_ms": 1.5}, "wrong_type:position_ms"),
        ({"schema_version": "2"}, "wrong_type:schema_version"),
        ({"properties": "x"}, "wrong_type:properties"),
        ({"user_id": None, "position_ms": None, "properties": None}, None),
        ({"user_id": "u-1", "position_ms": -5, "schema_version": 2}, None),
        ({"platform": 5}, None),  # anything that is not a known platform is `other`
    ],
)
def test_optional_fields_are_typed(fields, reason):
    (row,) = parse(event(**fields))
    assert row["reason"] == reason


def test_a_non_string_platform_is_other_and_an_empty_user_is_none():
    (row,) = parse(event(platform=5, user_id=""))
    assert (row["platform"], row["user_id"], row["reason"]) == ("other", None, None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-06-30T23:59:60Z", datetime(2026, 6, 30, 23, 59, 59, 999999, tzinfo=UTC)),
        ("2026-06-30T23:59:60.25Z", datetime(2026, 6, 30, 23, 59, 59, 999999, tzinfo=UTC)),
        ("2026-07-01T05:59:60+06:00", datetime(2026, 6, 30, 23, 59, 59, 999999, tzinfo=UTC)),
        ("2026-06-30t23:00:00z", datetime(2026, 6, 30, 23, tzinfo=UTC)),
        ("2026-06-30T24:00:00Z", None),
        ("2026-06-30T10:00:00+99:99", None),
        ("2026-06-30T10:00:00+24:00", None),
        ("2026-06-30T10:60:00Z", None),
        ("2026-06-30T10:30:60Z", None),  # a leap second is the 60th second of minute 59
        ("2026-02-30T10:00:00Z", None),
    ],
)
def test_rfc3339_edges(text, expected):
    (row,) = parse(event(event_time=text), received=datetime(2026, 7, 1, 1, tzinfo=UTC))
    if expected is None:
        assert row["reason"] == "unparseable_event_time"
    else:
        assert (row["reason"], row["event_time"]) == (None, expected)


# --- offsets, not counts -------------------------------------------------------------------


def test_compacted_offsets_and_markers_chain_by_offset(lake):
    log = InMemoryKafka(topic="t", partitions=1)
    produce(log, 0, [(at(10, m), value(f"a{m}", at(10, m))) for m in (1, 2, 3, 4)])  # 0-3
    produce(log, 0, [(at(11, m), value(f"b{m}", at(11, m))) for m in (1, 2)])  # 4-5
    log.compact(0, {2, 3, 4})  # the last two of hour 10 and the first of hour 11
    log.append_marker(0)  # 6: a transaction marker ends the partition
    h10, h11 = land(log, lake, H10, H11)
    assert (h10.partitions[0].start, h10.partitions[0].end, h10.partitions[0].rows) == (0, 5, 2)
    assert (h11.partitions[0].start, h11.partitions[0].end, h11.partitions[0].rows) == (5, 7, 1)
    rows = {p: len(lake.read_parquet([r.file])) for p, r in h11.partitions.items() if r.file}
    assert bronze_row_problems(h11, rows) == []
    produce(log, 0, [(at(12, 5), value("c", at(12, 5)))])  # 7
    (h12,) = land(log, lake, H12)
    assert (h12.partitions[0].start, h12.partitions[0].end) == (7, 8)


# --- offsets deleted before they landed ------------------------------------------------------


def test_a_read_below_the_beginning_is_an_error_not_a_jump():
    log = InMemoryKafka(topic="t", partitions=1)
    produce(log, 0, [(at(10, m), value(f"a{m}", at(10, m))) for m in range(4)])
    log.truncate_before(0, 2)
    with pytest.raises(OffsetsGone, match="no longer holds offset 0"):
        next(log.read(0, 0))


def test_lost_offsets_are_recorded_named_and_never_shrink_bronze(lake):
    log = InMemoryKafka(topic="t", partitions=1)
    produce(log, 0, [(at(10, m), value(f"a{m}", at(10, m))) for m in (1, 2, 3)])  # 0-2
    (h10,) = land(log, lake, H10, now=at(11, 5))
    produce(log, 0, [(at(11, m), value(f"b{m}", at(11, m))) for m in (1, 2, 3, 4)])  # 3-6
    log.truncate_before(0, 5)  # retention passed during an outage: 3 and 4 never landed
    (h11,) = land(log, lake, H11)
    entry = h11.partitions[0]
    assert (entry.start, entry.end, entry.rows, entry.lost_start, entry.lost_end) == (
        3,
        7,
        2,
        3,
        5,
    )
    assert lost_offset_problems(h11) == [
        "2026-11-27T11 p0: offsets 3-4 (2 records) were deleted from the log before they landed"
    ]
    assert lost_offset_problems(h10) == []
    # Re-running hour 10 once its offsets are gone keeps its bronze file whole.
    before = lake.read_parquet([bronze_file(H10, 0)]).num_rows
    land(log, lake, H10)
    assert lake.read_parquet([bronze_file(H10, 0)]).num_rows == before == 3


# --- copies re-stamped into other hours --------------------------------------------------------


# Whole, and cut into one-row dedup buckets (each bucket's copies elsewhere then come from the
# spilled buckets of the nearby hours).
BUCKETS = pytest.mark.parametrize("bucket_rows", [BUCKET_ROWS, 1])


@BUCKETS
def test_copies_restamped_into_other_hours_count_once_at_the_first_received(lake, bucket_rows):
    log = InMemoryKafka(topic="t", partitions=2)
    produce(log, 0, [(at(10, 59, 30), value("x", at(10, 59, 20)))])  # first received
    produce(log, 1, [(at(11, 0, 40), value("x", at(11, 0, 30)))])  # retry, re-stamped
    produce(log, 1, [(at(11, 20), value("y", at(11, 20)))])
    land(log, lake, H10, H11)
    recorded = set(Ledger(lake).recorded_hours())
    options = {"first_instant": START, "now": at(13), "recorded": recorded}
    ten = clean_hour(lake, H10, bucket_rows=bucket_rows, **options)
    eleven = clean_hour(lake, H11, bucket_rows=bucket_rows, **options)
    assert (ten.stamp.events, eleven.stamp.events) == (1, 1)
    assert lake.read_parquet([events_file(H10)]).column("event_id").to_pylist() == ["x"]
    assert lake.read_parquet([events_file(H11)]).column("event_id").to_pylist() == ["y"]
    assert eleven.stamp.duplicates == 1


def test_restamped_rows_are_every_copy_of_the_ids_seen_in_more_than_one_event_hour():
    rng = random.Random(12)
    hours = [H10, H11, H12]
    rows = []  # each id's copies: mostly one event hour, every 40th re-stamped into another
    for i in range(6000):
        first = rng.choice(hours)
        copies = [first] * rng.randint(1, 3)
        if i % 40 == 0:
            copies.append(rng.choice([h for h in hours if h != first]))
        rows += [(f"id-{i}", hour) for hour in copies]
    rng.shuffle(rows)
    copies = pl.DataFrame(
        {
            "event_id": [event_id for event_id, _ in rows],
            "event_hour": [hour for _, hour in rows],
            "kafka_offset": list(range(len(rows))),
        }
    )
    seen: dict[str, set] = {}
    for event_id, hour in rows:
        seen.setdefault(event_id, set()).add(hour)
    expected = sorted(offset for offset, (i, _) in enumerate(rows) if len(seen[i]) > 1)
    assert len(expected) > 300  # 150 ids re-stamped, each with two to four copies
    assert sorted(restamped(copies)["kafka_offset"].to_list()) == expected
    assert restamped(copies.clear()).is_empty()


@BUCKETS
def test_restamped_copies_are_found_once_per_ingest_hour_and_only_in_adjacent_ones(
    lake, bucket_rows
):
    log = InMemoryKafka(topic="t", partitions=2)
    produce(log, 0, [(at(10, 50), value("x", at(10, 50)))])
    produce(log, 1, [(at(11, 10), value("x", at(11, 10)))])  # the next ingest hour: matched
    produce(log, 0, [(at(10, 55), value("z", at(10, 55)))])
    produce(log, 1, [(at(12, 5), value("z", at(12, 5)))])  # two ingest hours on: not matched
    produce(log, 1, [(at(12, 30), value("y", at(12, 30)))])
    land(log, lake, H10, H11, H12, now=at(14))
    options = {"first_instant": START, "now": at(14), "bucket_rows": bucket_rows}
    events = {h: clean_hour(lake, h, **options).stamp.events for h in (H10, H11, H12)}
    assert events == {H10: 2, H11: 0, H12: 2}
    # Each ingest hour's frame holds the copies of its events re-stamped between it and the
    # hour before, found once and kept; the hour before the first has nothing to match.
    frames = {h: lake.read_parquet([copies_file(h)]) for h in (H10, H11, H12)}
    assert {h: f.column("event_id").to_pylist() for h, f in frames.items()} == {
        H10: [],
        H11: ["x", "x"],
        H12: [],
    }
    counting = CountingLake(lake)
    assert clean_hour(counting, H11, **options).stamp.duplicates == 1
    assert counting.reads["read_jsons"] == 1  # the hour's manifest; the frames are kept


@BUCKETS
def test_a_run_reads_each_ingest_hours_copies_once_for_the_two_frames_that_pair_it(
    lake, tmp_path, bucket_rows, monkeypatch
):
    log = InMemoryKafka(topic="t", partitions=2)
    produce(log, 0, [(at(10, 50), value("x", at(10, 50)))])
    produce(log, 1, [(at(11, 10), value("x", at(11, 10)))])  # frame H11 pairs H10 and H11
    produce(log, 0, [(at(11, 55), value("z", at(11, 55)))])
    produce(log, 1, [(at(12, 5), value("z", at(12, 5)))])  # frame H12 pairs H11 and H12
    produce(log, 1, [(at(12, 30), value("y", at(12, 30)))])
    land(log, lake, H10, H11, H12, now=at(14))
    alone = LakeResource(url=str(tmp_path / "alone"))
    shutil.copytree(lake.url, alone.url)
    reads = Counter()
    read = cleaning._valid_copies
    monkeypatch.setattr(
        cleaning,
        "_valid_copies",
        lambda lake, m, *reader: reads.update([m.ingest_hour]) or read(lake, m, *reader),
    )
    options = {"first_instant": START, "now": at(14), "bucket_rows": bucket_rows}
    hours = (H10, H11, H12)
    ran = [c.stamp.events for c in clean_hours(lake, hours, run=CleaningRun.of(lake), **options)]
    assert ran == [1, 1, 1]  # x at its first copy's hour, z likewise, and y
    # Pairs read whole read each hour's valid copies once in a run, and once per frame without
    # one; a pair of more rows than a bucket is scanned in buckets (all but H10's frame: one row).
    whole = bucket_rows == BUCKET_ROWS
    assert reads == ({H10: 1, H11: 1, H12: 1} if whole else {H10: 1})
    reads.clear()
    assert [clean_hour(alone, h, **options).stamp.events for h in hours] == ran
    assert reads == ({H10: 2, H11: 2, H12: 1} if whole else {H10: 1})
    for file in [*(copies_file(h) for h in hours), *(events_file(h) for h in hours)]:
        assert lake.read_parquet([file]).equals(alone.read_parquet([file]))
    assert lake.read_parquet([copies_file(H12)]).column("event_id").to_pylist() == ["z", "z"]


def test_a_run_over_many_hours_reads_each_manifest_and_listing_once(lake):
    log = InMemoryKafka(topic="t", partitions=2)
    produce(log, 0, [(at(10, 50), value("x", at(10, 50)))])
    produce(log, 1, [(at(11, 10), value("x", at(11, 10)))])
    produce(log, 0, [(at(11, 20), value("w", at(10, 40)))])  # late: H10 reads H11 too
    produce(log, 1, [(at(12, 30), value("y", at(12, 30)))])
    land(log, lake, H10, H11, H12, now=at(14))
    counting = CountingLake(lake)
    options = {"first_instant": START, "now": at(14), "run": CleaningRun.of(counting)}
    events = {h: clean_hour(counting, h, **options).stamp.events for h in (H10, H11, H12)}
    assert events == {H10: 2, H11: 0, H12: 1}
    assert counting.reads["read_jsons"] == 3  # each recorded hour's manifest, once
    # The manifests listing, then the day's index and claims, once for its three hours.
    assert (counting.reads["list"], counting.reads["list_nested"]) == (1, 2)


def test_row_groups_shared_by_hours_read_as_a_scan_of_each_hour_would(lake):
    log = InMemoryKafka(topic="t", partitions=1)
    late = [(at(12, 10 + i), value(f"late{i}", at(10 + i % 2, 30))) for i in range(4)]
    produce(log, 0, [*late, (at(12, 30), value("now", at(12, 30)))])
    land(log, lake, H10, H11, H12, now=at(14))
    files = [f for m in Ledger(lake).manifests([H12]).values() for f in m.partitions[0].files]
    shared = SharedRowGroups(lake)
    for hour in (H10, H12, H11, H10):  # kept row groups serve later hours; earlier ones re-read
        expected = lake.dataset(files, BRONZE_SCHEMA).to_table(
            columns=ROW_COLUMNS, filter=ds.field("event_hour") == pa.scalar(hour, UTC_US)
        )
        assert shared.read(files, hour).equals(expected)
    assert sorted(shared.read(files, H11)["event_id"].to_pylist()) == ["late1", "late3"]


@pytest.mark.parametrize("first", [H10, H11])
def test_two_threads_decode_a_row_group_their_hours_share_once(lake, monkeypatch, first):
    # The late events of H10 and H11 share a row group of H12's file (its first). Whichever
    # thread decodes it first, the other (arriving meanwhile) takes it when the decode is done,
    # decoding it again neither for a later hour nor an earlier one.
    log = InMemoryKafka(topic="t", partitions=1)
    late = [(at(12, 10 + i), value(f"late{i}", at(10 + i, 30))) for i in range(2)]
    produce(log, 0, [*late, *[(at(12, 30 + i), value(f"e{i}", at(12, 30))) for i in range(4)]])
    land(log, lake, H10, H11, H12, now=at(14))
    files = [f for m in Ledger(lake).manifests([H12]).values() for f in m.partitions[0].files]
    shared, decodes, started = SharedRowGroups(lake), Counter(), threading.Event()
    decode = SharedRowGroups._decode

    def slow(self, piece, refused):
        decodes[piece.row_groups[0].id] += 1
        started.set()
        time.sleep(0.3)  # the other thread asks for the row group meanwhile
        return decode(self, piece, refused)

    monkeypatch.setattr(SharedRowGroups, "_decode", slow)
    second = H11 if first == H10 else H10

    def after_the_first():
        started.wait(5)
        return shared.read(files, second)

    with ThreadPoolExecutor(2) as pool:
        reads = {
            first: pool.submit(shared.read, files, first),
            second: pool.submit(after_the_first),
        }
        for hour, read in reads.items():
            expected = lake.dataset(files, BRONZE_SCHEMA).to_table(
                columns=ROW_COLUMNS, filter=ds.field("event_hour") == pa.scalar(hour, UTC_US)
            )
            assert read.result().equals(expected)
            assert expected.num_rows == 1
    assert decodes == {0: 1}  # the late events' row group (the second holds H12's alone)


def test_relanding_an_hour_drops_the_copies_found_from_it(lake):
    log = InMemoryKafka(topic="t", partitions=2)
    produce(log, 0, [(at(10, 50), value("x", at(10, 50)))])
    produce(log, 1, [(at(11, 10), value("x", at(11, 10)))])
    produce(log, 1, [(at(12, 10), value("y", at(12, 10)))])
    land(log, lake, H10, H11, H12)
    for hour in (H10, H11, H12):
        clean_hour(lake, hour, first_instant=START, now=at(13, 5))
    assert all(lake.exists(copies_file(h)) for h in (H10, H11, H12))
    land(log, lake, H11)  # re-landed from its recorded ranges
    assert [lake.exists(copies_file(h)) for h in (H10, H11, H12)] == [True, False, False]
    assert clean_hour(lake, H11, first_instant=START, now=at(13, 5)).stamp.duplicates == 1
    assert lake.read_parquet([copies_file(H11)]).num_rows == 2


@BUCKETS
def test_an_invalid_copy_elsewhere_never_wins(lake, bucket_rows):
    log = InMemoryKafka(topic="t", partitions=2)
    produce(log, 0, [(at(10, 59, 30), value("x", at(10, 59, 20), event_type="nope"))])
    produce(log, 1, [(at(11, 0, 40), value("x", at(11, 0, 30)))])
    land(log, lake, H10, H11)
    eleven = clean_hour(lake, H11, first_instant=START, now=at(13), bucket_rows=bucket_rows)
    assert eleven.stamp.events == 1


def test_a_copy_in_bronze_without_typed_events_is_never_taken_for_a_valid_one(lake):
    # Hour 10 landed before bronze kept typed events (its invalid copy of x then reads with a
    # null reason); hour 11's valid x must not lose to it while hour 10 waits to be re-landed.
    log = InMemoryKafka(topic="t", partitions=2)
    produce(log, 0, [(at(10, 59, 30), value("x", at(10, 59, 20), event_type="nope"))])
    produce(log, 1, [(at(11, 0, 40), value("x", at(11, 0, 30)))])
    land(log, lake, H10, H11)
    path = lake.path(bronze_file(H10, 0))
    older = ["kafka_partition", "kafka_offset", "kafka_timestamp", "kafka_key", "value"]
    older += ["ingest_hour", "event_hour", "dedup_bucket", "event_id"]
    pq.write_table(pq.read_table(path).select(older), path)
    eleven = clean_hour(lake, H11, first_instant=START, now=at(13))
    assert eleven.stamp.events == 1
    assert lake.read_parquet([events_file(H11)]).column("event_id").to_pylist() == ["x"]
