"""Readers of the deployment files in compose/, for the tests that check them.

Each reader is strict about the subset of its format the files use, so that a test reads
what the tool would read, or fails saying which line it could not.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from count.config import Config, load_config

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO_ROOT / "compose"


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (``#`` comments, blank lines), as systemd's EnvironmentFile= and
    Docker's .env read them when nothing is quoted; anything else is an error here."""
    env: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = re.fullmatch(r"([A-Z_][A-Z0-9_]*)=([^\"'\s]*)", line)
        if match is None:
            raise AssertionError(f"{path.name}:{number}: not a plain KEY=VALUE line: {line!r}")
        env[match.group(1)] = match.group(2)
    return env


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit: section -> key -> every value given (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            current = sections.setdefault(stripped[1:-1], {})
            continue
        key, sep, value = stripped.partition("=")
        if current is None or not sep or line.endswith("\\"):
            raise AssertionError(f"{path.name}:{number}: unexpected line {line!r}")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def read_yaml_documents(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert all(isinstance(d, dict) for d in docs), f"{path.name}: a document is not a mapping"
    return docs


_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}


def duration_s(text: str | int | float) -> float:
    """A Compose duration (``11m``, ``1m30s``, ``660s``) in seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise AssertionError(f"not a duration: {text!r}")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def count_config(env: Mapping[str, str]) -> Config:
    """The Config count-server would run with given exactly this environment (a bad value
    raises ConfigError naming the variable, as count-server exits 2)."""
    return load_config(dict(env))
