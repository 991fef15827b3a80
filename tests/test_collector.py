"""The collector's pure parts: the watchdog's stall decision and its setting."""

from __future__ import annotations

import pytest

from collector.sink import AckWatch
from core.settings import ConfigError, Settings

AFTER_S = 0.1


def test_idle_is_never_stalled_however_long():
    watch = AckWatch(now=0.0)
    assert not watch.stalled(3600.0, AFTER_S)


def test_a_send_after_an_idle_spell_gets_the_whole_threshold():
    watch = AckWatch(now=0.0)
    watch.sent(50, now=100.0)  # no ack for 100 s: the idle spell is not silence
    assert not watch.stalled(100.09, AFTER_S)
    assert watch.stalled(100.11, AFTER_S)


def test_acks_coming_under_load_keep_it_healthy_however_old_the_oldest_send():
    watch = AckWatch(now=0.0)
    watch.sent(50, now=0.0)
    for step in range(1, 100):  # a new batch and an ack every 50 ms for 5 s; 50 always waiting
        watch.sent(50, now=step * 0.05)
        watch.settled(50, now=step * 0.05 + 0.01)
        assert not watch.stalled(step * 0.05 + 0.04, AFTER_S)
    assert watch.in_flight == 50


def test_silence_after_the_last_ack_with_events_still_waiting_is_a_stall():
    watch = AckWatch(now=0.0)
    watch.sent(100, now=1.0)
    watch.settled(40, now=1.02)  # 60 still waiting, sent at 1.0
    watch.sent(10, now=1.1)  # a new batch does not make the older ones younger
    assert not watch.stalled(1.11, AFTER_S)
    assert watch.stalled(1.13, AFTER_S)


def test_a_failure_is_an_answer_too_and_nothing_waiting_is_no_stall():
    watch = AckWatch(now=0.0)
    watch.sent(10, now=0.0)
    watch.settled(5, now=0.2)  # failed: the producer gave up on them
    assert not watch.stalled(0.25, AFTER_S)
    watch.settled(5, now=0.3)
    assert watch.in_flight == 0
    assert not watch.stalled(10.0, AFTER_S)


def test_time_this_process_was_not_running_is_not_the_brokers_silence():
    watch = AckWatch(now=0.0)
    watch.sent(50, now=0.0)
    watch.unscheduled(0.08, now=0.13)  # the watchdog woke 80 ms late: the acks were unread too
    assert not watch.stalled(0.15, AFTER_S)  # 150 ms since the send, 80 of them ours
    assert watch.stalled(0.19, AFTER_S)
    watch.unscheduled(-0.001, now=0.2)  # early or on time: no credit
    assert watch.stalled(0.2, AFTER_S)


@pytest.mark.parametrize("text", ["0", "19", "1000", "0.1", "100ms", "-5"])
def test_stall_threshold_must_be_whole_milliseconds_in_range(text):
    with pytest.raises(ConfigError, match=r"CLICKSTREAM_COLLECTOR_STALL_MS=.*from 20 to 999"):
        Settings.from_env({"CLICKSTREAM_COLLECTOR_STALL_MS": text})


def test_stall_threshold_is_read_and_defaults_to_100_ms():
    assert Settings.from_env({"CLICKSTREAM_COLLECTOR_STALL_MS": "250"}).collector_stall_ms == 250
    assert Settings.from_env({}).collector_stall_ms == 100
