"""Landing and cleaning throughput and peak memory on generated traffic.

    python benchmarks/pipeline_bench.py [--events 1000000] [--bootstrap HOST:PORT]

Without --bootstrap the log is the in-memory Kafka (measures our code); with it, a real broker
(adds kafka-python's consumer). Memory is the peak resident set above the stage's start, sampled.
"""

import argparse
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta

from clickstream_assets.cleaning import clean_hour
from clickstream_assets.landing import land_hours
from clickstream_tools.generator import TrafficSpec, generate
from core.ledger import Ledger
from resources.kafka import InMemoryKafka, KafkaResource
from resources.lake import LakeResource
from sensors.plan import closed_hours

DAY = datetime(2026, 11, 20, tzinfo=UTC)


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


class PeakMemory:
    """Samples the resident set every 20 ms while the block runs."""

    def __enter__(self):
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def above_start_mib(self) -> float:
        return (self.peak - self.start) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--bootstrap", help="land from this broker instead of the in-memory log")
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()

    started = time.perf_counter()
    traffic = generate(
        TrafficSpec(
            start=DAY,
            end=DAY + timedelta(days=1),
            events=args.events,
            seed=1,
            receive_until=DAY + timedelta(days=1, hours=6),
        )
    )
    messages = traffic.messages.num_rows
    print(f"generated {messages:,} messages in {time.perf_counter() - started:.1f} s")
    if args.bootstrap:
        log = KafkaResource(bootstrap_servers=args.bootstrap, topic=f"bench-{int(time.time())}")
        log.create_topic(args.partitions)
    else:
        log = InMemoryKafka(partitions=args.partitions)
    started = time.perf_counter()
    log.produce(traffic.messages)
    print(f"produced in {time.perf_counter() - started:.1f} s")

    lake = LakeResource(url=tempfile.mkdtemp(prefix="bench-lake-"))
    until = DAY + timedelta(days=1, hours=7)
    hours = closed_hours(DAY, until, limit=1000)
    with PeakMemory() as memory:
        started = time.perf_counter()
        land_hours(log, lake, hours, now=until, first_instant=DAY)
        seconds = time.perf_counter() - started
    print(
        f"landing:  {messages / seconds:10,.0f} events/s  ({seconds:.1f} s for {len(hours)} "
        f"ingest hours, peak +{memory.above_start_mib:,.0f} MiB)"
    )

    ledger = Ledger(lake)
    recorded = set(ledger.recorded_hours())  # one listing for every hour, as the asset does
    event_hours = sorted({h for m in ledger.manifests(recorded).values() for h in m.event_hours})
    with PeakMemory() as memory:
        started = time.perf_counter()
        cleaned = sum(
            clean_hour(
                lake, hour, first_instant=DAY, now=until, recorded=recorded
            ).stamp.bronze_rows
            for hour in event_hours
        )
        seconds = time.perf_counter() - started
    print(
        f"cleaning: {cleaned / seconds:10,.0f} events/s  ({seconds:.1f} s for {len(event_hours)} "
        f"event hours, peak +{memory.above_start_mib:,.0f} MiB)"
    )


if __name__ == "__main__":
    main()
