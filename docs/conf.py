"""Sphinx configuration of the fliswarm documentation.

Build with ``bash scripts/build-docs.sh`` (warnings are errors). The reference pages are
generated at build time from the code and the shipped JSON files (``_ext/fliswarm_docs.py``
and sphinx-click), so they cannot drift from the product.
"""

from __future__ import annotations

import pathlib
import sys


HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))

from fliswarm import __version__  # noqa: E402


project = "fliswarm"
author = "fliswarm developers"
copyright = "fliswarm developers"
release = __version__
version = __version__

extensions = [
    "myst_parser",
    "sphinx_click",
    "fliswarm_docs",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
# Quotes stay as typed: commands and values are copied from the pages.
smartquotes = False

html_theme = "furo"
html_title = f"fliswarm {release}"
# No search index fetched from anywhere, no remote fonts: the docs build and read offline.
html_permalinks = True
