"""Finality on the landed watermark, end to end through catch-up and dbt: a day is provisional
until every Kafka partition has landed through its end plus the allowed lateness (3 h), however
late the clock; the events of its last allowed ingest hour are in its first final build and
cause no revision; only an event after that restates it."""

from datetime import timedelta

from dagster import instance_for_test

from clickstream_tools.catchup import run_catch_up
from resources.event_log import InMemoryKafka
from tests.test_restatement import DAY, events, on_time, query, revision, settings  # noqa: F401


def test_the_last_allowed_hour_counts_in_the_first_final_build(settings):  # noqa: F811
    kafka = InMemoryKafka(partitions=2)
    kafka.produce(events("day", on_time(DAY + timedelta(hours=10), 8, 20)))
    # Allowed-late events of DAY received in the ingest hour 02:00-03:00 of the next day.
    allowed = [
        (DAY + timedelta(days=1, hours=2, minutes=30 + i), DAY + timedelta(hours=21, minutes=i))
        for i in range(3)
    ]
    kafka.produce(events("allowed", allowed))

    def catch_up(until):
        return run_catch_up(
            settings, until=until, instance=instance, resources={"kafka": kafka}, log=lambda _: None
        )

    with instance_for_test() as instance:
        # 02:59: the ingest hour 02:00-03:00 has not closed, so it has not landed: provisional.
        catch_up(DAY + timedelta(days=1, hours=2, minutes=59))
        assert revision(settings.warehouse, DAY) == (1, False, 8)
        # 03:10: it has landed on every partition: final, with its events, still revision 1.
        catch_up(DAY + timedelta(days=1, hours=3, minutes=10))
        assert revision(settings.warehouse, DAY) == (1, True, 8 + len(allowed))
        assert query(settings.warehouse, "select count(*) from mart_revisions") == [(0,)]
        # One event received at 04:10 is late for a final day: revision 2, one late event.
        kafka.produce(events("late", [(DAY + timedelta(days=1, hours=4, minutes=10), DAY)]))
        catch_up(DAY + timedelta(days=1, hours=5, minutes=10))
        assert revision(settings.warehouse, DAY) == (2, True, 8 + len(allowed) + 1)
        assert query(
            settings.warehouse,
            "select late_events from mart_revisions where model = 'fct_daily_active_users'",
        ) == [(1,)]
