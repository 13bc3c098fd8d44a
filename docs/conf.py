"""Sphinx configuration of the skast documentation.

Build with ``sphinx-build -W --keep-going -b html docs docs/_build/html`` after
``pip install -e ".[docs]"``. See ``docs/contributing.rst``.
"""

import os
import socket
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
# the gallery scripts import their shared settings with ``from _data import ...``
sys.path.insert(0, str(ROOT / "examples"))
# every example runs on the built-in sound set, never on a local ESC-50 copy
os.environ.pop("SKAST_ESC50", None)
os.environ.setdefault("MPLBACKEND", "Agg")

import skast  # noqa: E402

project = "skast"
author = "The skast developers"
copyright = "the skast developers, BSD-3-Clause"
release = skast.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = ["_build", "**.ipynb_checkpoints", "auto_examples/*.md5"]
default_role = "literal"
pygments_style = "sphinx"

# -- autodoc / autosummary / numpydoc -------------------------------------------
autosummary_generate = True
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# -- intersphinx -----------------------------------------------------------------
# Links to the Python, NumPy, scikit-learn and PyTorch documentation. The
# inventories are downloaded at build time; a machine that cannot reach a site
# builds without links to it (the references then render as plain code) instead
# of failing the -W build on an unreachable inventory.
_INTERSPHINX = {
    "python": "https://docs.python.org/3",
    "numpy": "https://numpy.org/doc/stable",
    "sklearn": "https://scikit-learn.org/stable",
    "torch": "https://docs.pytorch.org/docs/stable",
}


def _reachable(url, timeout=3.0):
    host = url.split("/")[2]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


intersphinx_mapping = {
    name: (url, None) for name, url in _INTERSPHINX.items() if _reachable(url)
}
_offline = sorted(set(_INTERSPHINX) - set(intersphinx_mapping))
if _offline:
    print(f"intersphinx: not reachable, no links to: {', '.join(_offline)}")
intersphinx_timeout = 10

# -- sphinx-gallery ------------------------------------------------------------
# Which examples run during the build (see docs/contributing.rst): by default
# the four that take seconds; SKAST_DOCS_GALLERY=all runs every example,
# SKAST_DOCS_GALLERY=none none. Examples that do not run are shown without
# their output; tests/test_examples.py runs all of them in any case.
_GALLERY_RUN = {
    "fast": r"/plot_(esc50_embeddings_cv|confusion_matrix|grid_search_cache|tag_long_recording)\.py$",
    "all": r"/plot_",
    "none": r"^$",
}
_gallery = os.environ.get("SKAST_DOCS_GALLERY", "fast")
if _gallery not in _GALLERY_RUN:
    raise ValueError(f"SKAST_DOCS_GALLERY must be one of {sorted(_GALLERY_RUN)}")

sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": _GALLERY_RUN[_gallery],
    # examples/_data.py holds the settings the examples share; not an example
    "ignore_pattern": r"^(__init__|_data)\.py$",
    "doc_module": ("skast",),
    "backreferences_dir": "gen_modules/backreferences",
    "reference_url": {"skast": None},
    "plot_gallery": "True",
    "download_all_examples": False,
    "remove_config_comments": True,
    "show_memory": False,
    "min_reported_time": 1,
}

# -- HTML ------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"skast {release}"
html_static_path = ["_static"]
html_css_files = ["skast.css"]
html_show_sourcelink = False
html_theme_options = {
    "navbar_align": "left",
    "header_links_before_dropdown": 7,
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
# the right-hand contents of an API page list "fit()", not "ASTClassifier.fit()"
toc_object_entries_show_parents = "hide"
html_sidebars = {
    page: []
    for page in ("index", "getting_started", "performance", "changelog", "contributing")
}
html_context = {"default_mode": "light"}
