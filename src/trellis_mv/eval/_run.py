"""Run an evaluation: this rank's share of the jobs, one result line each, then (rank 0) the tables.

No communication while sampling: each rank writes its own results file; rank 0, once its
own share is done, waits until every job of the list has a result in some rank's file, then
builds the report. A restart with the same options skips the jobs already done.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import time
import warnings
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from trellis_mv._errors import TrellisMVError, ViewError
from trellis_mv._images import image_tensor, load_image
from trellis_mv._views import Camera, parse_camera
from trellis_mv.eval._datasets import Dataset, EvalObject, WrongView, given_views, parse_dataset
from trellis_mv.eval._jobs import SINGLE, Job, Placement, ResultStore, build_jobs, pending, placement, shard
from trellis_mv.eval._metrics import score_mesh, view_scores
from trellis_mv.eval._voxel_metrics import VoxelTruth, score_voxels_batch
from trellis_mv.run import check_device, traits
from trellis_mv.voxels import mesh_from_voxels

__all__ = ["Generation", "evaluate"]

#: Options that decide the results; a restart into the same folder must repeat them.
_CONFIG_FILE = "config.json"
#: What an evaluation writes in its folder (the marker lists them; see :mod:`trellis_mv._outputs`).
OUTPUT_FILES = ("config.json", "plan.json", "results", "summary.csv", "paired.csv", "timing.csv", "summary.md",
                "views.png", "scatter.png", "cost_quality.png", ".config.json.*", ".plan.json.*")


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
def _load_adapter(model: str, device: str, precision: str | None = None) -> Any:
    """The adapter of ``model``: ``"proxy"``, or a TRELLIS.2 / TRELLIS hub id or local folder."""
    from trellis_mv import load_adapter

    options: dict[str, Any] = {} if precision is None else {"precision": precision}
    return load_adapter(model, device=device, **options)


def _stage_spec(spec: str) -> tuple[str, dict[str, str] | None]:
    """An evaluation's aggregator spec as ``run_multi_image``'s ``mode`` and ``stages``.

    ``"multidiffusion"`` is one aggregator for every stage; ``"texture=visibility"`` (several joined by
    ``+``: ``"sparse_structure=stochastic+texture=single:view=0"``) names stages, the others keep
    ``multidiffusion``.

    >>> _stage_spec("robust:estimator=median"), _stage_spec("sparse_structure=stochastic+texture=single:view=0")
    (('robust:estimator=median', None), ('multidiffusion', {'sparse_structure': 'stochastic', 'texture': 'single:view=0'}))
    """
    head = spec.split(":", 1)[0]
    if "=" not in head:
        return spec, None
    stages: dict[str, str] = {}
    for part in spec.split("+"):
        stage, eq, agg = part.partition("=")
        if not eq or not stage.strip() or not agg.strip():
            raise ValueError(f"--aggregators {spec!r}: expected AGGREGATOR or STAGE=AGGREGATOR[+STAGE=AGGREGATOR...], "
                             "e.g. texture=visibility")
        stages[stage.strip()] = agg.strip()
    return "multidiffusion", stages


def _generate(adapter: Any, image_sets: Sequence[Sequence[Any]], spec: str, seeds: Sequence[int], *,
              params: Mapping[str, Any] | None = None, max_batch: int | None = None,
              cameras: Sequence[Sequence[Any] | None] | None = None, group: Any = None, together: bool = True
              ) -> Generation:
    """One generation of every object of a chunk through the run path, with its cost.

    With ``together``, the adapter's ``sample_many`` and no process group, the chunk is one sampler
    run per stage (:func:`trellis_mv.run.run_many`: one output holding every object, which only
    ``to_voxels`` reads per object); otherwise one :func:`trellis_mv.run_multi_image` per object, its
    outputs kept in a list (``to_mesh`` and ``render`` read an output's first sample). ``model_forwards``
    is what one object's generation needs (every forward of a batch holds every object); ``latent_rows``
    and ``seconds`` are per object.
    """
    from trellis_mv.run import run_many, run_multi_image, traits

    device = _device_of(adapter)
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    mode, stages = _stage_spec(spec)
    start = time.perf_counter()
    with warnings.catch_warnings():  # stochastic with more views than steps warns; not the point of an evaluation
        warnings.simplefilter("ignore")
        # views go in as a user's images would (an adapter may accept tensors too, but every model takes images)
        images = [[_as_image(im) for im in views] for views in image_sets]
        if together and traits(adapter).sample_many is not None and group is None:
            run = run_many(adapter, images, seeds=seeds, mode=mode, stages=stages, params=dict(params or {}),
                           cameras=cameras, max_batch=max_batch)
            output, forwards, rows = run.output, run.cost()["model_forwards"], run.cost()["latent_rows"]
        else:
            outputs, forwards, rows = [], 0, 0
            for b, (views, seed) in enumerate(zip(images, seeds)):
                one = run_multi_image(adapter, views, mode=mode, stages=stages, max_batch=max_batch, seed=seed,
                                      params=dict(params or {}), cameras=None if cameras is None else cameras[b],
                                      group=group)
                outputs.append(one.output)
                forwards, rows = one.cost()["model_forwards"], rows + one.cost()["latent_rows"]
            output = outputs
    if cuda:
        torch.cuda.synchronize(device)
    n = len(image_sets)
    return Generation(
        output=output,
        model_forwards=forwards,
        latent_rows=rows // n,
        seconds=(time.perf_counter() - start) / n,
        peak_memory_mib=torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
    )


def _as_image(image: Any) -> Any:
    """A ``[3, H, W]`` tensor in ``[0, 1]`` as a PIL image; paths and images pass through."""
    if not isinstance(image, torch.Tensor):
        return image
    from PIL import Image

    return Image.fromarray((image.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy())


def _device_of(adapter: Any) -> torch.device | None:
    dev = traits(adapter).device
    return torch.device(dev) if dev is not None else None


def _first_mesh(adapter: Any, output: Any) -> Any:
    """The first sample as a ``trimesh.Trimesh``: the adapter's ``to_mesh``, else a mesh the output is or holds."""
    import trimesh

    to_mesh = traits(adapter).to_mesh
    if to_mesh is not None:
        return to_mesh(output)
    if isinstance(output, trimesh.Trimesh):
        return output
    mesh = output.meshes[0] if hasattr(output, "meshes") else output  # TRELLIS.2 / TRELLIS: a list of mesh objects
    to_np = lambda t: t.detach().float().cpu().numpy() if isinstance(t, torch.Tensor) else t
    return trimesh.Trimesh(vertices=to_np(mesh.vertices), faces=to_np(mesh.faces), process=False)


# ------------------------------------------------------------------------------------------
# one job
def _photo(adapter: Any, image: Any) -> torch.Tensor:
    """A held-out photo as the adapter prepares its views (``prepare``), else at its own size: ``float [3, H, W]``."""
    prepare = getattr(adapter, "prepare", None)
    return image_tensor(prepare([load_image(image)])[0] if callable(prepare) and not torch.is_tensor(image) else image)


def _camera(obj: EvalObject, view: str, names: Any) -> Camera | None:
    """A view's camera: the data set's, else the view's name read as a camera of the adapter (``front``), else None."""
    try:
        return parse_camera(obj.cameras.get(view, view), names)
    except ViewError:
        return None


def _mesh_and_view_scores(adapter: Any, obj: EvalObject, job: Job, output: Any, meshes: _MeshPool
                          ) -> tuple[Future[dict[str, float]] | None, dict[str, float]]:
    """Scores of one object's result without voxels: against its true mesh (in ``meshes``' workers: a future),
    and renders against its photos (here, with the adapter's ``render``)."""
    info = traits(adapter)
    scores: dict[str, float] = {}
    truth = obj.mesh
    if truth is None and obj.shape is not None:  # another model on the proxy's objects: compare meshes
        truth = mesh_from_voxels(obj.shape.occupancy, obj.shape.colors)
    mesh = meshes.submit(_first_mesh(adapter, output), truth) if truth is not None else None
    cameras = {v: c for v in obj.view_names if (c := _camera(obj, v, info.named_cameras)) is not None}
    if info.render is not None and cameras and obj.shape is None:
        given = {v: _photo(adapter, obj.images[v]) for v in job.views if v in cameras}
        held = {v: _photo(adapter, obj.images[v]) for v in obj.view_names if v not in job.views and v in cameras}
        scores.update(view_scores(info.render, output, given, cameras, "given"))
        scores.update(view_scores(info.render, output, held, cameras, "heldout"))
    return mesh, scores


class _MeshPool:
    """Mesh scores (:func:`~trellis_mv.eval.score_mesh`: trimesh sampling and scipy KD-trees, CPU work) in
    ``workers`` worker processes, so that they run beside the sampling of the next chunk; ``0``: here, at once.
    Workers start on the first mesh (a voxel evaluation starts none) and are spawned, never forked (CUDA)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def submit(self, pred: Any, true: Any) -> Future[dict[str, float]]:
        if self.workers == 0:
            done: Future[dict[str, float]] = Future()
            done.set_result(score_mesh(pred, true))
            return done
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self._pool.submit(score_mesh, pred, true)

    def close(self, cancel: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=cancel)
            self._pool = None


def _mesh_worker_count(value: int | None) -> int:
    """Worker processes for mesh scores: ``value``, else none. Measured on one H200 with 16 cores, 8 workers
    ran a folder evaluation of 4 chunks at 0.99x the main process's rate (``benchmarks/results/eval_mesh_workers_H200.md``):
    the pool is there to be asked for, not the default."""
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"--mesh-workers {value!r}: must be an integer >= 0 (0 scores meshes in the main process)")
        return value
    return 0


class _Objects:
    """The objects of the coming chunks, their views as images and their :class:`VoxelTruth` (on the model's
    device), each made once: a data set with ``load_many`` renders a chunk's objects together on the device."""

    def __init__(self, ds: Dataset, device: torch.device | None) -> None:
        self.ds, self.device = ds, device or torch.device("cpu")
        self._objects: dict[str, EvalObject] = {}
        self._truths: dict[str, VoxelTruth] = {}
        self._images: dict[tuple[str, str], Any] = {}

    def load(self, object_ids: Sequence[str]) -> list[EvalObject]:
        new = [o for o in dict.fromkeys(object_ids) if o not in self._objects]
        if new:
            many = getattr(self.ds, "load_many", None)
            loaded = many(new, self.device) if many is not None else [self.ds.load(o) for o in new]
            self._objects.update(zip(new, loaded))
            shapes = [obj for obj in loaded if obj.shape is not None]
            if shapes:
                truths = VoxelTruth.many([obj.shape for obj in shapes], self.device)  # type: ignore[misc]
                self._truths.update((obj.object_id, t) for obj, t in zip(shapes, truths))
        return [self._objects[o] for o in object_ids]

    def truth(self, obj: EvalObject) -> VoxelTruth:
        return self._truths[obj.object_id]

    def image(self, obj: EvalObject, view: str) -> Any:
        """A view as a user's image would be (a PIL image for a rendered tensor), converted once per object."""
        key = (obj.object_id, view)
        if key not in self._images:
            self._images[key] = _as_image(obj.images[view])
        return self._images[key]

    def keep(self, object_ids: set[str]) -> None:
        """Forget the objects no later chunk needs."""
        for oid in [o for o in self._objects if o not in object_ids]:
            del self._objects[oid]
            self._truths.pop(oid, None)
        self._images = {k: v for k, v in self._images.items() if k[0] in object_ids}


def _run_chunk(adapter: Any, objects: _Objects, chunk: Sequence[Job], params: Mapping[str, Any] | None,
               max_batch: int | None, group: Any = None, meshes: _MeshPool | None = None) -> list[_Pending]:
    """Generate and score jobs that share (aggregator, number of views): one record each, whose mesh scores
    may still be computing in ``meshes``' workers (:meth:`_Pending.record` waits for them)."""
    info = traits(adapter)
    objs = objects.load([job.object_id for job in chunk])
    cameras = [[_camera(obj, v, info.named_cameras) for v in job.views] for obj, job in zip(objs, chunk)]
    voxel = info.to_voxels is not None and all(obj.shape is not None for obj in objs)
    gen = _generate(adapter, [[objects.image(obj, v) for v in job.views] for obj, job in zip(objs, chunk)],
                    chunk[0].aggregator, [job.seed for job in chunk], params=params, max_batch=max_batch,
                    cameras=[c if any(x is not None for x in c) else None for c in cameras], group=group,
                    together=voxel)
    if voxel:
        if isinstance(gen.output, list):
            occ, col = (torch.cat(parts) for parts in zip(*(info.to_voxels(o) for o in gen.output)))
        else:
            occ, col = info.to_voxels(gen.output)
        batch = score_voxels_batch(occ, col, [objects.truth(obj) for obj in objs], cameras)
        names = list(batch)
        table = torch.stack([batch[k].double() for k in names], 1).cpu().tolist()  # one copy for the whole chunk
        per_job: list[tuple[Future[dict[str, float]] | None, dict[str, float]]] = [
            (None, dict(zip(names, row))) for row in table]
    else:
        outputs = gen.output if isinstance(gen.output, list) else [gen.output]
        pool = meshes or _MeshPool(0)
        per_job = [_mesh_and_view_scores(adapter, obj, job, out, pool) for obj, job, out in zip(objs, chunk, outputs)]
    records = []
    for job, (mesh, scores) in zip(chunk, per_job):
        records.append(_Pending({
            "key": job.key, "object": job.object_id, "aggregator": job.aggregator, "views": list(job.views),
            "seed_index": job.seed_index, "seed": job.seed, "metrics": {},
            "cost": {"model_forwards": gen.model_forwards, "latent_rows": gen.latent_rows},
            "timing": {"seconds": round(gen.seconds, 6), "batch": len(chunk),
                       **({"peak_memory_mib": round(gen.peak_memory_mib, 1)} if gen.peak_memory_mib is not None else {})},
        }, mesh, scores))
    return records


@dataclass
class _Pending:
    """A job's record, its mesh scores perhaps still computing elsewhere, and its other scores."""

    fields: dict[str, Any]
    mesh: Future[dict[str, float]] | None
    scores: dict[str, float]

    @property
    def key(self) -> str:
        return str(self.fields["key"])

    def ready(self) -> bool:
        return self.mesh is None or self.mesh.done()

    def record(self) -> dict[str, Any]:
        """The finished record (waits for the mesh scores): every score a float, or None where not finite."""
        try:
            mesh = self.mesh.result() if self.mesh is not None else {}
        except BrokenProcessPool as exc:
            raise TrellisMVError(
                "a mesh-scoring worker process died before it answered. Spawned workers import the script that "
                "called evaluate(): run it under `if __name__ == \"__main__\":` (not from stdin), or pass "
                "mesh_workers=0 (--mesh-workers 0) to score meshes in this process") from exc
        scores = {**mesh, **self.scores}
        metrics = {k: (float(v) if v is not None and math.isfinite(float(v)) else None) for k, v in scores.items()}
        return {**self.fields, "metrics": metrics}


def _chunks(todo: Sequence[Job], batch: int) -> list[list[Job]]:
    """The jobs grouped by (aggregator, number of views), in order, cut into chunks of at most ``batch``.

    >>> jobs = [Job(o, a, ("front",), 0) for a in ("x", "y") for o in "abc"]
    >>> [[j.object_id + j.aggregator for j in c] for c in _chunks(jobs, 2)]
    [['ax', 'bx'], ['cx'], ['ay', 'by'], ['cy']]
    """
    groups: dict[tuple[str, int], list[Job]] = {}
    for job in todo:
        groups.setdefault((job.aggregator, len(job.views)), []).append(job)
    return [jobs[i : i + batch] for jobs in groups.values() for i in range(0, len(jobs), batch)]


def _batch_size(device: str, batch: int | None, max_batch: int | None, num_views: int, out: Path) -> int:
    """Objects per sampler run: ``batch``; else the folder's (a resume keeps its chunks); else 256 on a GPU and
    16 on a CPU (an adapter without ``sample_many`` runs them one by one anyway), within ``max_batch`` rows a forward."""
    if batch is not None:
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"--batch {batch!r}: must be an integer >= 1")
        return batch
    config = out / _CONFIG_FILE
    if config.exists():
        old = json.loads(config.read_text()).get("batch")
        if isinstance(old, int) and old >= 1:
            return old
    size = 256 if device.startswith("cuda") else 16
    return max(1, min(size, max_batch // (num_views + 1))) if max_batch else size


# ------------------------------------------------------------------------------------------
# the whole evaluation
def _check_aggregators(aggregators: Sequence[str]) -> list[str]:
    from trellis_mv import resolve
    from trellis_mv.run import parse_aggregator

    if not aggregators:
        raise ValueError("no aggregators: pass --aggregators NAME [NAME ...], e.g. multidiffusion stochastic")
    out = []
    for spec in aggregators:
        name, options = parse_aggregator(spec)
        if name == SINGLE and options:
            raise ValueError(f"--aggregators {spec!r}: the single-view baselines (single:view=i for every given view) "
                             "are always run; drop it")
        mode, stages = _stage_spec(spec)
        for part in [mode, *(stages or {}).values()]:
            resolve(part)  # an unknown name or option fails here, before any model work
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
    batch: int | None = None,
    wrong_view: str | None = None,
    mesh_workers: int | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """Evaluate aggregators on a data set; write results under ``out`` and, on rank 0, the tables.

    :param out: the results folder (created; a restart with the same options resumes it).
    :param dataset: ``"proxy"``, ``"folder:PATH"`` or a :class:`Dataset`.
    :param model: ``"proxy"`` or a TRELLIS.2 hub id / folder; ignored when ``adapter`` is given.
    :param adapter: an already built pipeline adapter (e.g. a TRELLIS.2 pipeline). Its optional
        members decide the scores: ``to_voxels(output)`` (against the proxy's shapes),
        ``to_mesh(output)`` (against a true mesh) and ``render(output, camera, size)`` (at the
        views' cameras, against the photos as its ``prepare`` makes them).
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
    :param batch: objects generated together in one sampler run (jobs that share aggregator and
        number of views; default 256 on a GPU, 16 on a CPU). The results do not depend on it.
    :param wrong_view: replace this view of every object by the next object's (:class:`WrongView`):
        how an aggregator copes with one wrong photo.
    :param mesh_workers: worker processes that compute mesh scores (folder data sets) while the
        next chunk samples (default 0: in this process, which measured faster than a pool so
        far). The results do not depend on it. Workers are spawned: a script that
        calls :func:`evaluate` with them needs the usual ``if __name__ == "__main__":`` guard.
    :param precision: the proxy's networks: ``"fp32"`` (the default) or ``"bf16"`` (autocast,
        several times faster on a GPU; :class:`~trellis_mv.proxy.ProxyAdapter`). Part of the
        configuration: a folder is resumed only at its own precision.
    :returns: ``{"jobs": total, "ran": by this rank, "pending": left, "report": paths or None}``.
    """
    where = where or placement()
    ds = parse_dataset(dataset, first_object=first_object, objects=objects)
    if wrong_view is not None:
        ds = WrongView(ds, wrong_view)
    specs = _check_aggregators(aggregators)
    counts = _check_views(views, ds)
    if seeds < 1:
        raise ValueError(f"--seeds {seeds}: need at least 1 seed")
    if max_jobs is not None and max_jobs < 0:
        raise ValueError(f"--max-jobs {max_jobs}: must be >= 0")
    if device != "auto":
        check_device(device)
    if precision is not None:
        _check_precision(precision, model, adapter)
    model_name = model if adapter is None else traits(adapter).name
    precision = getattr(adapter, "precision", "fp32") if adapter is not None else (precision or "fp32")
    ids = ds.object_ids()
    for oid in ids:  # a broken object is named before any model work
        getattr(ds, "check", lambda _: None)(oid)
    fingerprint = getattr(ds, "fingerprint", None)
    from trellis_mv._outputs import claim_folder, write_lock

    run_device = str(traits(adapter).device) if adapter is not None else _pick_device(device, where)
    workers = _mesh_worker_count(mesh_workers)
    out = claim_folder(out, kind="eval", files=OUTPUT_FILES, inputs=[r for r in [getattr(ds, "root", None)] if r])
    # the chunks decide the float rounding of every result (a batch's forwards are one matrix product), so they
    # are part of the configuration: a resume, any number of ranks, any order give the same chunks
    config = {"model": model_name, "dataset": ds.describe(), "views": counts, "aggregators": specs, "seeds": seeds,
              "params": json.loads(json.dumps(params or {}, default=list)), "max_batch": max_batch,
              "batch": _batch_size(run_device, batch, max_batch, max(counts), out),
              **({"precision": precision} if precision != "fp32" else {}),  # folders of before it read as fp32
              **({"inputs": {oid: fingerprint(oid) for oid in ids}} if fingerprint is not None else {})}
    with write_lock(out) if where.world_size == 1 else contextlib.nullcontext():  # the ranks of one run share it
        return _evaluate(out, ds, config, ids, params=params, adapter=adapter, model=model, device=run_device,
                         where=where, max_jobs=max_jobs, progress=progress, report=report, wait_seconds=wait_seconds,
                         spread_views=spread_views, workers=workers)


def _check_precision(precision: str, model: str, adapter: Any) -> None:
    """Refuse a precision the proxy has not, one for another model, or one beside a built adapter."""
    from trellis_mv.proxy import check_precision

    if adapter is not None:
        raise ValueError("precision is how evaluate loads the model: pass it to the adapter you built instead "
                         "(ProxyAdapter(precision=...)), or leave out the adapter")
    if model != "proxy":
        raise ValueError(f"--precision is the proxy model's option; {model!r} runs in its pipeline's own dtype: "
                         "drop --precision")
    check_precision(precision)


def _evaluate(out: Path, ds: Dataset, config: dict[str, Any], ids: list[str], *,
              params: Mapping[str, Mapping[str, Any]] | None, adapter: Any, model: str, device: str,
              where: Placement, max_jobs: int | None, progress: bool, report: bool, wait_seconds: float | None,
              spread_views: bool, workers: int = 0) -> dict[str, Any]:
    """:func:`evaluate` once its options are checked and ``out`` is claimed."""
    specs, counts, seeds = config["aggregators"], config["views"], config["seeds"]
    max_batch, size = config["max_batch"], config["batch"]
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
    with _views_group(spread_views, where) as group:
        chunks = _chunks(jobs, size)
        mine = chunks if group is not None else shard(chunks, where.rank, where.world_size)
        done = store.done()
        todo = [c for c in mine if any(j.key not in done for j in c)]
        share = sum(len(c) for c in mine)
        left_mine = sum(1 for c in todo for j in c if j.key not in done)
        if progress and where.world_size > 1:
            print(f"rank {where.rank} of {where.world_size} (from {where.source}): {left_mine} of its {share} jobs to run",
                  flush=True)
        ran = 0
        if todo and max_jobs != 0:
            adapter = adapter if adapter is not None else _load_adapter(model, device, config.get("precision"))
            ran = _work(adapter, ds, todo, set(done), store, where, share, len(jobs), params, max_batch, progress, group,
                        max_jobs, workers)
    left = len(pending(jobs, store.done()))
    result: dict[str, Any] = {"jobs": len(jobs), "ran": ran, "pending": left, "report": None}
    if where.rank != 0 or not report or max_jobs is not None:
        return result
    left = _wait_for_all(store, jobs, wait_seconds, progress)
    result["pending"] = left
    if left:
        done = store.done()
        missing = sorted({k % where.world_size for k, c in enumerate(chunks) if any(j.key not in done for j in c)})
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


@contextlib.contextmanager
def _views_group(spread_views: bool, where: Placement) -> Iterator[Any]:
    """The process group a job's views are spread over, or None when jobs are sharded over the ranks.

    A group created here is destroyed on leaving (a gloo group left alive at exit can abort the process)."""
    if not spread_views or where.world_size <= 1:
        yield None
        return
    import torch.distributed as dist

    created = not dist.is_initialized()
    if created:
        if torch.cuda.is_available():
            torch.cuda.set_device(where.local_rank % torch.cuda.device_count())
        from trellis_mv._distributed import rank_timeout

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timedelta(seconds=rank_timeout()))
    try:
        yield dist.group.WORLD
    finally:
        if created:
            dist.destroy_process_group()


def _work(adapter: Any, ds: Dataset, chunks: list[list[Job]], done: set[str], store: ResultStore, where: Placement,
          share: int, total: int, params: Mapping[str, Any] | None, max_batch: int | None, progress: bool,
          group: Any = None, max_jobs: int | None = None, workers: int = 0) -> int:
    """Run whole chunks (a chunk's jobs already done are computed along, for the same rounding, but not written);
    stop after ``max_jobs`` new results. Mesh scores run in ``workers`` processes while the next chunk samples;
    records are written in chunk order as their scores arrive. Returns how many were written."""
    from tqdm.auto import tqdm

    left = sum(1 for c in chunks for j in c if j.key not in done)
    bar = tqdm(total=share, initial=share - left, desc=f"rank {where.rank}", position=where.rank,
               disable=not progress, dynamic_ncols=True, leave=where.rank == 0)
    written = queued = 0
    start, done_at_start, last_peek = time.perf_counter(), store.count(), 0.0
    dev = _device_of(adapter)
    objects = _Objects(ds, dev)
    device_name = (torch.cuda.get_device_name(dev) if dev is not None and dev.type == "cuda"
                   else f"cpu, {torch.get_num_threads()} threads")
    meshes = _MeshPool(workers)
    waiting: deque[_Pending] = deque()
    most_waiting = 2 * max(len(c) for c in chunks)  # then wait for the oldest: at most two chunks' records held

    def write(until_ready: bool) -> None:  # the finished records, in order; all of them unless until_ready
        nonlocal written
        ready = []
        while waiting and (not until_ready or waiting[0].ready() or len(waiting) > most_waiting):
            record = waiting.popleft().record()
            record["finished_at"] = round(time.time(), 3)  # for throughput; not part of any table
            record["device"] = device_name
            ready.append(record)
        if group is None or where.rank == 0:  # views spread over the ranks: every rank holds the same result
            store.append(where.rank, *ready)  # one sync for them all
        written += len(ready)
        bar.update(len(ready))

    failed = True
    try:
        for k, chunk in enumerate(chunks):
            if max_jobs is not None and queued >= max_jobs:
                break
            objects.keep({j.object_id for c in chunks[k:] for j in c})
            for pending_record in _run_chunk(adapter, objects, chunk, params, max_batch, group, meshes):
                if pending_record.key in done or (max_jobs is not None and queued >= max_jobs):
                    continue
                waiting.append(pending_record)
                queued += 1
            write(until_ready=True)
            now = time.perf_counter()
            if where.rank == 0 and where.world_size > 1 and progress and (now - last_peek > 5 or k == len(chunks) - 1):
                last_peek = now
                finished = store.count()
                rate = (finished - done_at_start) / max(now - start, 1e-9)
                eta = (total - finished) / rate if rate > 0 else math.inf
                bar.set_postfix_str(f"all ranks {finished}/{total}, ETA {_hms(eta)}")
        write(until_ready=False)
        failed = False
    finally:
        meshes.close(cancel=failed)
        bar.close()
    return written


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
