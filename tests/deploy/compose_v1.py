"""docker-compose v1 (PyPI's ``docker-compose``) in a venv of its own, for the compose tests.

v1 validates a compose file (``docker-compose config``) with no Docker engine, which this
project's machines do not run. It cannot join the test venv: it needs PyYAML < 6 and
jsonschema < 4 (kubernetes-validate needs jsonschema 4). Its own range picks the PyYAML
5.4.1 source, whose build fails under Cython 3 (``cython_sources``), so PyYAML 5.3.1 is
installed first (it builds without Cython); docker (the SDK) < 7 keeps the API that
compose 1.29.2 calls. The venv is built once beside the test venv and reused while the
pins are unchanged.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

VENV = Path(sys.prefix) / "docker-compose-v1"
PINS = ("PyYAML==5.3.1", "docker-compose==1.29.2", "docker<7")
INSTALL_TIMEOUT_S = 600


def _run(*cmd: str | Path) -> None:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                            timeout=INSTALL_TIMEOUT_S)
    if result.returncode != 0:
        raise AssertionError(f"installing docker-compose v1 failed: {' '.join(map(str, cmd))}\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def docker_compose() -> Path:
    """The docker-compose v1 executable, installing it first if needed."""
    executable = VENV / "bin" / "docker-compose"
    marker = VENV / ".installed"
    if marker.exists() and marker.read_text() == "\n".join(PINS) and executable.exists():
        return executable
    shutil.rmtree(VENV, ignore_errors=True)  # a half-built venv from an interrupted run
    _run(sys.executable, "-m", "venv", VENV)
    pip = (VENV / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check")
    _run(*pip, PINS[0])
    _run(*pip, *PINS)
    marker.write_text("\n".join(PINS))
    return executable


def python() -> Path:
    """That venv's Python, to ask compose's own code what it would do."""
    return VENV / "bin" / "python"
