"""The ``trellis-mv`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._errors import TrellisMVError
from ._registry import get_registry

__all__ = ["main"]


def _cmd_list(args: argparse.Namespace) -> int:
    reg = get_registry()
    infos = reg.list()
    rows = [(i.name, f"{i.distribution or '?'} {i.version or ''}".strip(), i.summary) for i in infos]
    widths = [max([len(h), *(len(r[k]) for r in rows)]) for k, h in enumerate(("aggregator", "distribution"))]
    print(f"{'aggregator':<{widths[0]}}  {'distribution':<{widths[1]}}  summary")
    for name, dist, summary in rows:
        print(f"{name:<{widths[0]}}  {dist:<{widths[1]}}  {summary}")
    for err in reg.errors:
        print(f"error: {err}", file=sys.stderr)
    return 1 if reg.errors and args.strict else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trellis-mv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="list the registered aggregators and their distributions")
    p.add_argument("--strict", action="store_true", help="exit 1 if any plugin failed to load")
    p.set_defaults(func=_cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TrellisMVError as exc:
        print(f"trellis-mv: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
