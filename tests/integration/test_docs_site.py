"""The documentation site builds strict (``mkdocs build --strict``: every link and anchor
resolves, every page is in the navigation), its generated pages are made afresh by the build
from what they describe, and a broken link or a hand-made copy of a generated page fails it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.errors import BY_CODE

REPO = Path(__file__).resolve().parents[2]


def build(root: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(root / "mkdocs.yml"),
                           "-d", str(site)], capture_output=True, text=True, timeout=300, cwd=root)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = build(REPO, out)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_the_site_builds_strict_with_every_generated_page(site: Path) -> None:
    errors = (site / "reference" / "errors.html").read_text()
    assert all(f"<td>{code}</td>" in errors for code in BY_CODE)
    assert "mcp.servers.&lt;name&gt;.command" in (site / "reference" / "configuration.html").read_text()
    assert "ListTasks" in (site / "reference" / "grpc.html").read_text()
    assert "/v1/mcp/servers/{server}/approve" in (site / "reference" / "rest.html").read_text()
    assert (site / "reference" / "openapi.json").stat().st_size > 10_000
    assert "mcp-gateway exec" in (site / "client.html").read_text()
    assert "scripts/quickstart.sh" in (site / "getting-started.html").read_text()


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The repository's site sources in a scratch directory (the hooks import the real package)."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(REPO / "mkdocs.yml", root)
    shutil.copytree(REPO / "docs", root / "docs")
    shutil.copytree(REPO / "scripts", root / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_a_broken_link_fails_the_build(copy: Path, tmp_path: Path) -> None:
    page = copy / "docs" / "upgrade.md"
    page.write_text(page.read_text() + "\nSee [the missing page](missing.md) and [an anchor](audit.md#no-such).\n")
    done = build(copy, tmp_path / "site")
    assert done.returncode != 0
    assert re.search(r"missing\.md", done.stderr) and "no-such" in done.stderr


def test_a_hand_made_copy_of_a_generated_page_fails_the_build(copy: Path, tmp_path: Path) -> None:
    (copy / "docs" / "reference").mkdir(exist_ok=True)
    (copy / "docs" / "reference" / "errors.md").write_text("# stale\n")
    done = build(copy, tmp_path / "site")
    assert done.returncode != 0 and "would hide the generated page" in done.stderr
