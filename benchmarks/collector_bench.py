"""Collection figures: acknowledged events/s through the collector, latency at 70% of that rate,
503 latency while the broker is paused, and the SDK's track() cost.

    python benchmarks/collector_bench.py [--clients 8] [--seconds 10] [--workers 2] [--url URL]

An embedded broker and a collector process (`clickstream collector`) are started on free ports
unless --url names a running collector (then the pause test is skipped). The load comes from
another process: keep-alive connections sending gzipped batches of 50 events of about 500 B,
as the SDK does. Latencies are measured from each request's scheduled time, so a stalled server
cannot hide its queue (no coordinated omission).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import multiprocessing
import os
import signal
import statistics
import sys
import tempfile
import time

EVENTS_PER_BATCH = 50
TOPIC = "bench.collector"


def _event(i: int) -> dict:
    return {
        "event_id": f"0190a5c2-{i:04x}-7abc-8def-{i:012x}",
        "event_type": "play",
        "event_time": "2026-11-28T19:00:00.123456Z",
        "device_id": f"dev-{i % 997:06d}",
        "user_id": f"user-{i % 613:06d}",
        "session_id": f"dev-{i % 997:06d}-987654",
        "platform": "android",
        "title_id": f"title-{i % 500:04d}",
        "app_version": "7.12.0",
        "position_ms": 1_234_567,
        # Random bytes, so that the batch compresses about as well as real traffic (~4x).
        "properties": {"bitrate_kbps": 4500, "network": "wifi", "trace": os.urandom(40).hex()},
    }


def request_bytes(host: str, seed: int) -> bytes:
    events = [_event(seed * EVENTS_PER_BATCH + i) for i in range(EVENTS_PER_BATCH)]
    envelope = {"sent_at": "2026-11-28T19:00:01.000000Z", "attempt": 1, "events": events}
    body = gzip.compress(json.dumps(envelope, separators=(",", ":")).encode(), 5)
    head = (
        f"POST /v1/events HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Encoding: gzip\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _connection(connection, requests, interval, stop_at, results):
    """One keep-alive connection; with `interval`, requests are scheduled every `interval` s."""
    reader, writer = connection
    scheduled = time.perf_counter()
    i = 0
    while True:
        now = time.perf_counter()
        if interval:
            if scheduled > now:
                await asyncio.sleep(scheduled - now)
            start = scheduled
            scheduled += interval
        else:
            start = now
        if start >= stop_at:
            break
        writer.write(requests[i % len(requests)])
        i += 1
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        results.append((start, status, time.perf_counter() - start))
    writer.close()


def load(url: str, clients: int, seconds: float, rate: float | None, pause: int | None, out):
    """Run `clients` connections for `seconds` (total `rate` requests/s, or as fast as answered);
    put [(start, status, latency_s)] on `out`, in start order. With `pause`, that process (the
    broker) is sent SIGSTOP once the connections are open, right before the first requests: they
    are the outage's first, sent before anything could tell the collector."""
    host, port = url.removeprefix("http://").split(":")
    requests = [request_bytes(host, seed) for seed in range(32)]

    async def main():
        results: list = []
        connections = await asyncio.gather(
            *(asyncio.open_connection(host, int(port)) for _ in range(clients))
        )
        if pause is not None:
            os.kill(pause, signal.SIGSTOP)
        stop_at = time.perf_counter() + seconds
        interval = clients / rate if rate else None
        await asyncio.gather(
            *(
                _connection(connection, requests, interval, stop_at, results)
                for connection in connections
            )
        )
        return sorted(results)

    out.put(asyncio.run(main()))


def run_load(url, clients, seconds, rate=None, pause=None) -> list[tuple[float, int, float]]:
    """The load in its own process, so that the collector's figures do not pay for it."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=load, args=(url, clients, seconds, rate, pause, queue))
    process.start()
    results = queue.get()
    process.join()
    return results


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds so far of a process and its children (its workers), from Linux's
    /proc: the cost beside the wall time, which other work on a shared machine inflates."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:  # gone meanwhile
            continue
        if int(entry) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def refused(results: list[tuple[float, int, float]]) -> int:
    """503s in a healthy broker's phase: each one a false stall."""
    return sum(status == 503 for _, status, _ in results)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def bench_track(url: str, n: int = 100_000) -> None:
    from clickstream_sdk import Tracker

    with tempfile.TemporaryDirectory() as tmp:
        tracker = Tracker(url, "bench-device", queue_path=os.path.join(tmp, "q.sqlite3"))
        costs = []
        clock = time.perf_counter_ns
        began = time.perf_counter()
        for i in range(n):
            start = clock()
            tracker.track("click", page="/browse", position_ms=i, properties={"row": 3})
            costs.append(clock() - start)
        tracked_s = time.perf_counter() - began
        delivered = tracker.flush(120)
        total_s = time.perf_counter() - began
        tracker.close()
    print(
        f"track(): p50 {statistics.median(costs) / 1000:.1f} us, "
        f"p99 {percentile(costs, 0.99) / 1000:.1f} us, max {max(costs) / 1000:.0f} us "
        f"({n:,} calls in {tracked_s:.2f} s); all delivered {delivered} after {total_s:.1f} s "
        f"({n / total_s:,.0f} events/s through one tracker)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2, help="collector worker processes")
    parser.add_argument("--url", help="a running collector (skips the broker pause)")
    args = parser.parse_args()

    if args.url:
        measure(args.url, args.clients, args.seconds, broker=None)
        return
    from collector.server import CollectorProcess
    from resources.broker import EmbeddedBroker
    from resources.kafka import KafkaResource

    with EmbeddedBroker.on_free_port() as broker:
        KafkaResource(bootstrap_servers=broker.bootstrap, topic=TOPIC).create_topic(4)
        env = {"CLICKSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap, "CLICKSTREAM_TOPIC": TOPIC}
        argv = [sys.executable, "-m", "clickstream_tools.cli", "collector"]
        if args.workers > 1:
            argv += ["--workers", str(args.workers)]
        with CollectorProcess(env, argv=argv) as collector:
            measure(
                collector.url, args.clients, args.seconds, broker=broker, pid=collector.process.pid
            )


def bench_producer(bootstrap: str, n: int = 50_000) -> float:
    """kafka-python alone with the collector's producer settings: the ceiling for the rest."""
    from collector.sink import SinkConfig, make_producer

    producer = make_producer(SinkConfig(bootstrap=bootstrap, topic=TOPIC))
    values = [json.dumps(_event(i)).encode() for i in range(1000)]
    began, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        producer.send(TOPIC, value=values[i % 1000], key=b"dev-%d" % (i % 997))
    producer.flush()
    seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
    producer.close()
    print(
        f"kafka-python alone (same settings): {n / seconds:,.0f} acknowledged messages/s "
        f"({cpu / n * 1e6:.0f} us CPU per message)"
    )
    return n / seconds


def measure(url: str, clients: int, seconds: float, broker, pid: int | None = None) -> None:
    print("load average (1, 5, 15 min): {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    producer_rate = bench_producer(broker.bootstrap) if broker is not None else None
    print(f"collector {url}, {clients} clients, batches of {EVENTS_PER_BATCH} events")
    run_load(url, clients, 2, None)  # warm-up: connections, producer batches
    cpu = cpu_seconds(pid) if pid else 0.0
    results = run_load(url, clients, seconds, None)
    ok = [latency for _, status, latency in results if status == 200]
    max_rate = len(ok) * EVENTS_PER_BATCH / seconds
    cost = ""
    if pid:
        cost = f"; {(cpu_seconds(pid) - cpu) / (len(ok) * EVENTS_PER_BATCH) * 1e6:.0f} us CPU/event"
    if producer_rate:
        cost += f"; {max_rate / producer_rate:.2f}x the producer alone"
    print(
        f"max: {max_rate:,.0f} acknowledged events/s ({len(ok):,} batches of "
        f"{len(results):,} answered 200, {refused(results)} answered 503; "
        f"p50 {ms(statistics.median(ok))}, p99 {ms(percentile(ok, 0.99))}{cost})"
    )
    rate = 0.7 * max_rate / EVENTS_PER_BATCH
    results = run_load(url, clients, seconds, rate)
    ok = [latency for _, status, latency in results if status == 200]
    print(
        f"at 70% ({rate * EVENTS_PER_BATCH:,.0f} events/s): p50 {ms(statistics.median(ok))}, "
        f"p99 {ms(percentile(ok, 0.99))}, {len(results) - len(ok)} not 200 "
        f"({refused(results)} answered 503)"
    )
    if broker is not None:
        try:
            results = run_load(url, clients, seconds, 200, pause=broker._process.pid)
        finally:
            os.kill(broker._process.pid, signal.SIGCONT)
        outage = [latency for _, status, latency in results if status == 503]
        # Paused right before the first request. Detected: the first 503 answered; requests
        # started after it see the known outage.
        detected = min(start + latency for start, status, latency in results if status == 503)
        after = [lat for start, status, lat in results if status == 503 and start > detected]
        print(
            f"broker paused, 200 requests/s: {len(outage):,} of {len(results):,} answered 503, "
            f"the first {ms(detected - results[0][0])} after the pause; every request: p50 "
            f"{ms(statistics.median(outage))}, p99 {ms(percentile(outage, 0.99))}, max "
            f"{ms(max(outage))}; once detected: p50 {ms(statistics.median(after))}, "
            f"p99 {ms(percentile(after, 0.99))}"
        )
        time.sleep(3)  # let the producer drain and the probe see the broker again
    bench_track(url)
    print("load average (1, 5, 15 min): {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
