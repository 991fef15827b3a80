"""Shared fixtures: the embedded broker, started once per test session on a free port."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def broker():
    """A running EmbeddedBroker (in memory); its `bootstrap` is the address to use."""
    from resources.broker import EmbeddedBroker

    with EmbeddedBroker.on_free_port() as running:
        yield running
