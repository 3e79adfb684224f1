"""mkdocs hooks of the documentation site (``mkdocs.yml``): the generated pages of
:mod:`gateway.docsite` join the build as files of their own, made afresh every time, so the
site cannot show a stale copy (nothing generated is written into ``docs/``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.docsite import pages  # noqa: E402


def on_files(files: Files, config: Any) -> Files:
    """Add every page of ``gateway.docsite.pages()`` (a page of ``docs/`` with the same path
    is an error: it would hide the generated one)."""
    for path, text in pages().items():
        if files.get_file_from_path(path) is not None:
            raise ValueError(f"docs/{path} would hide the generated page of the same name: delete it")
        files.append(File.generated(config, path, content=text))
    return files
