"""Tooling beside the code location: the `clickstream` CLI, the traffic generator, the demo and
headless catch-up. Dagster never loads this package; it drives the one Definitions."""
