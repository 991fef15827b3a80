"""The landing and cleaning assets through Dagster, with the in-memory Kafka and a tmp lake."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from dagster import instance_for_test, materialize

from clickstream_assets.assets import events, raw_events
from core.ledger import Ledger, events_file
from partitions import AS_OF_TAG, RANGE_END_TAG, RANGE_START_TAG
from resources.event_log import InMemoryKafka
from resources.lake import LakeResource
from tests.helpers import at, land_range, produce, value


@pytest.fixture
def log() -> InMemoryKafka:
    log = InMemoryKafka(topic="t", partitions=2)
    produce(
        log,
        0,
        [
            (at(10, 5), value("a", at(10, 5))),  # 0: ingest 10
            (at(10, 6), value("a", at(10, 5))),  # 1: duplicate of a
            (at(10, 7), None),  # 2: unreadable
            (at(11, 1), value("b", at(11, 1))),  # 3: ingest 11
            (at(11, 2), value("c", at(10, 50))),  # 4: late, event hour 10
            (at(12, 30), value("d", at(12, 30))),  # 5: beyond the range
        ],
    )
    produce(
        log,
        1,
        [
            (at(10, 20), value("e", at(10, 20), event_type="play")),  # 0: missing title_id
            (at(11, 40), value("a", at(10, 5))),  # 1: duplicate of a, in another hour
        ],
    )
    return log


def metadata_by_partition(result, node: str) -> dict[str, dict]:
    found = {}
    for materialization in result.asset_materializations_for_node(node):
        found[materialization.partition] = {
            name: entry.value for name, entry in materialization.metadata.items()
        }
    return found


def test_raw_events_over_a_two_hour_range_then_events(log, tmp_path):
    lake = LakeResource(url=str(tmp_path / "lake"))
    resources = {"kafka": log, "lake": lake}
    with instance_for_test() as instance:
        landed = materialize(
            [raw_events],
            resources=resources,
            instance=instance,
            tags={
                RANGE_START_TAG: "2026-11-27-10:00",
                RANGE_END_TAG: "2026-11-27-11:00",
                AS_OF_TAG: "2026-11-27T12:00:00+00:00",
            },
        )
        assert landed.success
        meta = metadata_by_partition(landed, "raw_events")
        assert set(meta) == {"2026-11-27-10:00", "2026-11-27-11:00"}

        h10, h11 = meta["2026-11-27-10:00"], meta["2026-11-27-11:00"]
        assert h10["offset_ranges"] == {"0": [0, 3], "1": [0, 1]}
        assert h11["offset_ranges"] == {"0": [3, 5], "1": [1, 2]}
        assert h10["event_hours"] == {"2026-11-27T10": 3}
        assert h11["event_hours"] == {"2026-11-27T10": 2, "2026-11-27T11": 1}
        assert (h10["rows"], h11["rows"]) == (4, 3)
        assert h10["quarantined"] == {"null_value": 1}
        assert h11["quarantined"] == {}
        assert (h10["late_rows"], h11["late_rows"]) == (0, 2)
        assert (h10["clock_corrected"], h11["clock_corrected"]) == (0, 0)
        assert Ledger(lake).recorded_hours() == [at(10), at(11)]
        assert log.committed() == {0: 5, 1: 2}

        cleaned = materialize(
            [events],
            resources={"lake": lake},
            instance=instance,
            partition_key="2026-11-27-10:00",
        )
        assert cleaned.success
        [(partition, counts)] = metadata_by_partition(cleaned, "events").items()
        assert partition == "2026-11-27-10:00"
        # Event hour 10: a (x3 copies), c (late), e (invalid): 5 bronze rows.
        assert counts["bronze_rows"] == 5
        assert counts["events"] == 2
        assert counts["duplicates"] == 2
        assert counts["quarantined"] == 1
        assert counts["quarantined_by_reason"] == {"missing_title_id": 1}
        assert counts["late_events"] == 1
        assert counts["clock_corrected"] == 0
        assert counts["inputs"] == ["2026-11-27T10", "2026-11-27T11"]
        ids = pq.read_table(lake.path(events_file(at(10)))).column("event_id").to_pylist()
        assert ids == ["a", "c"]


def test_raw_events_refuses_an_hour_that_has_not_closed(log, tmp_path):
    lake = LakeResource(url=str(tmp_path / "lake"))
    with instance_for_test() as instance:
        result = materialize(
            [raw_events],
            resources={"kafka": log, "lake": lake},
            instance=instance,
            partition_key="2026-11-27-11:00",
            tags={AS_OF_TAG: "2026-11-27T11:30:00+00:00"},
            raise_on_error=False,
        )
    assert not result.success
    assert Ledger(lake).recorded_hours() == []


@pytest.mark.parametrize(
    "as_of",
    [
        "2026-11-27T12:00:00+00:00",
        "2026-11-27T12:00:00Z",
        "2026-11-27T13:00:00+01:00",
        # No offset: UTC, as ClockResource and the marts' as_of read the same tag.
        "2026-11-27T12:00:00",
    ],
)
def test_raw_events_reads_the_as_of_tag_as_an_instant(log, tmp_path, as_of):
    lake = LakeResource(url=str(tmp_path / "lake"))
    with instance_for_test() as instance:
        result = land_range(
            instance,
            {"kafka": log, "lake": lake},
            "2026-11-27-10:00",
            "2026-11-27-11:00",
            as_of,
            raise_on_error=False,
        )
    assert result.success
    assert Ledger(lake).recorded_hours() == [at(10), at(11)]
