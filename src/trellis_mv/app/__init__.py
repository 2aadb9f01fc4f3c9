"""A local web page for multi-view generation: ``trellis-mv app`` (``pip install "trellis-mv[app]"``).

Photos with optional view angles, an aggregator per stage, seed, steps and guidance; the
result in a 3D viewer with the comparison picture, per-stage cost and downloads; a compare
mode for two or three aggregators side by side. :mod:`trellis_mv.app._options` checks what
the page sends without Gradio; the page itself (``serve``, ``build_app``) imports Gradio.
"""

from ._cli import add_command
from ._options import InputError, RunOptions, check_photos, parse_cameras, run_options, stage_spec
from ._run import load_pipeline, run

__all__ = ["InputError", "RunOptions", "add_command", "check_photos", "load_pipeline", "parse_cameras", "run",
           "run_options", "stage_spec"]
