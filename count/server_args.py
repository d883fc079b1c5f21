"""count-server's own command line: ``--help``, ``--version`` and ``--check``.

A node is configured by its environment alone (``count/config.py``); the command line only
asks about it. ``--help`` lists every setting from ``SETTINGS``, the same declarations the
README's table is generated from, so the three cannot disagree.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import textwrap

from count.config import SETTINGS

DISTRIBUTION = "count"


def version() -> str:
    """The installed distribution's version (package metadata)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed: run from a source tree)"


def settings_help(width: int = 79) -> str:
    """Every setting: name, default, range and meaning, as plain text."""
    lines = ["settings (environment variables; a bad value exits 2 naming it):"]
    for s in SETTINGS:
        default = s.default if s.default else "(empty)"
        bounds = f", {s.range_text()}" if s.range_text() else ""
        lines.append(f"  {s.name} (default {default}{bounds})")
        doc = s.doc.replace("`", "")
        lines.extend(textwrap.wrap(doc, width, initial_indent="      ",
                                   subsequent_indent="      "))
    lines.append("")
    lines.append("exit status: 0 clean stop (SIGTERM or SIGINT), 1 a child process died, "
                 "2 bad configuration")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="count-server",
        description="Run one Count node (HTTP API, storage, cluster membership), configured\n"
                    "by environment variables. SIGTERM or SIGINT (Ctrl-C) stops it cleanly.",
        epilog=settings_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"count-server {version()}")
    parser.add_argument("--check", action="store_true",
                        help="validate the environment, say which node it describes and exit "
                             "(0 valid, 2 invalid) without starting a node")
    return parser
