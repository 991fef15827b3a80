"""Kubernetes without a cluster: the Helm values keep dagster.yaml's run queue, and the Jobs that
dagster-k8s builds from them (a run pod, and a step pod per asset sized by its
`dagster-k8s/config` tag) are valid Kubernetes objects, checked strictly against the API's schemas
offline (kubernetes-validate), with the sizes the tags ask for."""

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import kubernetes
import kubernetes_validate
import pytest
import yaml
from dagster_k8s.job import (
    DagsterK8sJobConfig,
    UserDefinedDagsterK8sConfig,
    construct_dagster_k8s_job,
    get_user_defined_k8s_config,
)

from clickstream_assets.assets import build_raw_events, events, raw_events
from clickstream_assets.marts import marts
from clickstream_assets.pods import K8S_CONFIG_TAG
from core.settings import ConfigError, Settings

pytestmark = pytest.mark.k8s

REPO = Path(__file__).resolve().parent.parent
VALUES = yaml.safe_load((REPO / "deploy/helm/values.yaml").read_text())
INSTANCE = yaml.safe_load((REPO / "dagster.yaml").read_text())
KUBERNETES_VERSION = "1.33.0"
"""The API version the specs are checked against (a release the managed services still run)."""

CHART_TO_DAGSTER = {
    "containerConfig": "container_config",
    "podSpecConfig": "pod_spec_config",
    "podTemplateSpecMetadata": "pod_template_spec_metadata",
    "jobConfig": "job_config",
    "jobMetadata": "job_metadata",
    "jobSpecConfig": "job_spec_config",
}
"""How the chart renders `runK8sConfig` into the instance's `run_k8s_config`."""


def test_the_helm_run_queue_pools_and_monitoring_are_dagster_yamls():
    runs, pools = INSTANCE["concurrency"]["runs"], INSTANCE["concurrency"]["pools"]
    helm = VALUES["concurrency"]
    assert helm["enabled"] is True
    assert helm["runs"]["maxConcurrentRuns"] == runs["max_concurrent_runs"]
    assert helm["runs"]["tagConcurrencyLimits"] == runs["tag_concurrency_limits"]
    assert helm["pools"]["defaultLimit"] == pools["default_limit"]
    monitoring, helm_monitoring = (
        INSTANCE["run_monitoring"],
        VALUES["dagsterDaemon"]["runMonitoring"],
    )
    assert helm_monitoring["enabled"] is monitoring["enabled"] is True
    assert helm_monitoring["startTimeoutSeconds"] == monitoring["start_timeout_seconds"]
    assert helm_monitoring["maxRuntimeSeconds"] == monitoring["max_runtime_seconds"]
    assert helm_monitoring["pollIntervalSeconds"] == monitoring["poll_interval_seconds"]
    assert VALUES["runLauncher"]["type"] == "K8sRunLauncher"
    assert VALUES["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"


def _launcher() -> dict:
    return VALUES["runLauncher"]["config"]["k8sRunLauncher"]


def _job_config() -> DagsterK8sJobConfig:
    """What the K8sRunLauncher configured by the values hands to dagster-k8s's job builder."""
    launcher = _launcher()
    deployment = VALUES["dagster-user-deployments"]["deployments"][0]
    image = deployment["image"]
    return DagsterK8sJobConfig(
        job_image=f"{image['repository']}:{image['tag']}",
        dagster_home="/opt/dagster/dagster_home",
        image_pull_policy=launcher["imagePullPolicy"],
        instance_config_map="dagster-instance",
        postgres_password_secret=VALUES["global"]["postgresqlSecretName"],
        env_config_maps=launcher["envConfigMaps"],
        env_secrets=[secret["name"] for secret in launcher["envSecrets"]],
        env_vars=launcher["envVars"],
        volume_mounts=launcher["volumeMounts"],
        volumes=launcher["volumes"],
    )


def _manifest(job: kubernetes.client.V1Job) -> dict:
    return kubernetes.client.ApiClient().sanitize_for_serialization(job)


def _validate(manifest: dict) -> None:
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_the_run_pod_is_a_valid_job_with_the_default_size():
    chart = _launcher()["runK8sConfig"]
    run_config = UserDefinedDagsterK8sConfig.from_dict(
        {CHART_TO_DAGSTER[key]: value for key, value in chart.items()}
    )
    job = construct_dagster_k8s_job(
        _job_config(),
        args=["dagster", "api", "execute_run", "{}"],
        job_name="dagster-run-0123456789abcdef",
        user_defined_k8s_config=run_config,
        component="run_worker",
        labels={"dagster/job": "__ASSET_JOB", "dagster/run-id": "0123456789abcdef"},
    )
    manifest = _manifest(job)
    _validate(manifest)
    pod = manifest["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    container = pod["containers"][0]
    assert container["resources"] == chart["containerConfig"]["resources"]
    assert container["image"] == "registry.example.com/clickstream-platform:0.1.0"
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/warehouse"}
    assert {"secretRef": {"name": "clickstream-env"}} in container["envFrom"]


SHARDED_LANDING = build_raw_events(2).node_def.node_defs
"""The steps of landing in 2 shards: each is a pod of its own with the k8s executor."""


@pytest.mark.parametrize(
    ("op", "cpu", "memory"),
    [
        (raw_events.op, "4", "4Gi"),
        (events.op, "2", "8Gi"),
        (marts.op, "2", "8Gi"),
        *[(op, "4", "4Gi") for op in SHARDED_LANDING],
    ],
    ids=["landing", "cleaning", "marts", *[op.name for op in SHARDED_LANDING]],
)
def test_each_assets_pod_is_a_valid_job_of_the_size_its_tag_asks(op, cpu, memory):
    # The step pod: what dagster-k8s's executor builds from the step's tags.
    step_config = get_user_defined_k8s_config(op.tags)
    job = construct_dagster_k8s_job(
        _job_config(),
        args=["dagster", "api", "execute_step", "{}"],
        job_name=f"dagster-step-{op.name.replace('_', '-')}"[:63],
        user_defined_k8s_config=step_config,
        component="step_worker",
        labels={"dagster/op": op.name},
    )
    manifest = _manifest(job)
    _validate(manifest)
    resources = manifest["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources == {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}}
    assert json.loads(op.tags[K8S_CONFIG_TAG])["container_config"]["resources"] == resources


def test_strict_validation_rejects_what_kubernetes_would():
    manifest = _manifest(
        construct_dagster_k8s_job(_job_config(), args=["true"], job_name="dagster-run-x")
    )
    manifest["spec"]["template"]["spec"]["containers"][0]["resourcez"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(manifest)


@pytest.mark.parametrize(
    ("value", "executor"), [("", "multi_or_in_process_executor"), ("k8s", "k8s")]
)
def test_the_executor_setting_puts_each_step_in_a_pod_of_its_own(tmp_path, value, executor):
    # What the code location's asset jobs run with, loaded as a code server would load it.
    env = os.environ | {"CLICKSTREAM_EXECUTOR": value, "DAGSTER_HOME": str(tmp_path)}
    code = (
        "from clickstream_assets.definitions import defs; "
        "print(defs.resolve_implicit_global_asset_job_def().executor_def.name)"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split()[-1] == executor


def test_the_chart_runs_landing_shards_as_pods_with_valid_settings():
    (deployment,) = VALUES["dagster-user-deployments"]["deployments"]
    settings = Settings.from_env({k: str(v) for k, v in deployment["env"].items()})
    assert settings.executor == "k8s" and settings.landing_shards == 3
    assert settings.landing_slices == timedelta(minutes=5)


def test_a_bad_executor_fails_at_start_with_the_choices():
    with pytest.raises(ConfigError, match=r"CLICKSTREAM_EXECUTOR='pods' .* multiprocess .* k8s"):
        Settings.from_env({"CLICKSTREAM_EXECUTOR": "pods"})
