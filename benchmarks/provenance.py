"""Where the figures of a generated page come from, and writing a generated part of a page.

- `source_revision`: the commit of the source tree (``git rev-parse --short HEAD``), with
  ``+ uncommitted changes`` when the tree differs from it (``git status --porcelain``).
- `replace_section`: replaces the text between two marker comments of a Markdown page (the
  markers are HTML comments, which Sphinx/MyST and GitHub do not show).
"""

from __future__ import annotations

import subprocess
from pathlib import Path


__all__ = ["ROOT", "source_revision", "replace_section"]

ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def source_revision() -> str:
    """``<short commit>``, plus `` + uncommitted changes`` if the tree is dirty."""

    head = (_git("rev-parse", "--short", "HEAD") or "").strip()
    if not head:
        return "unknown (not a git checkout)"
    status = _git("status", "--porcelain")
    if status is None:
        return f"{head} (tree state unknown)"
    return f"{head} + uncommitted changes" if status.strip() else head


def replace_section(path: Path, begin: str, end: str, text: str) -> None:
    """Replaces what lies between the lines ``begin`` and ``end`` of ``path`` by ``text``.

    Both markers must be present once, ``begin`` before ``end``; they stay in the page.
    The rest of the page is left byte for byte as it was.
    """

    page = path.read_text()
    if page.count(begin) != 1 or page.count(end) != 1:
        raise ValueError(f"{path}: needs exactly one {begin!r} and one {end!r}.")
    head, rest = page.split(begin, 1)
    old, tail = rest.split(end, 1)
    if not old.startswith("\n"):
        raise ValueError(f"{path}: {begin!r} must end its line.")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{head}{begin}\n{text.strip()}\n{end}{tail}")
    tmp.replace(path)
