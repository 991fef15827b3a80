"""Generator and producer throughput: events generated per second, messages produced per second
to the embedded broker through KafkaResource (kafka-python).

    .venv/bin/python benchmarks/generate_bench.py [--events 1000000] [--produce 200000]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clickstream_tools.generator import TrafficSpec, expected_marts, generate, produce  # noqa: E402
from resources.broker import EmbeddedBroker  # noqa: E402
from resources.kafka import KafkaResource  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--produce", type=int, default=200_000, help="messages to produce")
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()

    start = datetime(2026, 1, 1, tzinfo=UTC)
    spec = TrafficSpec(start=start, end=start + timedelta(days=1), events=args.events, seed=1)
    began = time.perf_counter()
    traffic = generate(spec)
    seconds = time.perf_counter() - began
    size_mb = traffic.messages.column("value").nbytes / 1e6
    print(
        f"generate: {args.events:,} events, {traffic.messages.num_rows:,} messages, "
        f"{size_mb:,.0f} MB of values in {seconds:.2f} s = {args.events / seconds:,.0f} events/s"
    )
    began = time.perf_counter()
    expected_marts(traffic.truth)
    print(f"expected marts: {time.perf_counter() - began:.2f} s")

    if args.produce:
        messages = traffic.messages.slice(0, args.produce)
        with EmbeddedBroker.on_free_port() as broker:
            log = KafkaResource(bootstrap_servers=broker.bootstrap, topic="bench.events")
            log.create_topic(args.partitions)
            began = time.perf_counter()
            produce(log, messages)
            seconds = time.perf_counter() - began
        print(
            f"produce: {messages.num_rows:,} messages to {args.partitions} partitions in "
            f"{seconds:.2f} s = {messages.num_rows / seconds:,.0f} msg/s"
        )


if __name__ == "__main__":
    main()
