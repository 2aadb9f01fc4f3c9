"""``trellis-mv app``: the subcommand, registered by :func:`add_command`; Gradio is imported only when it runs."""

from __future__ import annotations

import argparse
import time
from typing import Any

__all__ = ["add_command"]


def _cmd_app(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    try:
        from ._ui import serve
    except ImportError as exc:
        raise ImportError(f"the app needs Gradio ({exc}); install it with: pip install \"trellis-mv[app]\"") from exc
    _, url = serve(args.model, host=args.host, port=args.port, block=False, quiet=True)
    print(f"trellis-mv app: serving model {args.model!r} at {url} (ready in {time.perf_counter() - start:.1f} s); "
          "Ctrl+C stops it", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0


def add_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``app`` to the ``trellis-mv`` subcommands."""
    p = subparsers.add_parser("app", help="a local web page: upload photos, choose aggregators, see and download the 3D result")
    p.add_argument("--model", default="proxy",
                   help="'proxy' (embedded, CPU), or a TRELLIS.2 hub id / local folder, e.g. microsoft/TRELLIS.2-4B")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    p.set_defaults(func=_cmd_app)
    return p
