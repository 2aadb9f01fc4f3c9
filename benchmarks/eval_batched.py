"""Evaluation throughput on one device: the per-job path, the batched path, and the model forwards alone, in one run.

The same job list (``--objects`` held-out proxy shapes x ``--views`` x ``--aggregators``, the
single-view baselines included) is evaluated twice through :func:`trellis_mv.eval.evaluate`
into fresh folders: once with ``batch=1`` (every job its own sampler run: the per-job path)
and once batched (``--batch``: jobs that share aggregator and number of views in one sampler
run). The per-job path may be cut to its first ``--per-job-limit`` jobs (its rate is steady;
the ratio is of rates). Then the forward-only rate: the same model forwards the batched run
counted (rows per forward as it ran them), timed alone on random inputs, as jobs per second.
Prints jobs/s of each and their ratios; with ``--out``, writes them as Markdown and JSON.
Scores of the jobs both paths ran are compared (largest difference).

``--compile`` adds rows for the batched path with the proxy's flow networks wrapped by
``torch.compile``: ``compile`` (the structure flow, whose shapes are static per chunk, and
the texture flow with ``dynamic=True``, whose token count varies) and ``cudagraphs`` (the
structure flow in ``mode="reduce-overhead"``, CUDA graphs, on CUDA only). The texture flow's
layout step (a host sync, once a stage) is left eager. Each runs the job list once untimed
(compiling for every shape it meets: ``compile_seconds``, that pass's time), then timed, and
its scores are compared with the eager batched run's: the largest difference of the main
score (``iou`` here) against ``--compile-tolerance``, and of any score.

    python benchmarks/eval_batched.py --device cuda --objects 200 --views 1 4 --per-job-limit 120 --compile \
        --out benchmarks/results/eval_batched_H200.md
    python benchmarks/eval_batched.py --device cpu --objects 2 --views 1 --per-job-limit 4   # smallest

``--precision bf16`` runs the proxy's networks under bfloat16 autocast on every path (per job,
batched, compiled, forwards alone) and adds the same two paths in fp32: their rates, the
batched bf16 rate over the faster per-job path (autocast slows a small forward), and the
difference of the main score between bf16 and fp32, job by job.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from _results import emit


def _records(out: Path) -> dict[str, dict]:
    recs: dict[str, dict] = {}
    for f in sorted((out / "results").glob("rank-*.jsonl")):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            recs[rec["key"]] = rec
    return recs


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed_eval(
    args: argparse.Namespace, out: Path, batch: int, max_jobs: int | None, adapter: object = None, warm_all: bool = False,
    precision: str | None = None,
) -> tuple[float, dict[str, dict]]:
    from trellis_mv.eval import evaluate

    params = {"sparse_structure": {"steps": args.steps}, "texture": {"steps": args.steps}}
    common = dict(dataset="proxy", first_object=args.first_object, objects=args.objects, views=args.views,
                  aggregators=args.aggregators, seeds=1, params=params, device=args.device, progress=False, report=False,
                  adapter=adapter, precision=(precision or args.precision) if adapter is None else None)
    warm = common if warm_all else {**common, "objects": 1}  # compiled networks meet every shape before the timing
    evaluate(out=out / "warm", **warm, batch=batch, max_jobs=None if warm_all else 2)  # load, allocate, compile
    _sync(args.device)
    start = time.perf_counter()
    evaluate(out=out / "run", **common, batch=batch, max_jobs=max_jobs)
    _sync(args.device)
    seconds = time.perf_counter() - start
    recs = _records(out / "run")
    return len(recs) / seconds, recs


def _score_difference(recs: dict[str, dict], eager: dict[str, dict], metric: str | None = None) -> float:
    """The largest absolute difference of ``metric`` (every metric if None) between two runs' records of the same jobs."""
    return max((abs(a - b) for k in recs.keys() & eager.keys() for m, a in recs[k]["metrics"].items()
                if (metric is None or m == metric) and a is not None and (b := eager[k]["metrics"].get(m)) is not None),
               default=float("nan"))


def _compiled(args: argparse.Namespace, root: Path, variant: str, eager: dict[str, dict]) -> dict:
    """The batched path with compiled flow networks: jobs/s, compile time and the score differences to eager."""
    from trellis_mv import load_adapter
    from trellis_mv.eval._report import main_metric

    torch._dynamo.reset()  # no compiled code or recompile count carried over from another variant
    adapter = load_adapter("proxy", device=args.device, precision=args.precision)
    models = adapter.models  # type: ignore[attr-defined]
    if variant == "cudagraphs":
        models.structure = torch.compile(models.structure, mode="reduce-overhead")
    else:
        models.structure = torch.compile(models.structure)
        # the texture flow's layout (a host sync and a cache keyed on the coordinates' identity) runs eagerly, once a
        # stage: traced, it would be compiled again for every new set of coordinates, up to the recompile limit
        models.texture._layout = torch.compiler.disable(models.texture._layout)
        models.texture = torch.compile(models.texture, dynamic=True)
    start = time.perf_counter()
    try:
        rate, recs = _timed_eval(args, root / variant, args.batch, None, adapter=adapter, warm_all=True)
    except Exception as exc:  # a backend that cannot compile these networks here: say so, keep the other rows
        return {"variant": variant, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    total = time.perf_counter() - start
    main = main_metric(sorted({m for r in recs.values() for m in r["metrics"]}))
    main_diff = _score_difference(recs, eager, main)
    return {"variant": variant, "jobs_per_s": rate, "compile_seconds": total - len(recs) / rate,
            "same_jobs": recs.keys() == eager.keys(), "main_score": main, "largest_main_score_difference": main_diff,
            "largest_score_difference": _score_difference(recs, eager), "tolerance": args.compile_tolerance,
            "agrees": recs.keys() == eager.keys() and main_diff <= args.compile_tolerance}


def _forward_only(args: argparse.Namespace, recs: dict[str, dict]) -> float:
    """Jobs/s if only the model forwards ran: the batched run's forwards, re-timed on random inputs."""
    from trellis_mv import load_adapter

    adapter = load_adapter("proxy", device=args.device)
    models = adapter.models
    dev = torch.device(args.device)
    width, tokens = models.cfg.width, (models.cfg.image_size // models.cfg.patch) ** 2
    total_jobs, total = 0, 0.0
    groups: dict[tuple[int, int], int] = {}
    for rec in recs.values():
        key = (rec["timing"]["batch"], len(rec["views"]))
        groups[key] = groups.get(key, 0) + 1
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
        for (batch, views), jobs in groups.items():
            rows = batch * (views + 1)  # every view of every object, and the negative, in one forward
            cond = torch.randn(rows, tokens, width, device=dev)
            x = torch.randn(rows, 8, 8, 8, 8, device=dev)
            t = torch.full((rows,), 500.0, device=dev)
            for _ in range(2):
                models.structure(x, t, cond)
            _sync(args.device)
            start = time.perf_counter()
            for _ in range(args.steps):
                models.structure(x, t, cond)
            _sync(args.device)
            per_run = time.perf_counter() - start  # the texture stage's forwards are cheaper: this is a lower bound
            total += per_run * jobs / batch
            total_jobs += jobs
    return total_jobs / total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--objects", type=int, default=64)
    p.add_argument("--first-object", type=int, default=5000, help="held-out objects from this index (not tuned on)")
    p.add_argument("--views", type=int, nargs="+", default=[1, 4])
    p.add_argument("--aggregators", nargs="+", default=["multidiffusion"])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--per-job-limit", type=int, default=120, help="jobs of the per-job path to time (its rate is steady)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compile", action="store_true", help="also time the batched path with torch.compile'd networks")
    p.add_argument("--compile-tolerance", type=float, default=1e-3,
                   help="largest difference of the main score to the eager batched run for a compiled run to agree")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="the proxy networks' precision on every path (bf16: also the fp32 batched path, for its scores)")
    p.add_argument("--out", type=Path, default=None, help="write the numbers as Markdown here (and JSON beside)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        batched_rate, batched = _timed_eval(args, root / "batched", args.batch, None)
        per_job_rate, per_job = _timed_eval(args, root / "per_job", 1, args.per_job_limit)
        variants = ["compile"] + (["cudagraphs"] if args.device.startswith("cuda") else []) if args.compile else []
        compiled = [_compiled(args, root, v, batched) for v in variants]
        reference = None if args.precision == "fp32" else (
            _timed_eval(args, root / "fp32", args.batch, None, precision="fp32"),
            _timed_eval(args, root / "fp32_per_job", 1, args.per_job_limit, precision="fp32")[0])
    forward_rate = _forward_only(args, batched)
    diff = _score_difference(per_job, batched)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    res = {"device": name, "jobs": len(batched), "objects": args.objects, "views": args.views,
           "aggregators": args.aggregators, "steps": args.steps, "batch": args.batch, "precision": args.precision,
           "per_job_jobs": len(per_job), "per_job_jobs_per_s": per_job_rate, "batched_jobs_per_s": batched_rate,
           "forward_only_jobs_per_s": forward_rate, "batched_over_per_job": batched_rate / per_job_rate,
           "batched_over_forward_only": batched_rate / forward_rate, "largest_score_difference": diff,
           "compiled": [{**c, **({"over_eager_batched": c["jobs_per_s"] / batched_rate} if "jobs_per_s" in c else {})}
                        for c in compiled]}
    lines = [f"# Evaluation throughput, per-job and batched ({name})", "",
             f"{len(batched)} jobs ({args.objects} held-out proxy objects from #{args.first_object}, views {args.views}, "
             f"{' '.join(args.aggregators)} + single-view baselines, {args.steps} steps a stage), batch {args.batch}, "
             f"networks in {args.precision} on every path; "
             f"the per-job path timed on {len(per_job)} of them.", "",
             "| path | jobs/s |", "|---|---|",
             f"| per job (one sampler run each) | {per_job_rate:.2f} |",
             f"| batched | {batched_rate:.1f} |",
             f"| model forwards alone (structure stage, the batched run's shapes) | {forward_rate:.1f} |", "",
             f"batched / per job: **{res['batched_over_per_job']:.1f}x**; batched / forwards alone: "
             f"{res['batched_over_forward_only']:.2f}; largest score difference between the paths: {diff:.2e}.", ""]
    if compiled:
        lines += ["| batched, compiled | jobs/s | / eager batched | compile seconds | largest main score difference to eager "
                  f"(tolerance {args.compile_tolerance:g}) | largest difference of any score |", "|---|---|---|---|---|---|"]
        for c in res["compiled"]:
            lines.append(f"| {c['variant']} | failed: {c['error']} | | | | |" if "error" in c else
                         f"| {c['variant']} | {c['jobs_per_s']:.1f} | {c['over_eager_batched']:.2f}x | "
                         f"{c['compile_seconds']:.1f} | {c['main_score']} {c['largest_main_score_difference']:.2e} "
                         f"({'agrees' if c['agrees'] else 'DIFFERS' + ('' if c['same_jobs'] else ', other jobs')}) | "
                         f"{c['largest_score_difference']:.2e} |")
        lines.append("")
    if reference is not None:
        from trellis_mv.eval._report import main_metric

        (rate32, recs32), per_job32 = reference
        fastest = max(per_job_rate, per_job32)
        main = main_metric(sorted({m for r in batched.values() for m in r["metrics"]}))
        keys = sorted(batched.keys() & recs32.keys())
        shift = sum(batched[k]["metrics"][main] - recs32[k]["metrics"][main] for k in keys) / len(keys)
        res["fp32"] = {"per_job_jobs_per_s": per_job32, "batched_over_fastest_per_job": batched_rate / fastest}
        res["fp32_batched"] = {"jobs_per_s": rate32, "over": batched_rate / rate32, "main_score": main,
                               "mean_main_score_difference": shift,
                               "largest_main_score_difference": _score_difference(batched, recs32, main)}
        lines += [f"The same paths in fp32, same run: per job {per_job32:.2f} jobs/s, batched {rate32:.1f} "
                  f"({args.precision} batched is {batched_rate / rate32:.2f}x that). Batched in {args.precision} over the faster "
                  f"per-job path ({'fp32' if per_job32 >= per_job_rate else args.precision}): "
                  f"**{batched_rate / fastest:.1f}x**. {main} of {args.precision} minus fp32, mean over the {len(keys)} jobs: "
                  f"{shift:+.2e}, largest on one job: {res['fp32_batched']['largest_main_score_difference']:.2e}.", ""]
    tolerance = f" --compile-tolerance {args.compile_tolerance:g}" if args.compile and args.compile_tolerance != 1e-3 else ""
    lines.append(f"Command: `python benchmarks/eval_batched.py --device {args.device} --objects {args.objects} --views "
                 f"{' '.join(map(str, args.views))} --batch {args.batch} --per-job-limit {args.per_job_limit}"
                 f"{f' --steps {args.steps}' if args.steps != 12 else ''}{' --compile' if args.compile else ''}{tolerance}"
                 f"{f' --precision {args.precision}' if args.precision != 'fp32' else ''}`")
    emit(lines, res, args.out)


if __name__ == "__main__":
    main()
