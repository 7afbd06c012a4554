"""Sphinx configuration for the nenya documentation.

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
The options reference (``options.rst``) is generated from ``nenya.schema`` when the build
starts, by ``gen_options.write_options_page`` connected to ``builder-inited``.
"""

import os
import sys

DOCS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(DOCS)
sys.path.insert(0, ROOT)  # import nenya from this checkout, installed or not
sys.path.insert(0, DOCS)  # gen_options

import nenya  # noqa: E402

project = "nenya"
author = "the nenya developers"
copyright = "the nenya developers"
release = nenya.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

exclude_patterns = ["_build", "**.tmp"]
html_theme = "alabaster"
html_static_path = []
templates_path = []

autodoc_default_options = {
    "members": True,
    "member-order": "bysource",
    "show-inheritance": True,
}
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = True
nitpicky = False


def generate_options_page(app):
    """Write options.rst from nenya.schema before Sphinx reads the sources."""
    from gen_options import write_options_page

    write_options_page(os.path.join(app.srcdir, "options.rst"))


def setup(app):
    app.connect("builder-inited", generate_options_page)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
