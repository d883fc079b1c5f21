"""Every test runs in strict mode: an error the node would survive in production (logged
and carried on, ``count/failsafe.py``) is raised instead, in this process and in every
``count-server`` an e2e test starts (they inherit the environment)."""

from __future__ import annotations

import os

from count.failsafe import set_strict

os.environ["COUNT_STRICT"] = "1"
set_strict(True)
