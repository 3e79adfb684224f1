"""Settings derived paths."""

from __future__ import annotations

import os
from pathlib import Path

from gateway.config import Settings


def test_workspace_root_is_absolute_for_a_relative_state_dir():
    # Bind sources are absolute paths; the quick start runs with the default "var".
    settings = Settings(state_dir=Path("var"))
    assert settings.workspace_root == Path(os.getcwd()) / "var" / "workspaces"
    assert Settings(state_dir=Path("/srv/gw")).workspace_root == Path("/srv/gw/workspaces")
