"""Where a device keeps edgekit's state: ``$EDGEKIT_HOME``, else ``~/.edgekit``."""

from __future__ import annotations

import os
from pathlib import Path


def edgekit_home() -> Path:
    return Path(os.environ.get("EDGEKIT_HOME") or Path.home() / ".edgekit")
