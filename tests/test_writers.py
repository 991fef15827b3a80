"""One writer per partition, even when two runs overlap: two landings of the same hours leave a
ledger that chains and bronze that holds exactly its ranges; two cleanings of one hour leave the
silver built from the newer ledger."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from clickstream_assets.checks import bronze_row_problems, offset_range_problems
from clickstream_assets.cleaning import clean_hour
from clickstream_assets.landing import land_hours
from core.ledger import Ledger, events_file
from resources.event_log import InMemoryKafka
from resources.lake import LakeResource
from tests.helpers import START, all_manifests, at, produce, value

H10, H11, H12 = at(10), at(11), at(12)


def topic(extra: bool) -> InMemoryKafka:
    """The same topic seen at two moments: `extra` has one more record on quiet partition 1."""
    log = InMemoryKafka(topic="t", partitions=2)
    produce(log, 0, [(at(h, 5), value(f"a{h}", at(h, 5))) for h in (10, 11, 12)])
    produce(log, 1, [(at(10, 30), value("b", at(10, 30)))])
    if extra:
        produce(log, 1, [(at(12, 50), value("c", at(12, 50)))])
    return log


def together(*calls):
    """Run `calls` in threads released at the same instant; return their results."""
    barrier = threading.Barrier(len(calls))

    def released(call):
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(released, call) for call in calls]]


@pytest.mark.parametrize("attempt", range(4))
def test_two_landings_of_the_same_hours_leave_one_chained_ledger(tmp_path, attempt):
    lake = LakeResource(url=str(tmp_path / "lake"))
    early, late = topic(extra=False), topic(extra=True)
    hours = [H10, H11, H12]
    together(
        lambda: land_hours(early, lake, hours, now=at(13, 5), first_instant=START),
        lambda: land_hours(late, lake, hours, now=at(13, 5), first_instant=START),
    )
    manifests = all_manifests(lake)
    assert sorted(manifests) == hours
    for hour in hours:
        assert offset_range_problems(hour, manifests) == []
        manifest = manifests[hour]
        rows = {
            p: len(lake.read_parquet([r.file])) if r.file else None
            for p, r in manifest.partitions.items()
        }
        assert bronze_row_problems(manifest, rows) == []
    # Whichever landing recorded hour 12, partition 1 ends where that landing saw its head.
    assert manifests[H12].partitions[1].end in (1, 2)


def test_two_cleanings_of_one_hour_leave_the_newer_silver(tmp_path):
    lake = LakeResource(url=str(tmp_path / "lake"))
    log = InMemoryKafka(topic="t", partitions=1)
    produce(log, 0, [(at(10, 5), value("a", at(10, 5)))])
    land_hours(log, lake, [H10], now=at(11, 5), first_instant=START)
    older = set(Ledger(lake).recorded_hours())
    produce(log, 0, [(at(11, 5), value("late", at(10, 55)))])
    land_hours(log, lake, [H11], now=at(12, 5), first_instant=START)
    newer = set(Ledger(lake).recorded_hours())

    def clean(recorded):
        return lambda: clean_hour(lake, H10, first_instant=START, now=at(12), recorded=recorded)

    # In order, newer first: the older run finds newer silver and leaves it alone.
    clean(newer)()
    clean(older)()
    assert Ledger(lake).clean_stamp(H10).inputs == (H10, H11)
    # At once, many times: whichever finishes last, the newer silver stands.
    for _ in range(5):
        lake.remove(events_file(H10))
        together(clean(older), clean(newer))
        stamp = Ledger(lake).clean_stamp(H10)
        assert stamp.inputs == (H10, H11) or stamp.inputs == (H10,)
        ids = sorted(lake.read_parquet([events_file(H10)]).column("event_id").to_pylist())
        assert ids == (["a", "late"] if stamp.inputs == (H10, H11) else ["a"])
        # An older stamp is owed work: the next tick rebuilds it from the newer ledger.
        if stamp.inputs == (H10,):
            clean(newer)()
        assert sorted(lake.read_parquet([events_file(H10)]).column("event_id").to_pylist()) == [
            "a",
            "late",
        ]
