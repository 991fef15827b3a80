"""Run the collector: the Kafka sink, the ASGI app and uvicorn (chosen by measurement; see the
README's "Collection" section), with access logs off."""

from __future__ import annotations

import uvicorn

from collector.app import CollectorApp
from collector.sink import KafkaSink, SinkConfig
from core.settings import ConfigError, Settings
from resources.kafka import KafkaUnavailable


def listen_address(addr: str) -> tuple[str, int]:
    """`host:port` of CLICKSTREAM_COLLECTOR_ADDR."""
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(
            f"CLICKSTREAM_COLLECTOR_ADDR={addr!r}: use host:port, such as 127.0.0.1:8088"
        )
    return host.strip("[]"), int(port)


def open_sink(settings: Settings, **options) -> KafkaSink:
    """The producer on the configured topic; fails at start, saying what to fix, when the broker
    does not answer or the topic is missing."""
    from kafka.errors import KafkaError

    try:
        sink = KafkaSink(
            SinkConfig(bootstrap=settings.kafka_bootstrap, topic=settings.topic, **options)
        )
    except KafkaError as error:
        raise KafkaUnavailable(
            f"no Kafka broker answers at {settings.kafka_bootstrap} ({error!r}): start one "
            "(`clickstream broker`) or set CLICKSTREAM_KAFKA_BOOTSTRAP"
        ) from None
    if not sink.partitions:
        sink.close()
        raise KafkaUnavailable(
            f"topic {settings.topic!r} does not exist on {settings.kafka_bootstrap}: create it "
            "(`clickstream generate` does) or set CLICKSTREAM_TOPIC"
        )
    return sink


def serve(settings: Settings, *, access_log: bool = False, **options) -> None:
    """Serve on CLICKSTREAM_COLLECTOR_ADDR in the foreground until SIGINT or SIGTERM."""
    host, port = listen_address(settings.collector_addr)
    app = CollectorApp(open_sink(settings, **options))
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=access_log,
        log_level="info" if access_log else "warning",
        server_header=False,
    )
    print(f"collector listening on http://{host}:{port} -> {settings.topic}", flush=True)
    uvicorn.Server(config).run()
