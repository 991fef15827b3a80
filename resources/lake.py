"""The lake as a Dagster resource: the plain client (resources.lake_store) with its URL as Dagster
config."""

from __future__ import annotations

from dagster import ConfigurableResource

from resources.lake_store import Lake


class LakeResource(Lake, ConfigurableResource):
    """A directory tree of Parquet and JSON files (Lake), configured by Dagster."""
