"""Synthetic clickstream traffic with known answers: Kafka messages and the truth behind them.

`spec` says what to generate, `traffic` draws it (vectorized), `values` builds the message bytes,
`oracle` turns the ground truth into the five contract marts by the contract's rules alone (the
independent expectation for end-to-end tests), and `send` delivers the traffic to the topic or
through the SDK and the collector.
"""

from clickstream_tools.generator.oracle import (
    accepted_events,
    expected_marts,
    injection_counts,
    write_expected_marts,
)
from clickstream_tools.generator.send import produce, send_via_collector
from clickstream_tools.generator.spec import MALFORMED_KINDS, Traffic, TrafficSpec
from clickstream_tools.generator.traffic import generate
from core.contract import PLATFORMS

__all__ = [
    "MALFORMED_KINDS",
    "PLATFORMS",
    "Traffic",
    "TrafficSpec",
    "accepted_events",
    "expected_marts",
    "generate",
    "injection_counts",
    "produce",
    "send_via_collector",
    "write_expected_marts",
]
