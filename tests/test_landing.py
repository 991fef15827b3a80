"""Landing: chained, exact Kafka offset ranges per ingest hour, bronze as received.

Known answers are offsets counted by hand from the records each test produces.
"""

from __future__ import annotations

import contextlib
import json
from datetime import datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clickstream_assets import landing
from clickstream_assets.landing import first_at_or_after, land_hours, row_groups
from core.ledger import (
    CorrectedCopy,
    Ledger,
    Manifest,
    bronze_file,
    landing_quarantine_file,
    manifest_path,
)
from resources.event_log import InMemoryKafka, OffsetsGone
from resources.lake import LakeResource
from sensors.landing import first_ingest_hour
from tests.helpers import START, all_manifests, at, histogram, produce, to_ms, value

H10 = at(10)
H11 = H10 + timedelta(hours=1)
H12 = H10 + timedelta(hours=2)
H13 = H10 + timedelta(hours=3)


def land(log: InMemoryKafka, lake: LakeResource, hours, *, now) -> list[Manifest]:
    return land_hours(log, lake, hours, now=now, first_instant=START)


def ranges(manifest: Manifest) -> dict[int, tuple[int, int]]:
    return {p: (e.start, e.end) for p, e in manifest.partitions.items()}


@pytest.fixture
def log() -> InMemoryKafka:
    """Partition 0 crosses hour boundaries with an out-of-order record; partition 1 is sparse;
    partition 2 never receives anything."""
    log = InMemoryKafka(topic="t", partitions=3)
    produce(
        log,
        0,
        [
            (at(10, 0), value("a0", at(10, 0))),  # offset 0
            (at(10, 30), value("a1", at(10, 29))),  # 1
            (at(10, 59, 59, 999), value("a2", at(10, 59))),  # 2: last ms of hour 10
            (at(11, 0), value("a3", at(11, 0))),  # 3: first instant of hour 11
            (at(10, 45), value("a4", at(10, 44))),  # 4: older, after the boundary
            (at(11, 30), value("a5", at(9, 15))),  # 5: late event of hour 9
            (at(12, 10), value("a6", at(12, 9))),  # 6
        ],
    )
    produce(
        log,
        1,
        [
            (at(10, 10), value("b0", at(10, 10))),  # offset 0
            (at(11, 50), value("b1", at(11, 50))),  # 1
        ],
    )
    return log


def test_first_hour_starts_at_the_log_beginning_and_ends_at_the_boundary(log, lake):
    [manifest] = land(log, lake, [H10], now=H11)
    assert ranges(manifest) == {0: (0, 3), 1: (0, 1), 2: (0, 0)}
    assert manifest.rows == 4
    assert manifest.ingest_hour == H10
    assert histogram(manifest) == {"2026-11-27T10": 4}


def test_next_hour_starts_where_the_previous_ended(log, lake):
    land(log, lake, [H10], now=H11)
    [m11] = land(log, lake, [H11], now=H12)
    [m12] = land(log, lake, [H12], now=H13)
    # Partition 0: offset 3 is the first at or after 11:00; offset 6 the first at or after 12:00.
    assert ranges(m11) == {0: (3, 6), 1: (1, 2), 2: (0, 0)}
    # Nothing newer in partition 1 or 2: the end is the high watermark.
    assert ranges(m12) == {0: (6, 7), 1: (2, 2), 2: (0, 0)}


def event_hour_groups(path) -> list[tuple]:
    """Each row group of a bronze file: its least and greatest event hour and its rows."""
    metadata = pq.ParquetFile(path).metadata
    event_hour = metadata.schema.to_arrow_schema().get_field_index("event_hour")
    return [
        (stats.min, stats.max, metadata.row_group(g).num_rows)
        for g in range(metadata.num_row_groups)
        for stats in [metadata.row_group(g).column(event_hour).statistics]
    ]


def test_bronze_row_groups_cut_long_runs_alone_and_share_short_ones(lake, monkeypatch):
    # Row-group statistics are what lets cleaning skip everything but the hour it rebuilds: a
    # long run of one event hour is a row group of its own, late events of other hours share
    # one, and a filter on the event hour still reads exactly that hour's rows.
    monkeypatch.setattr(landing, "RUN_ROWS", 3)
    log = InMemoryKafka(topic="t", partitions=1)
    produce(
        log,
        0,
        [
            (at(11, 1), value("e1", at(11, 0))),
            (at(11, 2), value("e2", at(11, 1))),
            (at(11, 3), value("late-9", at(9, 15))),
            (at(11, 4), value("e3", at(11, 2))),
            (at(11, 5), value("late-10a", at(10, 15))),
            (at(11, 6), value("late-10b", at(10, 20))),
        ],
    )
    land(log, lake, [H11], now=H12)
    path = lake.path(bronze_file(H11, 0))
    assert event_hour_groups(path) == [(at(9), at(10), 3), (H11, H11, 3)]
    for hour, ids in [
        (at(9), ["late-9"]),
        (at(10), ["late-10a", "late-10b"]),
        (H11, ["e1", "e2", "e3"]),
    ]:
        read = pq.read_table(path, columns=["event_id"], filters=[("event_hour", "==", hour)])
        assert sorted(read.column("event_id").to_pylist()) == ids


def test_a_small_files_on_time_rows_are_a_row_group_apart_from_its_late_ones(lake):
    # Fewer rows than RUN_ROWS: the run holding half of them is still a row group of its own,
    # so that an earlier hour reading its late events skips the on-time rows.
    log = InMemoryKafka(topic="t", partitions=1)
    late = [value("late-9", at(9, 15)), value("late-10", at(10, 15))]
    on_time = [value(f"e{i}", at(11, i)) for i in range(4)]
    produce(log, 0, [(at(11, 10 + i), v) for i, v in enumerate([late[0], *on_time, late[1]])])
    land(log, lake, [H11], now=H12)
    groups = event_hour_groups(lake.path(bronze_file(H11, 0)))
    assert groups == [(at(9), at(10), 2), (H11, H11, 4)]


@pytest.mark.parametrize(
    ("run_ends", "expected"),
    [
        ([5, 6, 7, 20, 21], [(0, 5), (5, 7), (7, 20), (20, 21)]),
        ([1, 2, 3, 4, 5, 6], [(0, 5), (5, 6)]),
        ([10], [(0, 10)]),
        ([2], [(0, 2)]),
    ],
)
def test_row_groups(run_ends, expected):
    assert list(row_groups(run_ends, 5)) == expected


def test_out_of_order_record_after_the_boundary_lands_in_the_later_hour(log, lake):
    land(log, lake, [H10, H11], now=H12)
    bronze = pq.read_table(lake.path(bronze_file(H11, 0))).sort_by("kafka_offset").to_pylist()
    assert [r["kafka_offset"] for r in bronze] == [3, 4, 5]
    assert bronze[1]["kafka_timestamp"] == at(10, 45)
    assert all(r["ingest_hour"] == H11 for r in bronze)
    # Its event hour (10) is in the later ingest hour's histogram, as is the late event of 9.
    manifest = Ledger(lake).manifest(H11)
    assert histogram(manifest) == {
        "2026-11-27T09": 1,
        "2026-11-27T10": 1,
        "2026-11-27T11": 2,
    }


def test_bronze_keeps_what_was_received(log, lake):
    land(log, lake, [H10], now=H11)
    table = pq.read_table(lake.path(bronze_file(H10, 0)))
    assert table.column_names == [
        "kafka_partition",
        "kafka_offset",
        "kafka_timestamp",
        "kafka_key",
        "value",
        "ingest_hour",
        # parsed once, as it landed
        "reason",
        "event_id",
        "event_type",
        "event_time",
        "event_hour",
        "device_id",
        "user_id",
        "session_id",
        "platform",
        "title_id",
        "campaign_id",
        "ad_id",
        "page",
        "app_version",
        "position_ms",
        "schema_version",
        "properties",
        "clock_corrected",
        "device_hour",
        "dedup_bucket",
    ]
    rows = table.to_pylist()
    assert [r["kafka_partition"] for r in rows] == [0, 0, 0]
    assert [r["kafka_offset"] for r in rows] == [0, 1, 2]
    assert [r["kafka_timestamp"] for r in rows] == [at(10, 0), at(10, 30), at(10, 59, 59, 999)]
    assert [r["kafka_key"] for r in rows] == [b"dev-1"] * 3
    assert rows[1]["value"] == value("a1", at(10, 29))
    assert [r["event_hour"] for r in rows] == [H10, H10, H10]
    assert [r["event_id"] for r in rows] == ["a0", "a1", "a2"]
    assert [r["reason"] for r in rows] == [None] * 3
    assert rows[1]["event_time"] == at(10, 29)
    assert rows[1]["device_id"] == json.loads(rows[1]["value"])["device_id"]


def test_an_empty_hour_gets_empty_ranges_and_a_manifest(log, lake):
    land(log, lake, [H10, H11, H12], now=H13)
    [m13] = land(log, lake, [H13], now=H13 + timedelta(hours=1))
    assert ranges(m13) == {0: (7, 7), 1: (2, 2), 2: (0, 0)}
    assert m13.rows == 0
    assert histogram(m13) == {}
    assert all(e.rows == 0 and e.file is None for e in m13.partitions.values())
    assert lake.exists(manifest_path(H13))
    assert H13 in Ledger(lake).recorded_hours()


def test_an_empty_log_lands_empty_hours(lake):
    log = InMemoryKafka(topic="t", partitions=2)
    manifests = land(log, lake, [H10, H11], now=H12)
    assert [ranges(m) for m in manifests] == [{0: (0, 0), 1: (0, 0)}] * 2
    assert [m.rows for m in manifests] == [0, 0]


def test_an_idle_partition(log, lake):
    manifests = land(log, lake, [H10, H11, H12], now=H13)
    for manifest in manifests:
        entry = manifest.partitions[2]
        assert (entry.start, entry.end, entry.rows, entry.file) == (0, 0, 0, None)
    assert not lake.exists(bronze_file(H10, 2))


def test_several_hours_in_one_call_match_hour_by_hour(log, lake, tmp_path):
    together = land(log, lake, [H10, H11, H12], now=H13)
    assert [m.ingest_hour for m in together] == [H10, H11, H12]
    assert [ranges(m) for m in together] == [
        {0: (0, 3), 1: (0, 1), 2: (0, 0)},
        {0: (3, 6), 1: (1, 2), 2: (0, 0)},
        {0: (6, 7), 1: (2, 2), 2: (0, 0)},
    ]
    assert [m.rows for m in together] == [4, 4, 1]

    one_by_one = LakeResource(url=str(tmp_path / "other"))
    for hour in (H10, H11, H12):
        land(log, one_by_one, [hour], now=H13)
    for hour in (H10, H11, H12):
        for p in (0, 1):
            name = bronze_file(hour, p)
            if lake.exists(name):
                assert pq.read_table(lake.path(name)).equals(pq.read_table(one_by_one.path(name)))
            else:
                assert not one_by_one.exists(name)


def test_hours_spanning_reader_batches(lake):
    """The fake reads 1000 records a batch: a boundary at a batch edge and inside a batch."""
    log = InMemoryKafka(topic="t", partitions=1)
    # Offset i is received at 10:43:20 + i s: offset 1000 is exactly 11:00:00 (a batch edge),
    # offset 4600 exactly 12:00:00 (inside the fifth batch).
    start = at(10, 43, 20)
    produce(
        log,
        0,
        [
            (start + timedelta(seconds=i), value(f"e{i}", start + timedelta(seconds=i)))
            for i in range(5000)
        ],
    )
    m10, m11 = land(log, lake, [H10, H11], now=H12)
    assert ranges(m10) == {0: (0, 1000)}
    assert ranges(m11) == {0: (1000, 4600)}
    [m12] = land(log, lake, [H12], now=H13)
    assert ranges(m12) == {0: (4600, 5000)}
    assert histogram(m11) == {"2026-11-27T11": 3600}
    offsets = pq.read_table(lake.path(bronze_file(H11, 0))).column("kafka_offset")
    assert offsets.to_pylist() == list(range(1000, 4600))


def test_rerun_rewrites_identical_bytes_and_keeps_the_manifest(log, lake):
    land(log, lake, [H10, H11], now=H12)
    produce(log, 0, [(at(10, 20), b"not json")])  # arrives after 11:00 with an old timestamp
    produce(log, 1, [(at(11, 5), value("b2", at(11, 5)))])
    land(log, lake, [H10], now=H13)  # the clock has moved on: H10 is recorded anyway

    def snapshot() -> dict[str, bytes]:
        files = {}
        for path in lake.fs.find(lake.path("")):
            with lake.fs.open(path, "rb") as handle:
                files[path] = handle.read()
        return files

    before = snapshot()
    again = land(log, lake, [H10, H11], now=H13 + timedelta(hours=5))
    after = snapshot()
    assert after == before
    assert [ranges(m) for m in again] == [
        {0: (0, 3), 1: (0, 1), 2: (0, 0)},
        {0: (3, 6), 1: (1, 2), 2: (0, 0)},
    ]
    # The records produced after landing go to the next hour, not into the recorded ones.
    [m12] = land(log, lake, [H12], now=H13)
    assert ranges(m12) == {0: (6, 8), 1: (2, 3), 2: (0, 0)}


def test_a_recorded_hour_and_the_next_fresh_one_in_one_call(log, lake):
    [first] = land(log, lake, [H10], now=H11)
    again, fresh = land(log, lake, [H10, H11], now=H12)
    assert again == first
    assert ranges(fresh) == {0: (3, 6), 1: (1, 2), 2: (0, 0)}
    assert log.committed() == {0: 6, 1: 2, 2: 0}


def test_rerun_after_bronze_loss_restores_the_same_bytes(log, lake):
    land(log, lake, [H10], now=H11)
    name = bronze_file(H10, 0)
    with lake.fs.open(lake.path(name), "rb") as handle:
        original = handle.read()
    manifest_bytes = lake.fs.cat(lake.path(manifest_path(H10)))
    lake.remove(name)
    land(log, lake, [H10], now=H12)
    with lake.fs.open(lake.path(name), "rb") as handle:
        assert handle.read() == original
    assert lake.fs.cat(lake.path(manifest_path(H10))) == manifest_bytes


def test_rerun_after_retention_never_corrupts_bronze(log, lake):
    """Bronze outlives Kafka: re-landing an hour whose records retention dropped must not
    replace bronze with other records (it may refuse, but the recorded bytes must stay)."""
    land(log, lake, [H10, H11], now=H12)
    name = bronze_file(H10, 0)
    original = lake.fs.cat(lake.path(name))
    log.truncate_before(0, 5)  # offsets 0..4 are gone
    with contextlib.suppress(Exception):  # refusing is acceptable, corrupting is not
        land(log, lake, [H10], now=H12)
    assert lake.fs.cat(lake.path(name)) == original
    rows = pq.read_table(lake.path(name)).to_pylist()
    assert [r["kafka_offset"] for r in rows] == [0, 1, 2]
    assert rows[0]["value"] == value("a0", at(10, 0))


@pytest.mark.parametrize(
    ("hour", "now"),
    [
        (H10, at(10, 59, 59)),
        (H10, at(10, 30)),
        (H10, H10),
    ],
)
def test_landing_an_hour_that_has_not_closed_raises(log, lake, hour, now):
    with pytest.raises(ValueError, match="not closed"):
        land(log, lake, [hour], now=now)
    assert all_manifests(lake) == {}


def test_landing_a_later_hour_that_has_not_closed_raises(log, lake):
    land(log, lake, [H10], now=H11)
    with pytest.raises(ValueError):
        land(log, lake, [H11], now=at(11, 59, 59, 999))
    with pytest.raises(ValueError):
        land(log, lake, [H11, H12], now=at(12, 30))
    assert set(all_manifests(lake)) == {H10}


def test_an_hour_closes_exactly_at_its_end(log, lake):
    [manifest] = land(log, lake, [H10], now=H11)
    assert manifest.ingest_hour == H10


def test_landing_with_a_gap_raises(log, lake):
    land(log, lake, [H10], now=H13)
    with pytest.raises(ValueError):
        land(log, lake, [H12], now=H13)
    with pytest.raises(ValueError):
        land(log, lake, [H12, H13], now=H13 + timedelta(hours=1))
    assert set(all_manifests(lake)) == {H10}


def test_landing_non_consecutive_hours_in_one_call_raises(log, lake):
    with pytest.raises(ValueError):
        land(log, lake, [H10, H12], now=H13)
    assert all_manifests(lake) == {}


def test_landing_an_hour_before_the_ledger_raises(log, lake):
    land(log, lake, [H11], now=H12)
    with pytest.raises(ValueError):
        land(log, lake, [H10], now=H12)


def test_unreadable_values_are_quarantined_at_landing(lake):
    log = InMemoryKafka(topic="t", partitions=2)
    produce(
        log,
        0,
        [
            (at(10, 1), value("ok-1", at(10, 1))),  # 0
            (at(10, 2), None),  # 1: null value
            (at(10, 3), b"not json"),  # 2
            (at(10, 4), b"[1, 2]"),  # 3: not an object
            (at(10, 5), json.dumps({"event_id": "x", "event_type": "click"}).encode()),  # 4
            (at(10, 6), value("bad-time", "2026-11-27T10:06:00")),  # 5: no offset
            (at(10, 7), value("bad-type", at(10, 7), event_type="purchase")),  # 6: for cleaning
            (at(10, 8), b"\xff\xfe"),  # 7: invalid UTF-8
            (at(11, 1), None),  # 8: next hour
        ],
    )
    produce(log, 1, [(at(10, 30), b"{oops")])
    [manifest] = land(log, lake, [H10], now=H11)

    assert manifest.quarantined == {
        "missing_field:event_time": 1,
        "not_json": 3,
        "not_object": 1,
        "null_value": 1,
        "unparseable_event_time": 1,
    }
    # Readable events, valid or not, go to cleaning through the histogram.
    assert histogram(manifest) == {"2026-11-27T10": 2}

    quarantine = pq.read_table(lake.path(landing_quarantine_file(H10, 0))).to_pylist()
    assert [(r["kafka_offset"], r["reason"]) for r in quarantine] == [
        (1, "null_value"),
        (2, "not_json"),
        (3, "not_object"),
        (4, "missing_field:event_time"),
        (5, "unparseable_event_time"),
        (7, "not_json"),
    ]
    assert {r["stage"] for r in quarantine} == {"landing"}
    assert {r["ingest_hour"] for r in quarantine} == {H10}
    assert quarantine[1]["value"] == b"not json"
    assert quarantine[0]["value"] is None
    assert quarantine[5]["value"] == b"\xff\xfe"
    assert all(r["event_hour"] is None for r in quarantine)
    other = pq.read_table(lake.path(landing_quarantine_file(H10, 1))).to_pylist()
    assert [(r["kafka_partition"], r["kafka_offset"], r["reason"]) for r in other] == [
        (1, 0, "not_json")
    ]

    # Bronze still keeps every record of the range, readable or not.
    assert ranges(manifest) == {0: (0, 8), 1: (0, 1)}
    span = sum(e.end - e.start for e in manifest.partitions.values())
    bronze_rows = sum(
        pq.read_table(lake.path(e.file)).num_rows for e in manifest.partitions.values() if e.file
    )
    assert bronze_rows == span == manifest.rows == 9
    bronze = pq.read_table(lake.path(bronze_file(H10, 0))).sort_by("kafka_offset").to_pylist()
    assert [r["kafka_offset"] for r in bronze] == list(range(8))
    assert bronze[1]["value"] is None
    assert bronze[7]["value"] == b"\xff\xfe"
    readable = [r["kafka_offset"] for r in bronze if r["event_hour"] is not None]
    assert readable == [0, 6]


def test_consumer_group_commits_the_landed_ends(log, lake):
    assert log.committed() == {}
    land(log, lake, [H10], now=H11)
    assert log.committed() == {0: 3, 1: 1, 2: 0}
    land(log, lake, [H11, H12], now=H13)
    assert log.committed() == {0: 7, 1: 2, 2: 0}


def test_corrected_future_clock_events_are_recorded_in_the_manifest(lake):
    log = InMemoryKafka(topic="t", partitions=1)
    produce(
        log,
        0,
        [
            (at(10, 10), value("ok", at(10, 9))),
            (at(10, 20), value("ahead", at(15, 0))),  # corrected: event hour 10
            (at(10, 30), value("ahead-a-bit", at(10, 35))),  # exactly 5 min: not corrected
        ],
    )
    [manifest] = land(log, lake, [H10], now=H11)
    assert histogram(manifest) == {"2026-11-27T10": 3}
    assert manifest.corrected == (
        CorrectedCopy(
            event_id="ahead",
            kafka_partition=0,
            kafka_offset=1,
            kafka_timestamp_ms=to_ms(at(10, 20)),
            event_hour="2026-11-27T10",
            device_hour="2026-11-27T15",
        ),
    )


def test_manifests_are_read_back_by_hour(log, lake):
    written = land(log, lake, [H10, H11], now=H12)
    recorded = all_manifests(lake)
    assert list(recorded) == [H10, H11]
    assert [recorded[H10], recorded[H11]] == written


def test_a_partition_added_later_starts_at_its_beginning(log, lake):
    land(log, lake, [H10], now=H11)
    log.create_topic(4)
    produce(log, 3, [(at(11, 10), value("d0", at(11, 10)))])
    [m11] = land(log, lake, [H11], now=H12)
    assert ranges(m11) == {0: (3, 6), 1: (1, 2), 2: (0, 0), 3: (0, 1)}


# --- pure helpers ---------------------------------------------------------------------------


def stamps(*instants: datetime) -> pa.Array:
    return pa.array([to_ms(i) for i in instants], pa.int64()).cast(pa.timestamp("ms", tz="UTC"))


@pytest.mark.parametrize(
    ("instants", "expected"),
    [
        ((), 0),
        ((at(10, 0), at(10, 30)), 2),  # none at or after: the length
        ((at(10, 0), at(11, 0), at(11, 5)), 1),  # exactly the instant counts
        ((at(10, 0), at(10, 59, 59, 999), at(11, 0, 0, 1)), 2),
        ((at(11, 0), at(10, 0)), 0),
        ((at(10, 0), at(12, 0), at(10, 30)), 1),  # the first one, not the last before it
        ((at(12, 0),), 0),
    ],
)
def test_first_at_or_after(instants, expected):
    assert first_at_or_after(stamps(*instants), H11) == expected


def test_the_first_hour_and_a_new_partition_start_at_the_log_beginning(lake):
    log = InMemoryKafka(topic="t", partitions=2)
    produce(log, 0, [(at(10, i), value(f"a{i}", at(10, i))) for i in range(5)])
    log.truncate_before(0, 3)  # retention before anything landed: nothing owed is lost
    [m10] = land(log, lake, [H10], now=H11)
    assert ranges(m10) == {0: (3, 5), 1: (0, 0)}
    assert m10.lost_ranges() == {}
    log.create_topic(3)
    produce(log, 2, [(at(11, i), value(f"c{i}", at(11, i))) for i in range(8)])
    log.truncate_before(2, 7)
    [m11] = land(log, lake, [H11], now=H12)
    # Known partitions chain onto the hour before; the new one starts at its beginning.
    assert ranges(m11) == {0: (5, 5), 1: (0, 0), 2: (7, 8)}
    assert m11.lost_ranges() == {}


def test_first_ingest_hour():
    log = InMemoryKafka(topic="t", partitions=3)
    assert first_ingest_hour(log, not_before=START) is None
    produce(log, 0, [(at(10, 30), b"x"), (at(11, 0), b"x")])
    produce(log, 1, [(at(9, 59, 59), b"x")])
    assert first_ingest_hour(log, not_before=START) == at(9, 0)
    log.truncate_before(1, 1)
    assert first_ingest_hour(log, not_before=START) == at(10, 0)


def _reads(count: int, pulled: list[int], closed: list[bool]):
    """A reader of `count` one-record batches, one per hour from 10:00, noting each batch it
    reads and whether it was closed."""
    try:
        for i in range(count):
            pulled.append(i)
            batch = pa.record_batch(
                {"kafka_timestamp": pa.array([at(10 + i)], pa.timestamp("ms", tz="UTC"))}
            )
            yield batch, i + 1
    finally:
        closed.append(True)


def test_read_ahead_yields_the_reads_batches_in_order_and_closes_the_reader():
    pulled, closed = [], []
    got = [after for _, after in landing._read_ahead(_reads(5, pulled, closed), at(20))]
    assert got == [1, 2, 3, 4, 5]
    assert closed == [True]


def test_read_ahead_reads_past_the_batch_that_reaches_until_only_on_demand():
    pulled, closed = [], []
    reader = landing._read_ahead(_reads(8, pulled, closed), at(12))
    got = []
    for _, after in reader:
        got.append(after)
        if after == 3:  # the batch of 12:00, which reaches `until`
            break
    reader.close()
    assert got == [1, 2, 3]
    assert pulled == [0, 1, 2]
    assert closed == [True]


def test_read_ahead_raises_what_the_reader_raised():
    def failing():
        yield from _reads(1, [], [])
        raise OffsetsGone("t", 0, 1, 5)

    reader = landing._read_ahead(failing(), at(20))
    assert next(reader)[1] == 1
    with pytest.raises(OffsetsGone, match="no longer holds offset 1"):
        next(reader)
