"""The ``trellis-mv`` command: list aggregators, run the demo, generate from your views.

``--model proxy`` (the default) runs the embedded proxy model on the CPU; a hub id such as
``microsoft/TRELLIS.2-4B`` or a local folder runs TRELLIS.2 (which must be importable).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from ._errors import TrellisMVError
from ._registry import get_registry
from .pipeline import parse_stage, parse_stage_values

__all__ = ["build_parser", "main"]

SAMPLER_PARAMS = ("steps", "guidance_strength", "guidance_rescale", "rescale_t", "guidance_interval")
TRELLIS2_ONLY = ("pipeline_type", "max_num_tokens", "envmap")
TRELLIS2_FLAGS = ("no_preprocess", "no_video")


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


def _stage_choices(args: argparse.Namespace) -> dict[str, tuple[str, dict[str, Any]]]:
    choices = {}
    for item in args.stage or []:
        stage, name, options = parse_stage(item)
        choices[stage] = (name, options)
    return choices


def _stage_params(args: argparse.Namespace, stage_names: Sequence[str], aliases: dict[str, str] | None = None
                  ) -> dict[str, dict[str, Any]]:
    params: dict[str, dict[str, Any]] = {s: {} for s in stage_names}
    for name in SAMPLER_PARAMS:
        for stage, value in parse_stage_values(getattr(args, name), stage_names, aliases).items():
            params[stage][name] = value
    return params


def _report(summary: dict[str, Any], args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return
    stages = ", ".join(f"{s}={a}" for s, a in summary.get("aggregators", {}).items())
    calls = summary.get("model_calls", {})
    seconds = summary.get("seconds", {})
    print(f"wrote {', '.join(summary.get('outputs', []))} to {summary.get('out_dir')}")
    print(f"{summary.get('num_views')} views; aggregators: {stages}; model calls: {calls.get('total', calls)}; "
          f"{seconds.get('total', '?')} s")


def _generate_proxy(args: argparse.Namespace) -> dict[str, Any]:
    from . import proxy

    given = [f"--{k.replace('_', '-')}" for k in TRELLIS2_ONLY if getattr(args, k) is not None]
    given += [f"--{k.replace('_', '-')}" for k in TRELLIS2_FLAGS if getattr(args, k)]
    if given:
        verb = "applies" if len(given) == 1 else "apply"
        raise TrellisMVError(f"{', '.join(given)} {verb} to TRELLIS.2 models only; --model proxy has the stages "
                             f"{', '.join(proxy.STAGES)} and none of these options")
    params = _stage_params(args, proxy.STAGES)
    return proxy.generate(
        args.images, args.out, mode=args.mode, stages=_stage_choices(args), seed=args.seed,
        num_samples=args.num_samples, weights=args.weights, max_batch=args.max_batch, params=params,
        verbose=not args.quiet,
    )


def _generate_trellis2(args: argparse.Namespace) -> dict[str, Any]:
    from .integrations import trellis2

    params = _stage_params(args, trellis2.STAGES, trellis2.STAGE_ALIASES)
    return trellis2.generate(
        args.images, args.out, model=args.model, mode=args.mode, stages=_stage_choices(args),
        pipeline_type=args.pipeline_type or "1024_cascade", seed=args.seed, num_samples=args.num_samples,
        weights=args.weights, max_batch=args.max_batch, preprocess_image=not args.no_preprocess,
        max_num_tokens=args.max_num_tokens or 49152,
        sparse_structure_sampler_params=params["sparse_structure"] or None,
        shape_slat_sampler_params=params["shape"] or None,
        tex_slat_sampler_params=params["texture"] or None,
        video=not args.no_video, envmap=args.envmap,
    )


def _cmd_generate(args: argparse.Namespace) -> int:
    summary = _generate_proxy(args) if args.model == "proxy" else _generate_trellis2(args)
    _report(summary, args)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import proxy

    summary = proxy.demo(
        args.out, num_views=args.views, mode=args.mode, stages=_stage_choices(args), seed=args.seed,
        params=_stage_params(args, proxy.STAGES), verbose=not args.quiet,
    )
    _report(summary, args)
    return 0


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", default="multidiffusion", metavar="AGGREGATOR[:k=v,...]",
                   help="aggregator of every stage not named by --stage (default: multidiffusion); see `trellis-mv list`")
    p.add_argument("--stage", action="append", default=[], metavar="STAGE=AGGREGATOR[:k=v,...]",
                   help="aggregator of one stage, e.g. texture=single:view=0 (repeatable)")
    p.add_argument("--seed", type=int, default=42)
    for name in SAMPLER_PARAMS:
        p.add_argument(f"--{name.replace('_', '-')}", action="append", default=None, metavar="[STAGE=]VALUE",
                       help=f"{name} of every stage, or STAGE=VALUE for one (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trellis-mv", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list the registered aggregators and their distributions")
    p.add_argument("--strict", action="store_true", help="exit 1 if any plugin failed to load")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("demo", help="multi-view generation on the bundled example views (proxy model, CPU)")
    p.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    p.add_argument("--views", type=int, default=4, help="how many of the 4 bundled views to use")
    _add_run_options(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("generate", help="3D from several views of one object")
    p.add_argument("--images", nargs="+", required=True, help="one image per view")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", default="proxy",
                   help="'proxy' (embedded, CPU), or a TRELLIS.2 hub id / local folder, e.g. microsoft/TRELLIS.2-4B")
    _add_run_options(p)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--weights", type=float, nargs="+", default=None, help="one weight per view")
    p.add_argument("--max-batch", type=int, default=None, help="at most this many latent rows per model forward")
    g = p.add_argument_group("TRELLIS.2 only")
    g.add_argument("--pipeline-type", choices=["512", "1024", "1024_cascade", "1536_cascade"], default=None,
                   help="default 1024_cascade")
    g.add_argument("--max-num-tokens", type=int, default=None, help="token budget of the cascade (default 49152)")
    g.add_argument("--no-preprocess", action="store_true", help="images are already cropped and matted")
    g.add_argument("--envmap", default=None, help="HDR/EXR environment map for the turntable video")
    g.add_argument("--no-video", action="store_true", help="skip the turntable MP4")
    p.set_defaults(func=_cmd_generate)

    from .eval._cli import add_parser as add_eval_parser

    add_eval_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (TrellisMVError, ValueError, OSError, ImportError) as exc:
        # bad input or a missing dependency: the message says what and how to fix it
        print(f"trellis-mv: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("trellis-mv: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
