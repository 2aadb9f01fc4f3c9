"""Run an evaluation: this rank's share of the jobs, one result line each, then (rank 0) the tables.

No communication while sampling: each rank writes its own results file; rank 0, once its
own share is done, waits until every job of the list has a result in some rank's file, then
builds the report. A restart with the same options skips the jobs already done.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from trellis_mv._errors import TrellisMVError
from trellis_mv.eval._datasets import Dataset, EvalObject, given_views, parse_dataset
from trellis_mv.eval._jobs import SINGLE, Job, Placement, ResultStore, build_jobs, pending, placement, shard
from trellis_mv.eval._metrics import _score_proxy, score_mesh, view_scores

__all__ = ["Generation", "evaluate"]

#: Options that decide the results; a restart into the same folder must repeat them.
_CONFIG_FILE = "config.json"
#: What an evaluation writes in its folder (the marker lists them; see :mod:`trellis_mv._outputs`).
OUTPUT_FILES = ("config.json", "plan.json", "results", "summary.csv", "paired.csv", "timing.csv", "summary.md",
                "views.png", "scatter.png", ".config.json.*", ".plan.json.*")


@dataclass
class Generation:
    """What one run of the model gave, and what it cost."""

    output: Any
    model_forwards: int
    latent_rows: int
    seconds: float
    peak_memory_mib: float | None


# ------------------------------------------------------------------------------------------
# the model: the only functions that know how a model is loaded, run and rendered
def _load_adapter(model: str, device: str) -> Any:
    """The adapter of ``model``: ``"proxy"``, or a TRELLIS.2 / TRELLIS hub id or local folder."""
    from trellis_mv import load_adapter

    return load_adapter(model, device=device)


def _generate(adapter: Any, images: Sequence[Any], spec: str, seed: int, *, params: Mapping[str, Any] | None = None,
              max_batch: int | None = None, cameras: Sequence[Any] | None = None, group: Any = None) -> Generation:
    """One multi-view generation of one sample through the run path, with its cost."""
    device = _device_of(adapter)
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with warnings.catch_warnings():  # stochastic with more views than steps warns; not the point of an evaluation
        warnings.simplefilter("ignore")
        from trellis_mv import run_multi_image

        # views go in as a user's images would (an adapter may accept tensors too, but every model takes images)
        run = run_multi_image(adapter, [_as_image(im) for im in images], mode=spec, max_batch=max_batch, seed=seed,
                              num_samples=1, params=dict(params or {}), cameras=cameras, group=group)
        output, patches = run.output, run.patches
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    unique = {id(p): p for p in patches.values()}.values()
    return Generation(
        output=output,
        model_forwards=sum(p.model_calls for p in unique),
        latent_rows=sum(p.batch_rows for p in unique),
        seconds=seconds,
        peak_memory_mib=torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
    )


def _as_image(image: Any) -> Any:
    """A ``[3, H, W]`` tensor in ``[0, 1]`` as a PIL image; paths and images pass through."""
    if not isinstance(image, torch.Tensor):
        return image
    from PIL import Image

    return Image.fromarray((image.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy())


def _device_of(adapter: Any) -> torch.device | None:
    dev = getattr(adapter, "device", None)
    return torch.device(dev) if dev is not None else None


def _renderer(adapter: Any) -> Callable[[Any, tuple[float, float], int], torch.Tensor] | None:
    """``render(output, (azimuth, elevation), size) -> float [3, size, size]`` where the adapter can render, else None.

    An adapter offers it by a ``render(output, camera, size)`` method; the proxy renders its voxels.
    """
    custom = getattr(adapter, "render", None)
    if callable(custom):
        return custom
    from trellis_mv.proxy import ProxyPipeline, render

    if isinstance(adapter, ProxyPipeline):
        return lambda out, camera, size: render(out.occupancy[0], out.colors[0], [camera], size=size)[0][0]
    return None


def _as_mesh(output: Any) -> Any:
    """The first sample of a generation as a ``trimesh.Trimesh``."""
    import trimesh

    if isinstance(output, trimesh.Trimesh):
        return output
    if hasattr(output, "occupancy") and hasattr(output, "colors"):
        from trellis_mv.proxy import mesh_from_voxels

        return mesh_from_voxels(output.occupancy[0], output.colors[0])
    mesh = output.meshes[0] if hasattr(output, "meshes") else output
    to_np = lambda t: t.detach().float().cpu().numpy() if isinstance(t, torch.Tensor) else t
    return trimesh.Trimesh(vertices=to_np(mesh.vertices), faces=to_np(mesh.faces), process=False)


# ------------------------------------------------------------------------------------------
# one job
def _photo(image: Any, size: int = 64) -> torch.Tensor:
    from trellis_mv.proxy import preprocess

    return image if isinstance(image, torch.Tensor) else preprocess(image, size=size)


def _score(obj: EvalObject, job: Job, gen: Generation, render: Callable[..., torch.Tensor] | None) -> dict[str, float]:
    if obj.shape is not None and hasattr(gen.output, "occupancy"):
        return _score_proxy(gen.output.occupancy[0], gen.output.colors[0], obj.shape, list(job.views))
    scores: dict[str, float] = {}
    truth = obj.mesh
    if truth is None and obj.shape is not None:  # another model on the proxy's objects: compare meshes
        from trellis_mv.proxy import mesh_from_voxels

        truth = mesh_from_voxels(obj.shape.occupancy, obj.shape.colors)
    if truth is not None:
        scores.update(score_mesh(_as_mesh(gen.output), truth))
    if render is not None and obj.cameras and obj.shape is None:
        given = {v: _photo(obj.images[v]) for v in job.views if v in obj.cameras}
        held = {v: _photo(obj.images[v]) for v in obj.view_names if v not in job.views and v in obj.cameras}
        scores.update(view_scores(render, gen.output, given, obj.cameras, "given"))
        scores.update(view_scores(render, gen.output, held, obj.cameras, "heldout"))
    return scores


def _run_job(adapter: Any, obj: EvalObject, job: Job, params: Mapping[str, Any] | None, max_batch: int | None,
             render: Callable[..., torch.Tensor] | None, group: Any = None) -> dict[str, Any]:
    images = [obj.images[v] for v in job.views]
    cameras = [obj.cameras.get(v, v if obj.shape is not None else None) for v in job.views]  # the proxy's views are named
    gen = _generate(adapter, images, job.aggregator, job.seed, params=params, max_batch=max_batch,
                    cameras=cameras if any(c is not None for c in cameras) else None, group=group)
    metrics = {k: (float(v) if v is not None and math.isfinite(float(v)) else None)
               for k, v in _score(obj, job, gen, render).items()}
    return {
        "key": job.key, "object": job.object_id, "aggregator": job.aggregator, "views": list(job.views),
        "seed_index": job.seed_index, "seed": job.seed, "metrics": metrics,
        "cost": {"model_forwards": gen.model_forwards, "latent_rows": gen.latent_rows},
        "timing": {"seconds": round(gen.seconds, 6),
                   **({"peak_memory_mib": round(gen.peak_memory_mib, 1)} if gen.peak_memory_mib is not None else {})},
    }


# ------------------------------------------------------------------------------------------
# the whole evaluation
def _check_aggregators(aggregators: Sequence[str]) -> list[str]:
    from trellis_mv import resolve
    from trellis_mv.pipeline import parse_aggregator

    if not aggregators:
        raise ValueError("no aggregators: pass --aggregators NAME [NAME ...], e.g. multidiffusion stochastic")
    out = []
    for spec in aggregators:
        name, options = parse_aggregator(spec)
        if name == SINGLE and options:
            raise ValueError(f"--aggregators {spec!r}: the single-view baselines (single:view=i for every given view) "
                             "are always run; drop it")
        resolve(spec)  # an unknown name or option fails here, before any model work
        if name != SINGLE and spec not in out:
            out.append(spec)
    if "multidiffusion" not in out:
        out.append("multidiffusion")  # always a baseline
    return out


def _check_views(views: Sequence[int], dataset: Dataset) -> list[int]:
    if not views:
        raise ValueError("no view counts: pass --views N [N ...], e.g. --views 1 2 4")
    bad = [n for n in views if n < 1]
    if bad:
        raise ValueError(f"--views {bad[0]}: a view count must be >= 1")
    views = sorted(set(views))
    for oid in dataset.object_ids():
        have = len(dataset.view_names(oid))
        if have < max(views):
            raise ValueError(f"object {oid!r} has {have} views but --views asks for {max(views)}; "
                             "give fewer views or add images to that object")
    return views


def _check_config(out: Path, config: dict[str, Any], rank: int = 0) -> None:
    path = out / _CONFIG_FILE
    if path.exists():
        old = json.loads(path.read_text())
        if old != config:
            before, now = old.get("inputs") or {}, config.get("inputs") or {}
            changed = sorted(o for o in set(before) | set(now) if before.get(o) != now.get(o))
            if changed and all(old.get(k) == config.get(k) for k in set(old) | set(config) if k != "inputs"):
                raise ValueError(f"the inputs of objects {', '.join(changed[:5])} changed since {out} was started "
                                 "(files added, removed or edited); restore them, or choose another --out")
            diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            who = f"rank {rank}: " if rank else ""
            raise ValueError(f"{who}{out} holds results of another evaluation ({', '.join(diff)} differ); "
                             "repeat its options to resume it, or choose another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{_CONFIG_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)  # every rank writes the same text; the last replace wins


def evaluate(
    *,
    out: str | os.PathLike[str],
    dataset: str | Dataset = "proxy",
    model: str = "proxy",
    adapter: Any = None,
    views: Sequence[int] = (1, 2, 4),
    aggregators: Sequence[str] = ("multidiffusion",),
    seeds: int = 1,
    first_object: int = 0,
    objects: int | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    max_batch: int | None = None,
    device: str = "auto",
    where: Placement | None = None,
    max_jobs: int | None = None,
    progress: bool = True,
    report: bool = True,
    wait_seconds: float | None = None,
    spread_views: bool = False,
) -> dict[str, Any]:
    """Evaluate aggregators on a data set; write results under ``out`` and, on rank 0, the tables.

    :param out: the results folder (created; a restart with the same options resumes it).
    :param dataset: ``"proxy"``, ``"folder:PATH"`` or a :class:`Dataset`.
    :param model: ``"proxy"`` or a TRELLIS.2 hub id / folder; ignored when ``adapter`` is given.
    :param adapter: an already built pipeline adapter (e.g. a TRELLIS.2 pipeline); it may offer
        ``render(output, (azimuth, elevation), size)`` for scores at held-out views.
    :param views: the numbers of given views (standard sets :data:`VIEW_SETS`).
    :param aggregators: aggregator specs; ``multidiffusion`` and the single-view baselines are always added.
    :param seeds: seeds per (object, aggregator, views); each derived from (object, seed index).
    :param params: per-stage sampler parameters, e.g. ``{"texture": {"steps": 4}}``.
    :param device: ``auto`` (``cuda:LOCAL_RANK`` when CUDA is there, else ``cpu``), ``cpu`` or ``cuda``.
    :param where: rank and world size (default: from torchrun's or SLURM's variables).
    :param max_jobs: stop after this many jobs of this rank (to test resuming); no report then.
    :param wait_seconds: how long rank 0 waits for the other ranks' jobs (default: until no rank has written a
        result for ``TRELLIS_MV_RANK_TIMEOUT`` seconds, 1800 unless set).
    :param spread_views: instead of sharding jobs over the ranks, every rank runs every job with
        the views of each step spread over the ranks (``torch.distributed``, see
        :func:`trellis_mv.patch_sampler`'s ``group``); rank 0 records the results.
    :returns: ``{"jobs": total, "ran": by this rank, "pending": left, "report": paths or None}``.
    """
    where = where or placement()
    ds = parse_dataset(dataset, first_object=first_object, objects=objects)
    specs = _check_aggregators(aggregators)
    counts = _check_views(views, ds)
    if seeds < 1:
        raise ValueError(f"--seeds {seeds}: need at least 1 seed")
    if max_jobs is not None and max_jobs < 0:
        raise ValueError(f"--max-jobs {max_jobs}: must be >= 0")
    if device != "auto":
        from trellis_mv.pipeline import check_device

        check_device(device)
    model_name = model if adapter is None else getattr(adapter, "name", type(adapter).__name__)
    ids = ds.object_ids()
    for oid in ids:  # a broken object is named before any model work
        getattr(ds, "check", lambda _: None)(oid)
    fingerprint = getattr(ds, "fingerprint", None)
    config = {"model": model_name, "dataset": ds.describe(), "views": counts, "aggregators": specs, "seeds": seeds,
              "params": json.loads(json.dumps(params or {}, default=list)), "max_batch": max_batch,
              **({"inputs": {oid: fingerprint(oid) for oid in ids}} if fingerprint is not None else {})}
    from trellis_mv._outputs import claim_folder, write_lock

    out = claim_folder(out, kind="eval", files=OUTPUT_FILES, inputs=[r for r in [getattr(ds, "root", None)] if r])
    with write_lock(out) if where.world_size == 1 else contextlib.nullcontext():  # the ranks of one run share it
        return _evaluate(out, ds, config, ids, params=params, adapter=adapter, model=model, device=device, where=where,
                         max_jobs=max_jobs, progress=progress, report=report, wait_seconds=wait_seconds,
                         spread_views=spread_views)


def _evaluate(out: Path, ds: Dataset, config: dict[str, Any], ids: list[str], *,
              params: Mapping[str, Mapping[str, Any]] | None, adapter: Any, model: str, device: str,
              where: Placement, max_jobs: int | None, progress: bool, report: bool, wait_seconds: float | None,
              spread_views: bool) -> dict[str, Any]:
    """:func:`evaluate` once its options are checked and ``out`` is claimed."""
    specs, counts, seeds = config["aggregators"], config["views"], config["seeds"]
    max_batch = config["max_batch"]
    _check_config(out, config, where.rank)

    given: dict[tuple[str, int], tuple[str, ...]] = {}
    view_sets: dict[str, list[tuple[str, ...]]] = {}
    for oid in ids:
        names = ds.view_names(oid)
        view_sets[oid] = [given_views(names, n) for n in counts]
        given.update({(oid, n): vs for n, vs in zip(counts, view_sets[oid])})
    jobs = [j for oid in ids for j in build_jobs([oid], view_sets[oid], specs, seeds)]  # object order, then sorted
    _write_plan(out, given, where)

    store = ResultStore(out)
    group = _views_group(spread_views, where)
    mine = jobs if group is not None else shard(jobs, where.rank, where.world_size)
    todo = pending(mine, store.done())
    if max_jobs is not None:
        todo = todo[:max_jobs]
    if progress and where.world_size > 1:
        print(f"rank {where.rank} of {where.world_size} (from {where.source}): {len(todo)} of its {len(mine)} jobs to run",
              flush=True)
    ran = 0
    if todo:
        adapter = adapter if adapter is not None else _load_adapter(model, _pick_device(device, where))
        render = _renderer(adapter)
        ran = _work(adapter, ds, todo, store, where, len(mine), len(jobs), params, max_batch, render, progress, group)
    left = len(pending(jobs, store.done()))
    result: dict[str, Any] = {"jobs": len(jobs), "ran": ran, "pending": left, "report": None}
    if where.rank != 0 or not report or max_jobs is not None:
        return result
    left = _wait_for_all(store, jobs, wait_seconds, progress)
    result["pending"] = left
    if left:
        done = store.done()
        missing = sorted({i % where.world_size for i, j in enumerate(jobs) if j.key not in done})
        raise TrellisMVError(f"{left} jobs have no result after waiting; rank(s) {', '.join(map(str, missing))} wrote no "
                             f"result in time and may have died. Run the same command again to finish them, or "
                             f"`trellis-mv eval report {out}` for the tables of what is done")
    from trellis_mv.eval._report import write_report

    result["report"] = write_report(out)
    return result


def _write_plan(out: Path, given: dict[tuple[str, int], tuple[str, ...]], where: Placement) -> None:
    """``plan.json``: the given views of every (object, N), which the report needs to pair results."""
    if where.rank != 0 and (out / "plan.json").exists():
        return
    plan = {f"{oid}|{n}": list(v) for (oid, n), v in given.items()}
    tmp = out / f".plan.json.{os.getpid()}"
    tmp.write_text(json.dumps(plan, indent=0, sort_keys=True) + "\n")
    os.replace(tmp, out / "plan.json")


def _pick_device(device: str, where: Placement) -> str:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":  # ranks beyond the GPUs share them (small models leave a GPU idle)
        return f"cuda:{where.local_rank % max(torch.cuda.device_count(), 1)}"
    return device


def _views_group(spread_views: bool, where: Placement) -> Any:
    """The process group a job's views are spread over, or None when jobs are sharded over the ranks."""
    if not spread_views or where.world_size <= 1:
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(where.local_rank % torch.cuda.device_count())
        from trellis_mv._distributed import rank_timeout

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timedelta(seconds=rank_timeout()))
    return dist.group.WORLD


def _work(adapter: Any, ds: Dataset, todo: list[Job], store: ResultStore, where: Placement, share: int, total: int,
          params: Mapping[str, Any] | None, max_batch: int | None, render: Callable[..., torch.Tensor] | None,
          progress: bool, group: Any = None) -> int:
    from tqdm.auto import tqdm

    bar = tqdm(total=share, initial=share - len(todo), desc=f"rank {where.rank}", position=where.rank,
               disable=not progress, dynamic_ncols=True, leave=where.rank == 0)
    start, done_at_start, last_peek = time.perf_counter(), store.count(), 0.0
    current: EvalObject | None = None
    dev = _device_of(adapter)
    device_name = (torch.cuda.get_device_name(dev) if dev is not None and dev.type == "cuda"
                   else f"cpu, {torch.get_num_threads()} threads")
    try:
        for k, job in enumerate(todo):
            if current is None or current.object_id != job.object_id:
                current = ds.load(job.object_id)
            record = _run_job(adapter, current, job, params, max_batch, render, group)
            record["finished_at"] = round(time.time(), 3)  # for throughput; not part of any table
            record["device"] = device_name
            if group is None or where.rank == 0:  # views spread over the ranks: every rank holds the same result
                store.append(where.rank, record)
            bar.update(1)
            now = time.perf_counter()
            if where.rank == 0 and where.world_size > 1 and progress and (now - last_peek > 5 or k == len(todo) - 1):
                last_peek = now
                done = store.count()
                rate = (done - done_at_start) / max(now - start, 1e-9)
                eta = (total - done) / rate if rate > 0 else math.inf
                bar.set_postfix_str(f"all ranks {done}/{total}, ETA {_hms(eta)}")
    finally:
        bar.close()
    return len(todo)


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _wait_for_all(store: ResultStore, jobs: list[Job], wait_seconds: float | None, progress: bool) -> int:
    """Wait until every job has a result: at most ``wait_seconds``, and (without it) until no rank has written a
    result for :func:`~trellis_mv._distributed.rank_timeout` seconds."""
    from trellis_mv._distributed import rank_timeout

    deadline = None if wait_seconds is None else time.monotonic() + wait_seconds
    idle, last_count, last_change = rank_timeout(), store.count(), time.monotonic()
    announced = False
    while True:
        left = len(pending(jobs, store.done()))
        now = time.monotonic()
        count = store.count()
        if count != last_count:
            last_count, last_change = count, now
        if left == 0 or (deadline is not None and now >= deadline) or (deadline is None and now - last_change >= idle):
            return left
        if progress and not announced:
            print(f"rank 0: waiting for {left} jobs of the other ranks", flush=True)
            announced = True
        time.sleep(min(2.0, max(idle / 10, 0.01)))
