"""The trellis-mv command: list plugins, run the demo, generate from your photos, evaluate, serve the app.

``--model proxy`` (the default) runs the embedded proxy model on the CPU; a hub id such as
``microsoft/TRELLIS.2-4B`` or a local folder runs TRELLIS.2 or TRELLIS (whichever its
``pipeline.json`` names; the package must be importable); an installed adapter plugin
may run others. Every model goes through the same run path (:func:`trellis_mv.generate`).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._distributed import process_group_from_env, writes_outputs
from ._errors import ParameterError, TrellisMVError, ViewError
from ._params import SAMPLER_PARAMS
from ._registry import get_registry
from ._views import parse_camera
from .app import add_command as add_app_command
from .eval.cli import add_parser as add_eval_parser
from .run import demo, generate, load_adapter, parse_sampler_params, parse_stage, traits

__all__ = ["build_parser", "main", "split_image_camera"]
#: command-line flag -> (adapter option, value given when the flag is set)
ADAPTER_FLAGS = {"pipeline_type": "pipeline_type", "max_num_tokens": "max_num_tokens", "envmap": "envmap",
                 "no_preprocess": "preprocess", "no_video": "video"}


def split_image_camera(text: str) -> tuple[str, str | None]:
    """``front.png@front`` or ``side.png@90,20`` into the path and its camera; a path alone has none.

    Only a valid camera after the last ``@`` is split off, so ``img@2x.png`` stays a path. The
    camera stays text, so that a model's own camera names apply (the proxy's ``front`` is raised).

    >>> split_image_camera("side.png@90,20"), split_image_camera("img@2x.png")
    (('side.png', '90,20'), ('img@2x.png', None))
    """
    path, sep, camera = text.rpartition("@")
    if not sep or not path:
        return text, None
    try:
        parse_camera(camera)
    except ViewError as exc:
        if Path(path).is_file() and not Path(text).exists():
            raise ViewError(f"{text!r}: the image exists, but {exc}") from exc
        return text, None
    return path, camera


def _cmd_list(args: argparse.Namespace) -> int:
    reg = get_registry(refresh=True)
    infos = reg.list()
    reg.check()
    names = reg.names()
    rows = [(i.name if i.name in names and reg.info(i.name) is i else i.qualified_name,
             f"{i.distribution or '?'} {i.version or ''}".strip(), i.summary) for i in infos]
    adapters = [(a.name, f"{a.distribution or '?'} {a.version or ''}".strip(), a.summary) for a in reg.adapters()]
    for title, table in (("aggregator", rows), ("adapter", adapters)):
        widths = [max([len(h), *(len(r[k]) for r in table)]) for k, h in enumerate((title, "distribution"))]
        print(f"{title:<{widths[0]}}  {'distribution':<{widths[1]}}  summary")
        for name, dist, summary in table:
            print(f"{name:<{widths[0]}}  {dist:<{widths[1]}}  {summary}")
        if title == "aggregator":
            print()
    for err in reg.errors:
        print(f"error: {err}", file=sys.stderr)
    return 1 if reg.errors and args.strict else 0


def _run_options(args: argparse.Namespace, adapter: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`trellis_mv.run_multi_image` from the command line."""
    info = traits(adapter)
    params = parse_sampler_params({name: getattr(args, name, None) for name in SAMPLER_PARAMS}, info.stage_names,
                                  info.stage_aliases)
    stages = {}
    for item in args.stage or []:
        stage, name, options = parse_stage(item)
        stages[stage] = (name, options)
    return dict(mode=args.mode, stages=stages, seed=args.seed, params=params,
                num_samples=getattr(args, "num_samples", 1), weights=getattr(args, "weights", None),
                max_batch=getattr(args, "max_batch", None))


def _report(summary: dict[str, Any], args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return
    stages = ", ".join(f"{s}={a}" for s, a in summary.get("aggregators", {}).items())
    cost = summary.get("cost", {})
    print(f"wrote {', '.join(summary.get('outputs', []))} to {summary.get('out_dir')}")
    print(f"{summary.get('num_views')} views; aggregators: {stages}; model forwards: {cost.get('model_forwards', '?')}; "
          f"{summary.get('seconds', {}).get('total', '?')} s")


def _adapter_options(args: argparse.Namespace) -> dict[str, Any]:
    options = {}
    for flag, option in ADAPTER_FLAGS.items():
        value = getattr(args, flag, None)
        if flag.startswith("no_"):
            if value:
                options[option] = False
        elif value is not None:
            options[option] = value
    if args.model == "proxy" and options:
        given = [f"--{f.replace('_', '-')}" for f in ADAPTER_FLAGS if ADAPTER_FLAGS[f] in options]
        verb = "applies" if len(given) == 1 else "apply"
        raise ParameterError(f"{', '.join(given)} {verb} to TRELLIS.2 / TRELLIS models only, not to --model proxy")
    return options


@contextmanager
def _prepared(images: list[str], quiet: bool) -> Iterator[list[str]]:
    """The photos after :func:`trellis_mv._images.prepare_photos`, as PNGs named like the originals, in a
    temporary folder that lives as long as the run."""
    import tempfile
    from pathlib import Path

    from ._images import prepare_photos

    prepared = prepare_photos(images)
    with tempfile.TemporaryDirectory(prefix="trellis-mv-prepared-") as folder:
        paths = []
        for i, (original, photo) in enumerate(zip(images, prepared)):
            path = Path(folder) / f"{i}_{Path(original).stem}.png"
            photo.image.save(path)
            paths.append(str(path))
            if photo.warning:
                print(f"trellis-mv: warning: {original}: {photo.warning}", file=sys.stderr)
            elif not quiet:
                print(f"{original}: {photo.note}", file=sys.stderr)
        yield paths


def _cmd_generate(args: argparse.Namespace) -> int:
    pairs = [split_image_camera(item) for item in args.images]
    images = [p for p, _ in pairs]
    cameras = [c for _, c in pairs] if any(c is not None for _, c in pairs) else None
    options = _adapter_options(args)
    from ._outputs import check_output

    check_output(args.out, overwrite=args.overwrite, inputs=images)  # before loading any model
    if args.preprocess:
        with _prepared(images, args.quiet) as paths:
            return _generate(args, paths, cameras, options)
    return _generate(args, images, cameras, options)


def _generate(args: argparse.Namespace, images: list[str], cameras: list[str | None] | None,
              options: dict[str, Any]) -> int:
    with process_group_from_env() as group:  # under torchrun: one sample, its views spread over the ranks
        adapter = load_adapter(args.model, device=args.device, **options)
        if traits(adapter).verbose is not None:
            adapter.verbose = not args.quiet and writes_outputs(group)  # type: ignore[attr-defined]
        summary = generate(adapter, images, args.out, overwrite=args.overwrite, cameras=cameras, group=group,
                           **_run_options(args, adapter))
        if writes_outputs(group):
            _report(summary, args)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    adapter = load_adapter("proxy", device=args.device)
    adapter.verbose = not args.quiet  # type: ignore[attr-defined]
    summary = demo(args.out, num_views=args.views, overwrite=args.overwrite, adapter=adapter, **_run_options(args, adapter))
    _report(summary, args)
    return 0


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run in --out (otherwise a folder that holds files is refused)")
    p.add_argument("--device", default=None, help="torch device (default: cpu for the proxy, CUDA if present otherwise)")
    p.add_argument("--mode", default="multidiffusion", metavar="AGGREGATOR[:k=v,...]",
                   help="aggregator of every stage not named by --stage (default: multidiffusion); see `trellis-mv list`. "
                        "A list value is written [1, 2] or 1;2, e.g. 'weighted:schedule=[(1.0, [3, 1, 1]), (0.0, [1, 1, 1])]'")
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
    sub = parser.add_subparsers(dest="command", required=True, metavar="{list,demo,generate,app,eval}",
                                title="commands (trellis-mv COMMAND --help for each)")

    p = sub.add_parser("list", help="list the registered aggregators and model adapters, and their distributions")
    p.add_argument("--strict", action="store_true", help="exit 1 if any plugin failed to load or to build")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("demo", help="multi-view generation on the bundled example views (proxy model, CPU)")
    p.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    p.add_argument("--views", type=int, default=4, help="how many of the 4 bundled views to use")
    _add_run_options(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("generate", help="3D from several views of one object")
    p.add_argument("--images", nargs="+", required=True, metavar="IMAGE[@CAMERA]",
                   help="one image per view; a camera may follow '@': front, right, back, left, top, AZIMUTH or "
                        "AZIMUTH,ELEVATION in degrees (e.g. side.png@90 or top.png@0,60)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", default="proxy",
                   help="'proxy' (embedded, CPU), or a TRELLIS.2 / TRELLIS hub id or local folder, e.g. microsoft/TRELLIS.2-4B")
    _add_run_options(p)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--weights", type=float, nargs="+", default=None, help="one weight per view")
    p.add_argument("--max-batch", type=int, default=None, help="at most this many latent rows per model forward")
    p.add_argument("--preprocess", action="store_true",
                   help="cut each object out of a plain background and centre the photos at one scale first "
                        "(no learned matting: a photo whose background is not plain is used as it is, with a warning)")
    g = p.add_argument_group("TRELLIS.2 only")
    g.add_argument("--pipeline-type", choices=["512", "1024", "1024_cascade", "1536_cascade"], default=None,
                   help="default: the pipeline's own (1024_cascade)")
    g.add_argument("--max-num-tokens", type=int, default=None, help="token budget of the cascade (default 49152)")
    g.add_argument("--envmap", default=None, help="HDR/EXR environment map for the turntable video")
    g.add_argument("--no-video", action="store_true", help="skip the turntable MP4")
    g = p.add_argument_group("TRELLIS.2 and TRELLIS")
    g.add_argument("--no-preprocess", action="store_true",
                   help="skip the model's own background removal and crop (images are already cropped and matted)")
    p.set_defaults(func=_cmd_generate)

    add_app_command(sub)
    add_eval_parser(sub)
    return parser


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends a run as Ctrl-C does: cleanly, leaving no partial output."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _sigterm_as_interrupt():
            return int(args.func(args) or 0)
    except (TrellisMVError, ValueError, OSError, ImportError) as exc:
        # bad input or a missing dependency: the message says what and how to fix it
        print(f"trellis-mv: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("trellis-mv: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
