"""What the sensors decide from the ledger: closed hours, runs of hours, the day watermark, and
which hours and days are owed (level-triggered), reading the ledger in proportion to the work."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clickstream_assets.cleaning import clean_hour
from core.ledger import (
    STAMP_KEY,
    CleanStamp,
    Ledger,
    Manifest,
    MartStamp,
    PartitionRange,
    day_final_at,
    events_file,
    inputs_digest,
    owed_rollup_hours,
    rollup_digests,
)
from resources.lake import LakeResource
from sensors.plan import closed_hours, contiguous_runs, landing_run_hours, plan_rebuilds
from tests.helpers import CountingLake

LATENESS = timedelta(hours=3)
NOV27 = date(2026, 11, 27)
NOV28 = date(2026, 11, 28)
NOV20 = date(2026, 11, 20)


def utc(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, second, tzinfo=UTC)


# --- closed_hours -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "limit", "expected"),
    [
        (utc(27, 13), 10, [utc(27, 10), utc(27, 11), utc(27, 12)]),
        (utc(27, 12, 59, 59), 10, [utc(27, 10), utc(27, 11)]),  # 12 has not closed
        (utc(27, 11), 10, [utc(27, 10)]),  # an hour closes exactly at its end
        (utc(27, 10, 59, 59), 10, []),
        (utc(27, 10), 10, []),
        (utc(27, 9), 10, []),  # the clock is behind the first hour
        (utc(27, 13), 2, [utc(27, 10), utc(27, 11)]),
        (utc(27, 13), 0, []),
        (utc(28, 1), 24, [utc(27, h) for h in range(10, 24)] + [utc(28, 0)]),
    ],
)
def test_closed_hours(now, limit, expected):
    assert closed_hours(utc(27, 10), now, limit=limit) == expected


@pytest.mark.parametrize(
    ("owed", "lag", "budget", "expected"),
    [
        (28, 1_044_942, 50_000_000, 28),  # the demo's day and its late hours: one run
        (168, 50_000_000, 50_000_000, 168),  # a backlog of exactly the budget: one run
        (48, 2_000_000_000, 50_000_000, 1),  # two days of a billion a day: ~1.2 hours a run
        (48, 200_000_000, 50_000_000, 12),  # a quarter of the backlog: a quarter of its hours
        (3, 10**12, 50_000_000, 1),  # never none
        (0, 0, 50_000_000, 0),
        (5, 0, 50_000_000, 5),  # hours without records cost their run nothing
    ],
)
def test_landing_run_hours(owed, lag, budget, expected):
    assert landing_run_hours(owed, lag, budget) == expected


# --- contiguous_runs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hours", "expected"),
    [
        ([], []),
        ([utc(27, 10)], [(utc(27, 10), utc(27, 10))]),
        (
            [utc(27, 12), utc(27, 10), utc(27, 11), utc(27, 14)],
            [(utc(27, 10), utc(27, 12)), (utc(27, 14), utc(27, 14))],
        ),
        ([utc(27, 10), utc(27, 10), utc(27, 11)], [(utc(27, 10), utc(27, 11))]),
        ([utc(27, 23), utc(28, 0), utc(28, 1)], [(utc(27, 23), utc(28, 1))]),
        (
            [utc(27, 1), utc(27, 3), utc(27, 5)],
            [(utc(27, 1), utc(27, 1)), (utc(27, 3), utc(27, 3)), (utc(27, 5), utc(27, 5))],
        ),
    ],
)
def test_contiguous_runs(hours, expected):
    assert contiguous_runs(hours) == expected


def test_contiguous_days_run_a_week_at_most():
    day = date(2026, 3, 1)
    days = [day + timedelta(days=n) for n in [*range(10), 12, 13]]
    assert contiguous_runs(days, step=timedelta(days=1), most=7) == [
        (date(2026, 3, 1), date(2026, 3, 7)),
        (date(2026, 3, 8), date(2026, 3, 10)),
        (date(2026, 3, 13), date(2026, 3, 14)),
    ]


# --- day_final_at -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "lateness", "expected"),
    [
        (NOV27, timedelta(hours=3), utc(28, 3)),
        (NOV27, timedelta(0), utc(28, 0)),
        (NOV27, timedelta(minutes=90), utc(28, 1, 30)),
        (NOV27, timedelta(days=2), utc(30, 0)),
        (date(2026, 12, 31), timedelta(hours=3), datetime(2027, 1, 1, 3, tzinfo=UTC)),
        (date(2028, 2, 28), timedelta(hours=1), datetime(2028, 2, 29, 1, tzinfo=UTC)),
    ],
)
def test_day_final_at(day, lateness, expected):
    assert day_final_at(day, lateness) == expected


# --- plan_rebuilds: what is owed, from the ledger alone ---------------------------------------


def record(ledger: Ledger, ingest: datetime, event_hours: dict[datetime, int]) -> Manifest:
    manifest = Manifest(
        ingest_hour=ingest,
        topic="t",
        partitions={0: PartitionRange(0, 0, 0, None)},
        event_hours=event_hours,
    )
    assert ledger.record(manifest)
    return manifest


def stamp(lake: LakeResource, hour: datetime, inputs: list[datetime]) -> None:
    """A clean hour built from `inputs` (an empty silver file carrying its stamp)."""
    schema = pa.schema([("event_id", pa.string())])
    footer = CleanStamp(event_hour=hour, inputs=tuple(inputs)).to_bytes()
    path = lake.path(events_file(hour))
    lake.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with pq.ParquetWriter(path, schema.with_metadata({STAMP_KEY: footer})) as writer:
        writer.write_table(schema.empty_table())


def plan(ledger: Ledger, stamps=None, *, settled_from=None, now=None):
    return plan_rebuilds(
        ledger,
        stamps or {},
        settled_from=settled_from,
        first_hour=utc(1, 0),
        now=now or utc(28, 0),
        lateness=LATENESS,
    )


def test_an_hour_is_owed_until_its_stamp_names_every_ingest_hour_holding_it(tmp_path):
    lake = LakeResource(url=str(tmp_path))
    ledger = Ledger(lake)
    record(ledger, utc(27, 10), {utc(27, 10): 5, utc(27, 9): 1})
    record(ledger, utc(27, 11), {utc(27, 11): 4, utc(27, 9): 2})
    assert plan(ledger).event_hours == [utc(27, 9), utc(27, 10), utc(27, 11)]
    stamp(lake, utc(27, 9), [utc(27, 10)])  # built before the late events of 11:00 landed
    stamp(lake, utc(27, 10), [utc(27, 10)])
    stamp(lake, utc(27, 11), [utc(27, 11)])
    assert plan(ledger).event_hours == [utc(27, 9)]
    stamp(lake, utc(27, 9), [utc(27, 10), utc(27, 11)])
    assert plan(ledger).event_hours == []


def test_only_partitions_that_exist_are_named(tmp_path):
    ledger = Ledger(LakeResource(url=str(tmp_path)))
    # An event hour before the first partition, one in the open hour, one in 2031.
    record(ledger, utc(27, 10), {utc(27, 10): 1, datetime(2031, 1, 1, tzinfo=UTC): 1})
    record(ledger, utc(27, 11), {utc(27, 11): 1})
    assert plan(ledger, now=utc(27, 11, 30)).event_hours == [utc(27, 10)]


def test_days_are_owed_on_new_inputs_and_once_more_when_the_landed_watermark_passes(tmp_path):
    lake = LakeResource(url=str(tmp_path))
    ledger = Ledger(lake)
    record(ledger, utc(27, 22), {utc(27, 22): 3})
    stamp(lake, utc(27, 22), [utc(27, 22)])
    first = plan(ledger)
    assert (first.event_hours, first.days) == ([], [NOV27])
    digest = inputs_digest(ledger.day_stamps([NOV27])[NOV27])
    built = {NOV27: MartStamp(NOV27, digest, False, utc(27, 23))}
    assert plan(ledger, built).days == []
    # Landing goes on; until it has landed through 11-28 03:00 the day stays provisional.
    for hour in range(23, 24):
        record(ledger, utc(27, hour), {})
    for hour in range(0, 2):
        record(ledger, utc(28, hour), {})
    assert plan(ledger, built, now=utc(29, 0)).days == []
    record(ledger, utc(28, 2), {})  # the ingest hour that covers end of day + 3 h
    assert plan(ledger, built, now=utc(29, 0)).days == [NOV27]
    final = {NOV27: MartStamp(NOV27, digest, True, utc(28, 3))}
    assert plan(ledger, final, now=utc(29, 0)).days == []


def test_a_day_waits_while_one_of_its_hours_is_owed(tmp_path):
    lake = LakeResource(url=str(tmp_path))
    ledger = Ledger(lake)
    record(ledger, utc(27, 10), {utc(27, 10): 1, utc(27, 11): 1})
    stamp(lake, utc(27, 10), [utc(27, 10)])
    result = plan(ledger)
    assert (result.event_hours, result.days) == ([utc(27, 11)], [])


def test_the_index_is_listed_a_day_at_a_time_and_holds_only_recorded_hours(tmp_path):
    lake = LakeResource(url=str(tmp_path))
    record(Ledger(lake), utc(27, 10), {utc(27, 10): 1, utc(26, 23): 1})
    record(Ledger(lake), utc(27, 11), {utc(27, 10): 1, utc(28, 0): 1})
    lake.write_bytes("bronze/_index/2026-11-27T10/.2026-11-27T12.tmp", b"")  # a temporary
    lake.write_bytes("bronze/_index/2026-11-27T10/notes", b"")  # not the ledger's
    lake.write_bytes("bronze/_index/2026-11-27T10/2026-11-27T13", b"")  # no manifest: a crash
    counting = CountingLake(lake)
    ledger = Ledger(counting, remember=True)
    assert ledger.sources(utc(27, 10)) == [utc(27, 10), utc(27, 11)]
    assert ledger.sources(utc(27, 11)) == []
    assert ledger.sources(utc(26, 23)) == [utc(27, 10)]
    assert ledger.sources(utc(28, 0)) == [utc(27, 11)]
    assert counting.reads["list_nested"] == 3  # the 27th once for both of its hours


def test_the_settled_cursor_bounds_the_read_and_advances_only_when_settled(tmp_path):
    lake = LakeResource(url=str(tmp_path))
    ledger = Ledger(lake)
    for hour in range(0, 12):
        record(ledger, utc(27, hour), {utc(27, hour): 1})
        stamp(lake, utc(27, hour), [utc(27, hour)])
    digest = inputs_digest(ledger.day_stamps([NOV27])[NOV27])
    built = {NOV27: MartStamp(NOV27, digest, False, utc(27, 12))}
    settled = plan(ledger, built)
    assert settled.settled_from == utc(27, 12)
    record(ledger, utc(27, 12), {utc(27, 12): 1})
    counting = CountingLake(lake)
    owed = plan(Ledger(counting), built, settled_from=settled.settled_from)
    assert owed.event_hours == [utc(27, 12)]
    assert owed.settled_from == utc(27, 12)  # not settled yet: examined again next tick
    assert counting.reads["read_jsons"] == 1  # the one new manifest, not the twelve before


def test_cleaning_an_hour_after_a_year_of_manifests_reads_a_bounded_ledger(tmp_path):
    lake = LakeResource(url=str(tmp_path))
    ledger = Ledger(lake)
    start = datetime(2025, 11, 28, tzinfo=UTC)
    for i in range(24 * 365):
        hour = start + timedelta(hours=i)
        # Each ingest hour holds its own hour's events and a few late ones of the hour before.
        ledger.lake.write_json(
            f"bronze/_manifests/{hour:%Y-%m-%dT%H}.json",
            record_json(hour, {hour: 10, hour - timedelta(hours=1): 2}),
        )
    last = start + timedelta(hours=24 * 365 - 1)
    for hour in (last - timedelta(hours=1), last):
        for ingest in (hour, hour + timedelta(hours=1)):
            if ingest <= last:
                lake.write_bytes(f"bronze/_index/{hour:%Y-%m-%dT%H}/{ingest:%Y-%m-%dT%H}", b"")
    counting = CountingLake(lake)
    cleaned = clean_hour(
        counting, last - timedelta(hours=1), first_instant=start, now=last + timedelta(hours=1)
    )
    assert cleaned.stamp.inputs == (last - timedelta(hours=1), last)
    # The two manifests that hold the hour, never the year before (an hour without bronze files
    # has no re-stamped copies to look up).
    assert counting.reads["read_jsons"] == 2
    # The manifests once, then the index and claims of the hour's day.
    assert (counting.reads["list"], counting.reads["list_nested"]) == (1, 2)


def record_json(hour: datetime, event_hours: dict[datetime, int]) -> dict:
    return Manifest(
        ingest_hour=hour,
        topic="t",
        partitions={0: PartitionRange(0, 0, 0, None)},
        event_hours=event_hours,
    ).to_json()


def test_a_rollup_hour_is_owed_when_its_clean_stamp_or_the_sql_changed():
    day = date(2026, 3, 10)
    five, ten = datetime(2026, 3, 10, 5, tzinfo=UTC), datetime(2026, 3, 10, 10, tzinfo=UTC)
    stamps = [CleanStamp(five, (five,), cleaned_at="a"), CleanStamp(ten, (ten,), cleaned_at="a")]
    built = rollup_digests(stamps, "v1")
    unstamped = {h: None for h in range(24) if h not in (5, 10)}
    # Everything built from the same stamps and SQL: only the hours without a stamp are read.
    assert owed_rollup_hours(day, built, built) == unstamped
    # Hour 10 cleaned again, even from the same inputs: its new digest is passed on.
    again = rollup_digests([stamps[0], CleanStamp(ten, (ten,), cleaned_at="b")], "v1")
    assert again[five] == built[five] and again[ten] != built[ten]
    assert owed_rollup_hours(day, again, built) == unstamped | {10: again[ten]}
    # Another version of the SQL: every hour.
    other = rollup_digests(stamps, "v2")
    assert owed_rollup_hours(day, other, built) == unstamped | {5: other[five], 10: other[ten]}
    # Nothing built yet: every hour, and an hour of another day is not this day's.
    assert owed_rollup_hours(day, built, {}) == unstamped | {5: built[five], 10: built[ten]}
    assert list(owed_rollup_hours(date(2026, 3, 11), built, built)) == list(range(24))
