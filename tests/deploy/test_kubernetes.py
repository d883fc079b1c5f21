"""compose/kubernetes/, the guide's StatefulSet with its Services, ConfigMap and budget.

``kubernetes-validate --strict`` checks every manifest against the API schemas of an older
and a newer Kubernetes (strict: an unknown field, such as a misspelt one, is an error, not
silently dropped as the API server would). The tests then check what no schema knows: the
manifests refer to each other by the right names and labels, every pod's settings are
ones count-server accepts (NODE_ID its pod name, CLUSTER_NODES the pods' DNS names), pods
start together and find each other before any is ready, the probes are the node's, and
the kubelet waits longer than count-server's own stop bound.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from count.server import NODE_START_TIMEOUT_S, STOP_BOUND_S
from tests.deploy.files import COMPOSE_DIR, count_config, read_yaml_documents

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(120)]

MANIFESTS = sorted((COMPOSE_DIR / "kubernetes").glob("*.yaml"))
# The oldest and newest schemas kubernetes-validate>=1.37 ships that these files target.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")


def resources() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> resource, over every manifest."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in MANIFESTS:
        for doc in read_yaml_documents(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{key} is defined twice"
            found[key] = doc
    return found


def statefulset() -> dict[str, Any]:
    return resources()[("StatefulSet", "count-cluster")]


def container() -> dict[str, Any]:
    [count] = statefulset()["spec"]["template"]["spec"]["containers"]
    return count


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_validate_strictly(version: str) -> None:
    assert MANIFESTS, "no manifests in compose/kubernetes"
    cli = Path(sys.executable).parent / "kubernetes-validate"
    result = subprocess.run([str(cli), "--strict", "--kubernetes-version", version,
                             *map(str, MANIFESTS)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    passed = re.findall(r"passed for resource (\S+)", result.stdout + result.stderr)
    assert len(passed) == len(resources()), result.stdout + result.stderr


def test_every_pod_gets_settings_count_server_accepts() -> None:
    sts = statefulset()
    [env_from] = container()["envFrom"]
    settings = resources()[("ConfigMap", env_from["configMapRef"]["name"])]["data"]
    [node_id] = [e for e in container()["env"] if e["name"] == "NODE_ID"]
    assert node_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    name, service, replicas = sts["metadata"]["name"], sts["spec"]["serviceName"], sts["spec"]["replicas"]
    for ordinal in range(replicas):
        pod = f"{name}-{ordinal}"
        config = count_config({**settings, "NODE_ID": pod})
        assert config.node_id == pod and config.cluster_enabled
        port = config.bind_address.port
        # Every pod, by the DNS name the headless Service gives it, on the port it binds.
        assert [str(m) for m in config.cluster_nodes] == \
            [f"{name}-{i}.{service}:{port}" for i in range(replicas)]
        assert config.replication_factor <= replicas
        [mount] = container()["volumeMounts"]
        assert mount["mountPath"] == config.data_dir
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert ports["http"] == port
    # The inter-node ports count-server derives from the HTTP port.
    assert (ports["gossip"], ports["replica"]) == config.peer_ports(port)


def test_pods_start_together_and_find_each_other_before_they_are_ready() -> None:
    sts = statefulset()
    headless = resources()[("Service", sts["spec"]["serviceName"])]["spec"]
    assert headless["clusterIP"] == "None"
    # A node is ready only once it sees a majority: with OrderedReady, or with DNS names
    # only for ready pods, no pod would ever be ready.
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert headless["publishNotReadyAddresses"] is True


def test_labels_tie_the_services_and_budget_to_the_pods() -> None:
    sts = statefulset()
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    found = resources()
    for (kind, name), resource in found.items():
        if kind == "Service":
            assert resource["spec"]["selector"].items() <= labels.items(), name
        if kind == "PodDisruptionBudget":
            assert resource["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
            # One node down leaves a majority of three holding a replica of every series.
            assert resource["spec"]["maxUnavailable"] == 1
    [claim] = sts["spec"]["volumeClaimTemplates"]
    assert [m["name"] for m in container()["volumeMounts"]] == [claim["metadata"]["name"]]


def test_probes_are_the_nodes_own_and_the_kubelet_outwaits_its_stop() -> None:
    count = container()
    assert count["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert count["livenessProbe"]["httpGet"]["path"] == "/live"
    assert count["startupProbe"]["httpGet"]["path"] == "/live"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert count[probe]["httpGet"]["port"] == "http"
    # The startup probe allows as long as count-server allows its storage to open.
    startup = count["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= NODE_START_TIMEOUT_S
    spec = statefulset()["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] > STOP_BOUND_S


def test_pods_run_as_the_images_user_which_owns_the_volume() -> None:
    dockerfile = (COMPOSE_DIR / "Dockerfile").read_text()
    [user] = re.findall(r"^USER (\d+):(\d+)$", dockerfile, flags=re.MULTILINE)
    context = statefulset()["spec"]["template"]["spec"]["securityContext"]
    assert (str(context["runAsUser"]), str(context["runAsGroup"])) == user
    assert str(context["fsGroup"]) == user[1]
    assert container()["image"] == "count:latest"  # the tag the README's docker build makes
