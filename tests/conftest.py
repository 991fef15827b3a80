"""Shared fixtures: a lake in the test's temporary directory, and the embedded broker, started
once per test session on a free port."""

from __future__ import annotations

import pytest

from resources.lake import LakeResource


@pytest.fixture
def lake(tmp_path) -> LakeResource:
    """A lake on a local path of the test's own."""
    return LakeResource(url=str(tmp_path / "lake"))


@pytest.fixture(scope="session")
def broker():
    """A running EmbeddedBroker (in memory); its `bootstrap` is the address to use."""
    from resources.broker import EmbeddedBroker

    with EmbeddedBroker.on_free_port() as running:
        yield running
