"""compose/count.service and compose/count.env, the systemd deployment.

``systemd-analyze verify`` reads the unit as systemd would (unknown keys, bad values,
a missing executable): it runs against a scratch root that holds the unit where the README
installs it, an executable at its ExecStart= path and the system's own units, so the file
is checked unchanged. No systemd needs to be running. The unit's stop and restart settings
are then held to what count-server does, and the EnvironmentFile= example must be settings
count-server accepts.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from count.server import STOP_BOUND_S
from tests.deploy.files import COMPOSE_DIR, count_config, read_env_file, read_unit

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(120)]

UNIT = COMPOSE_DIR / "count.service"
ENV_FILE = COMPOSE_DIR / "count.env"
INSTALLED_UNIT = "/etc/systemd/system/count.service"
SYSTEM_UNITS = next((p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
                     if (p / "sysinit.target").exists()), None)


def service() -> dict[str, list[str]]:
    return read_unit(UNIT)["Service"]


def one(key: str) -> str:
    values = service().get(key, [])
    assert len(values) == 1, f"count.service: expected one {key}=, found {values}"
    return values[0]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None or SYSTEM_UNITS is None,
                    reason="systemd-analyze or the system's units (sysinit.target) not found: "
                           "install Debian's systemd package (.ci/run does) to verify count.service")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    root = tmp_path / "root"
    unit = root / INSTALLED_UNIT.lstrip("/")
    unit.parent.mkdir(parents=True)
    shutil.copy(UNIT, unit)
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    # verify checks that ExecStart= names an executable inside the root: put the real one there.
    exec_start = Path(one("ExecStart").split()[0])
    target = root / str(exec_start).lstrip("/")
    target.parent.mkdir(parents=True)
    shutil.copy(Path(sys.executable).parent / "count-server", target)
    target.chmod(target.stat().st_mode | stat.S_IXUSR)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}",
                             INSTALLED_UNIT], capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys and unparsable values, but says so: both must be silent.
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result


def test_unit_runs_count_server_in_the_foreground_with_its_environment_file() -> None:
    assert one("Type") in ("exec", "simple")
    assert Path(one("ExecStart").split()[0]).name == "count-server"
    assert one("EnvironmentFile") == "/etc/count/count.env"
    assert one("User") == "count"
    assert int(one("LimitNOFILE")) >= 65536


def test_unit_restarts_on_a_crash_but_not_on_a_bad_setting() -> None:
    assert one("Restart") == "on-failure"  # exit 1 (a child died) or killed by a signal
    assert "2" in one("RestartPreventExitStatus").split()  # count-server's exit for a bad setting


def test_unit_stop_signals_count_server_alone_and_outwaits_its_stop_bound() -> None:
    # mixed: SIGTERM to the main process only (count-server stops its children in order),
    # SIGKILL to the whole cgroup only past TimeoutStopSec.
    assert one("KillMode") == "mixed"
    assert one("KillSignal") == "SIGTERM"
    assert int(one("TimeoutStopSec")) > STOP_BOUND_S


def test_environment_file_is_settings_count_server_accepts() -> None:
    env = read_env_file(ENV_FILE)
    config = count_config(env)
    assert config.cluster_enabled and config.replication_factor == 2
    assert str(config.bind_address) == "0.0.0.0:8080"
    # Its own address is among the members, by the port it binds.
    assert config.bind_address.port in {m.port for m in config.cluster_nodes}
    # DATA_DIR is the directory systemd creates for the service user (StateDirectory=count).
    assert config.data_dir == f"/var/lib/{one('StateDirectory')}"
    assert one("WorkingDirectory") == config.data_dir
