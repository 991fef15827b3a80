"""The event log as a Dagster resource: the plain client (resources.event_log) with its settings
as Dagster config."""

from __future__ import annotations

from dagster import ConfigurableResource

from resources.event_log import KafkaLog


class KafkaResource(KafkaLog, ConfigurableResource):
    """The real topic, through kafka-python (KafkaLog), configured by Dagster."""
