"""The sensors' pure decisions: closed hours, runs of hours, the day watermark, propagation."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from sensors.plan import closed_hours, contiguous_runs, day_final_at, propagate

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


# --- propagate ----------------------------------------------------------------------------------


def test_landed_event_hours_become_clean_requests_sorted_and_unique():
    decision = propagate(
        ["2026-11-27T10", "2026-11-27T09", "2026-11-27T10", "2026-11-20T05"],
        [],
        [],
        now=utc(27, 11),
        lateness=LATENESS,
    )
    assert decision.event_hours == [utc(20, 5), utc(27, 9), utc(27, 10)]


def test_a_provisional_day_becomes_pending_then_requested_when_its_watermark_passes():
    # Tick 1: hour 10 of the 27th is cleaned while the day is provisional.
    tick1 = propagate(["2026-11-27T10"], [utc(27, 10)], [], now=utc(27, 11), lateness=LATENESS)
    assert tick1.days == [NOV27]
    assert tick1.pending_final == [NOV27]

    # Tick 2: nothing new, the watermark (28th 03:00) has not passed.
    tick2 = propagate([], [], tick1.pending_final, now=utc(28, 2, 59, 59), lateness=LATENESS)
    assert tick2.days == []
    assert tick2.pending_final == [NOV27]
    assert tick2.event_hours == []

    # Tick 3: the watermark passes: the day is rebuilt once more, to become final.
    tick3 = propagate([], [], tick2.pending_final, now=utc(28, 3), lateness=LATENESS)
    assert tick3.days == [NOV27]
    assert tick3.pending_final == []

    # Tick 4: nothing new, nothing to do.
    tick4 = propagate([], [], tick3.pending_final, now=utc(28, 4), lateness=LATENESS)
    assert (tick4.days, tick4.pending_final) == ([], [])


def test_late_data_for_a_final_day_is_requested_immediately_and_not_pending():
    decision = propagate(["2026-11-20T05"], [utc(20, 5)], [], now=utc(28, 12), lateness=LATENESS)
    assert decision.event_hours == [utc(20, 5)]
    assert decision.days == [NOV20]
    assert decision.pending_final == []


def test_a_day_exactly_at_its_watermark_is_final():
    decision = propagate([], [utc(27, 23)], [], now=utc(28, 3), lateness=LATENESS)
    assert decision.days == [NOV27]
    assert decision.pending_final == []


def test_untouched_days_are_not_requested():
    decision = propagate(
        ["2026-11-28T00"], [utc(28, 0)], [NOV27], now=utc(28, 1), lateness=LATENESS
    )
    assert decision.days == [NOV28]
    assert decision.pending_final == [NOV27, NOV28]
    assert date(2026, 11, 26) not in decision.days


def test_new_data_for_a_pending_day_requests_it_and_keeps_it_pending():
    decision = propagate(
        ["2026-11-27T22"], [utc(27, 22)], [NOV27], now=utc(28, 1), lateness=LATENESS
    )
    assert decision.days == [NOV27]
    assert decision.pending_final == [NOV27]


def test_a_due_day_and_a_touched_day_in_one_tick():
    decision = propagate(
        ["2026-11-28T02", "2026-11-20T07"],
        [utc(28, 2), utc(20, 7)],
        [NOV27],
        now=utc(28, 3, 30),
        lateness=LATENESS,
    )
    assert decision.days == [NOV20, NOV27, NOV28]
    assert decision.pending_final == [NOV28]
