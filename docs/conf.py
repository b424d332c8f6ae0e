"""Sphinx configuration for the pyrflow documentation.

Build (warnings are errors, as in CI)::

    .venv/bin/python -m sphinx -W --keep-going -q -b html docs docs/_build/html

The build is offline: no intersphinx, no figure generation (the PNGs under
``docs/figures/`` are committed; ``docs/figures/make_figures.py`` regenerates them).
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

project = "pyrflow"
author = "pyrflow contributors"
copyright = "2026, pyrflow contributors"
release = "0.1.0"
version = "0.1"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "figures/*.py"]

# MyST: $...$ / $$...$$ math and bare LaTeX environments (align, ...).
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# autodoc: docstrings are reST (field lists, .. math::); no napoleon.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": False}

html_theme = "furo"
html_title = "pyrflow"
html_static_path = []
templates_path = []
