"""``trellis-mv eval`` (also ``python -m trellis_mv.eval``): run an evaluation, rebuild its report, write an example folder."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trellis_mv._errors import TrellisMVError

__all__ = ["add_parser", "main"]

_DESCRIPTION = "Score aggregators on many objects (or rebuild a report, or write an example dataset folder)."
_EPILOG = """examples:
  trellis-mv eval --model proxy --dataset proxy --first-object 1000 --objects 200 \\
      --views 1 2 4 --aggregators single multidiffusion stochastic concat --seeds 3 --out runs/proxy
  torchrun --nproc_per_node=2 -m trellis_mv.eval --dataset proxy --objects 200 --out runs/proxy
  trellis-mv eval report runs/proxy
  trellis-mv eval example data/objects --objects 3
"""


def _stage_params(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    from trellis_mv._params import SAMPLER_PARAMS
    from trellis_mv.run import adapter_class, parse_sampler_params

    cls = adapter_class(args.model)  # the stage names, without loading the model
    names = getattr(cls, "stage_names", None)
    values = {key: getattr(args, key, None) for key in SAMPLER_PARAMS}
    if not names:
        if any(values.values()):
            raise ValueError(f"the {getattr(cls, 'name', cls.__name__)} adapter does not declare its stage_names, so "
                             "sampler parameters cannot be checked before loading it; give them through the Python API")
        return {}
    return parse_sampler_params(values, names, getattr(cls, "stage_aliases", None))


def _run(args: argparse.Namespace) -> int:
    from trellis_mv._outputs import check_output, output_folder, write_lock

    if args.eval_command == "report":
        from trellis_mv.eval._report import write_report

        if not Path(args.dir).is_dir():
            raise FileNotFoundError(f"{args.dir} is not a folder: give the --out folder of a `trellis-mv eval` run")
        with write_lock(check_output(args.dir, kind="eval", resume=True)):
            files = write_report(args.dir, min_effect=_min_effect(args))
        print("wrote " + ", ".join(sorted(files)) + f" to {args.dir}")
        _print_warnings(files)
        return 0
    if args.eval_command == "example":
        from trellis_mv.eval._datasets import write_example_folder

        if args.objects < 1 or args.first_object < 0:
            raise ValueError(f"--objects must be >= 1 and --first-object >= 0; got {args.objects} and {args.first_object}")
        with output_folder(args.dir, kind="example", overwrite=args.overwrite) as staging:
            write_example_folder(staging, objects=args.objects, first_object=args.first_object)
        print(f"wrote {args.objects} objects to {args.dir}; evaluate them with --dataset folder:{args.dir}")
        return 0
    if not args.out:
        raise ValueError("--out DIR is required: the folder of results (an existing one is resumed)")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads {args.threads}: give a number of CPU threads >= 1, e.g. --threads 4")
        import torch

        torch.set_num_threads(args.threads)
    from trellis_mv.eval._run import evaluate

    res = evaluate(
        out=args.out, dataset=args.dataset, model=args.model, views=args.views, aggregators=args.aggregators,
        seeds=args.seeds, first_object=args.first_object, objects=args.objects, params=_stage_params(args),
        max_batch=args.max_batch, device=args.device, max_jobs=args.max_jobs, progress=not args.quiet,
        report=not args.no_report, spread_views=args.spread_views, batch=args.batch, wrong_view=args.wrong_view,
        mesh_workers=args.mesh_workers, precision=args.precision,
    )
    from trellis_mv.eval._jobs import placement
    from trellis_mv.eval._report import DEFAULT_MIN_EFFECT, write_report

    if res["report"] and _min_effect(args) != DEFAULT_MIN_EFFECT:  # the run writes it with the default
        with write_lock(args.out):
            res["report"] = write_report(args.out, min_effect=_min_effect(args))
    if res["report"]:
        print("wrote " + ", ".join(sorted(res["report"])) + f" to {args.out}")
        _print_warnings(res["report"])
    elif placement().rank != 0:  # rank 0 waits for the others and finishes; what is left now is not left then
        print(f"rank {placement().rank}: ran {res['ran']} jobs")
    elif res["pending"]:
        print(f"ran {res['ran']} jobs; {res['pending']} of {res['jobs']} left: run the same command again to go on")
    return 0


def _min_effect(args: argparse.Namespace) -> float:
    """``--min-effect`` of ``eval report`` if given there, else of ``eval``, else the default."""
    from trellis_mv.eval._report import DEFAULT_MIN_EFFECT

    for value in (getattr(args, "report_min_effect", None), getattr(args, "min_effect", None)):
        if value is not None:
            return float(value)
    return DEFAULT_MIN_EFFECT


def _print_warnings(files: Any) -> None:
    for line in getattr(files, "warnings", []):
        print(f"trellis-mv eval: warning: {line}", file=sys.stderr)


def _configure(p: argparse.ArgumentParser) -> None:
    from trellis_mv._params import SAMPLER_PARAMS

    p.add_argument("--model", default="proxy", help="'proxy' (embedded), or a TRELLIS.2 hub id / local folder")
    p.add_argument("--dataset", default="proxy", help="'proxy' (procedural objects) or 'folder:PATH' (default: proxy)")
    p.add_argument("--first-object", type=int, default=0,
                   help="the first object: proxy, counted from the held-out seeds; folder, in name order (default 0)")
    p.add_argument("--objects", type=int, default=None, help="how many objects (default: proxy 10, folder all)")
    p.add_argument("--views", type=int, nargs="+", default=[1, 2, 4], help="numbers of given views (default 1 2 4)")
    p.add_argument("--aggregators", nargs="+", default=["multidiffusion"], metavar="AGGREGATOR[:k=v,...]",
                   help="aggregators to compare; the single-view baselines and multidiffusion are always run. "
                        "STAGE=AGGREGATOR[+STAGE=AGGREGATOR...] names stages (the others keep multidiffusion), "
                        "e.g. texture=visibility")
    p.add_argument("--batch", type=int, default=None,
                   help="objects generated together in one sampler run (default: 256 on a GPU, 16 on a CPU); "
                        "the results do not depend on it")
    p.add_argument("--mesh-workers", type=int, default=None, metavar="N",
                   help="processes computing mesh scores (folder data sets) while the next objects sample "
                        "(default 0: in this process, which measured faster so far); the results do not depend on it")
    p.add_argument("--wrong-view", default=None, metavar="VIEW",
                   help="replace this view of every object by the next object's (one wrong photo among right ones)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per object and aggregator (default 1)")
    p.add_argument("--out", help="results folder; an existing one is resumed (same options)")
    p.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if there is CUDA), cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads of each process")
    p.add_argument("--max-batch", type=int, default=None, help="at most this many latent rows per model forward")
    p.add_argument("--precision", default=None, choices=["fp32", "bf16"],
                   help="the proxy's networks: fp32 (default, exact) or bf16 autocast (several times faster on a GPU)")
    p.add_argument("--max-jobs", type=int, default=None, help="stop after this many jobs of each rank (then resume)")
    for name in SAMPLER_PARAMS:
        p.add_argument(f"--{name.replace('_', '-')}", action="append", default=None, metavar="[STAGE=]VALUE",
                       help=f"{name} of every stage, or STAGE=VALUE for one (repeatable)")
    p.add_argument("--spread-views", action="store_true",
                   help="under torchrun: every rank runs every job, each step's views spread over the ranks "
                        "(instead of sharding the jobs)")
    p.add_argument("--no-report", action="store_true", help="only the runs; build the tables later with `eval report DIR`")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    min_effect = ("the difference in the main metric (iou on the proxy) the objects should resolve; the report "
                  "warns when they are too few and says how many would do (default 0.01)")
    p.add_argument("--min-effect", type=float, default=None, metavar="DIFF", help=min_effect)
    sub = p.add_subparsers(dest="eval_command", metavar="{report,example}")
    r = sub.add_parser("report", help="(re)build the tables and plots of a results folder")
    r.add_argument("dir")
    r.add_argument("--min-effect", dest="report_min_effect", type=float, default=None, metavar="DIFF", help=min_effect)
    e = sub.add_parser("example", help="write a small example dataset folder (proxy shapes with meshes)")
    e.add_argument("dir")
    e.add_argument("--objects", type=int, default=3)
    e.add_argument("--first-object", type=int, default=0)
    e.add_argument("--overwrite", action="store_true", help="replace an example folder written before")
    p.set_defaults(func=_run)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``eval`` on the ``trellis-mv`` command's subparsers."""
    p = sub.add_parser("eval", help="score aggregators on many objects (one CPU, GPUs, torchrun, SLURM)",
                       description=_DESCRIPTION, epilog=_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _configure(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trellis_mv.eval``: the same options as ``trellis-mv eval``."""
    p = argparse.ArgumentParser(prog="python -m trellis_mv.eval", description=_DESCRIPTION, epilog=_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _configure(p)
    args = p.parse_args(argv)
    try:
        return _run(args)
    except (TrellisMVError, ValueError, OSError, ImportError) as exc:
        print(f"trellis-mv eval: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("trellis-mv eval: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
