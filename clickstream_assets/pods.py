"""Pod sizes on Kubernetes, per stage: the `dagster-k8s/config` tags that dagster-k8s applies to
the pod that executes an asset (deploy/helm/values.yaml launches every run as a Kubernetes Job).

Sizes follow docs/capacity.md: landing runs one Kafka-client process per core; cleaning holds one
hash bucket of an event hour in memory; the marts hold a day's aggregates in DuckDB.
"""

import json

K8S_CONFIG_TAG = "dagster-k8s/config"


def pod_size(cpu: str, memory: str) -> dict[str, str]:
    """The op tag asking for `cpu` and `memory` (a memory limit equal to the request: no
    overcommit, so a pod is never killed for memory another pod borrowed)."""
    resources = {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}}
    return {K8S_CONFIG_TAG: json.dumps({"container_config": {"resources": resources}})}


LANDING_POD = pod_size("4", "4Gi")
CLEANING_POD = pod_size("2", "8Gi")
MARTS_POD = pod_size("2", "8Gi")
