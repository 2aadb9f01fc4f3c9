"""Sphinx configuration of the trellis-mv documentation.

Build with ``make docs`` (``sphinx-build -W --keep-going -b html docs docs/_build/html``).
The gallery scripts in ``docs/gallery/`` run during the build, on CPU.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(ROOT / "src"))  # a source checkout builds without installing
for plugin_src in sorted(ROOT.glob("plugins/*/src")):  # the plugins' API pages need them importable
    sys.path.append(str(plugin_src))

# Gallery scripts run on CPU, on one thread, and quietly. The proxy's models are small: a
# second thread gains little, and on a shared, loaded machine OpenMP threads that spin while
# they wait for a core made examples run many times slower.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

import trellis_mv  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

project = "trellis-mv"
author = "trellis-mv contributors"
copyright = "2026, trellis-mv contributors"
release = trellis_mv.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax shipped with the pages: maths renders offline, no CDN
    "sphinx_gallery.gen_gallery",
    "trellis_mv_docs",
]

exclude_patterns = ["_build", "examples", "gallery/README.rst", "**/*.ipynb", "auto_examples/*.py"]
templates_path: list[str] = []
html_theme = "furo"
html_title = f"trellis-mv {release}"
html_theme_options = {"navigation_with_keys": True}

nitpicky = False
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_member_order = "bysource"
autodoc_default_options: dict[str, object] = {}
autodoc_mock_imports = ["trellis2", "trellis", "o_voxel", "cumesh", "flex_gemm", "spconv", "flash_attn"]
napoleon_google_docstring = False
napoleon_numpy_docstring = False
napoleon_use_ivar = True

intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "torch": ("https://docs.pytorch.org/docs/stable", None),
    "pluggy": ("https://pluggy.readthedocs.io/en/stable", None),
}
# Builds offline (CI has no network): cross-references to these inventories fall back to text.
intersphinx_disabled_reftypes = ["*"]
intersphinx_timeout = 1
if os.environ.get("TRELLIS_MV_DOCS_OFFLINE", "1") not in ("", "0"):
    intersphinx_mapping = {}

sphinx_gallery_conf = {
    "examples_dirs": "gallery",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"(__init__|_helpers)\.py$",
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "abort_on_example_error": True,
    "remove_config_comments": True,
    "reset_modules": ("matplotlib", "trellis_mv_docs.gallery_progress"),
    "reset_modules_order": "both",
    "capture_repr": (),
    "show_memory": False,
    "show_signature": False,
    "min_reported_time": 10**6,
    "write_computation_times": False,
    "thumbnail_size": (320, 240),
    "matplotlib_animations": False,
    "image_srcset": [],
    "backreferences_dir": None,
}

suppress_warnings = ["config.cache"]
