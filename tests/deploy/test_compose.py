"""compose/docker-compose.yml, the clustering guide's three nodes, checked by docker-compose.

``docker-compose config`` (v1, which needs no Docker engine) validates the file and prints
it resolved (build context made absolute, anchors merged); the tests read that output, so
they check what Compose itself makes of the file. Then: the guide's commands name things
that must exist as written (services and containers ``count-node-N``, the network
``count_count-cluster`` of a project named ``count``), the build finds the Dockerfile and
what it copies, each node's environment is settings count-server accepts, Docker waits
longer than count-server's own stop bound, and the healthcheck command, run here against
a real node, passes while the node answers and fails when it does not.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from count.server import STOP_BOUND_S
from tests.deploy.compose_v1 import docker_compose, python
from tests.deploy.files import COMPOSE_DIR, REPO_ROOT, count_config, duration_s
from tests.e2e.conftest import CountNode

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(900)]  # the first run installs v1

SERVICES = ("count-node-1", "count-node-2", "count-node-3")


def compose_env() -> dict[str, str]:
    """The caller's environment without a COMPOSE_PROJECT_NAME that would override .env."""
    return {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """``docker-compose config`` run in compose/, as the README says to run the guide."""
    result = subprocess.run([str(docker_compose()), "config"], cwd=COMPOSE_DIR,
                            env=compose_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == "", result
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def test_config_has_the_guides_services_containers_ports_and_network(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert tuple(sorted(services)) == SERVICES
    volumes = set()
    for i, name in enumerate(SERVICES, start=1):
        service = services[name]
        assert service["container_name"] == name  # docker network disconnect ... count-node-3
        assert service["ports"] == [{"published": 8080 + i, "target": 8080}]  # localhost:808N
        assert list(service["networks"]) == ["count-cluster"]
        [volume] = service["volumes"]
        volumes.add(volume.split(":")[0])
    assert len(volumes) == 3, "each node needs a data volume of its own"
    assert resolved["networks"]["count-cluster"]["driver"] == "bridge"


def test_project_is_named_count_so_the_network_is_count_count_cluster() -> None:
    """compose/.env names the project; asked of compose's own code, run in compose/."""
    code = ("from compose.cli.command import get_project_name\n"
            "from compose.network import Network\n"
            "name = get_project_name('.')\n"
            "print(name, Network(None, name, 'count-cluster').full_name)\n")
    result = subprocess.run([str(python()), "-c", code], cwd=COMPOSE_DIR, env=compose_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result
    assert result.stdout.split() == ["count", "count_count-cluster"]


def test_build_finds_the_dockerfile_and_everything_it_copies(resolved: dict[str, Any]) -> None:
    for name in SERVICES:
        build = resolved["services"][name]["build"]
        context = Path(build["context"])
        assert context == REPO_ROOT
        dockerfile = context / build["dockerfile"]
        assert dockerfile == COMPOSE_DIR / "Dockerfile"
        assert resolved["services"][name]["image"] == "count:latest"  # the guide's image name
    copies = re.findall(r"^COPY\s+(.+?)\s+\S+$", dockerfile.read_text(), flags=re.MULTILINE)
    sources = [s for line in copies for s in line.split()]
    assert sources, "the Dockerfile copies nothing"
    for source in sources:
        assert (context / source).exists(), f"COPY {source}: not in the build context {context}"


def test_each_nodes_environment_is_settings_count_server_accepts(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    for i, name in enumerate(SERVICES, start=1):
        service = services[name]
        config = count_config({k: str(v) for k, v in service["environment"].items()})
        assert config.node_id == i and config.cluster_enabled and config.replication_factor == 2
        port = config.bind_address.port
        assert [str(m) for m in config.cluster_nodes] == [f"{s}:{port}" for s in SERVICES]
        assert service["ports"][0]["target"] == port
        assert service["volumes"][0].split(":")[1] == config.data_dir


def test_docker_outwaits_count_servers_stop_and_restarts_a_crash(resolved: dict[str, Any]) -> None:
    for name in SERVICES:
        service = resolved["services"][name]
        assert duration_s(service["stop_grace_period"]) > STOP_BOUND_S
        assert service["restart"] in ("unless-stopped", "on-failure", "always")


@pytest.mark.e2e
def test_healthcheck_passes_while_the_node_answers_and_fails_when_it_does_not(
        resolved: dict[str, Any], tmp_path: Path) -> None:
    test = resolved["services"]["count-node-1"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"] and "http://127.0.0.1:8080/health" in test[3]
    node = CountNode(tmp_path)
    # The image's python, here this venv's; the container's 127.0.0.1:8080, here the node's.
    check = [sys.executable, "-c", test[3].replace("127.0.0.1:8080", node.address)]
    try:
        node.start_ready()
        up = subprocess.run(check, capture_output=True, text=True, timeout=30)
        assert up.returncode == 0, up
        assert node.stop() == 0
        down = subprocess.run(check, capture_output=True, text=True, timeout=30)
        assert down.returncode != 0 and "Connection refused" in down.stderr, down
    finally:
        node.cleanup()
