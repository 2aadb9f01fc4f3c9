"""The job list, its deterministic share per rank, seeds, and the per-rank result files.

A job is one generation: (object, aggregator, given views, seed index). Its key is a string;
its seed is a hash of (object id, seed index), so every aggregator and view count of one
object and seed index starts from the same noise (a paired design) and nothing depends on
the number of processes or the order of work.

>>> derive_seed("1000000007", 0) == derive_seed("1000000007", 0) != derive_seed("1000000007", 1)
True
>>> jobs = [Job(o, "multidiffusion", ("front",), 0) for o in "abc"]
>>> [j.object_id for j in shard(jobs, rank=1, world_size=2)]
['b']
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["Job", "Placement", "ResultStore", "derive_seed", "placement", "shard"]

#: The baseline run for each given view: the model conditioned on that view alone.
SINGLE = "single"


@dataclass(frozen=True, order=True)
class Job:
    """One generation: ``aggregator`` (a spec such as ``"stochastic:order=random"``) on ``views`` of one object."""

    object_id: str
    aggregator: str
    views: tuple[str, ...]
    seed_index: int

    @property
    def key(self) -> str:
        """A unique, readable key: ``object|aggregator|view+view|seed``."""
        return f"{self.object_id}|{self.aggregator}|{'+'.join(self.views)}|{self.seed_index}"

    @property
    def seed(self) -> int:
        return derive_seed(self.object_id, self.seed_index)


def derive_seed(object_id: str, seed_index: int) -> int:
    """The sampling seed of (object, seed index): the first 31 bits of a SHA-256 of both."""
    digest = hashlib.sha256(f"{object_id}\x00{seed_index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def build_jobs(
    object_ids: Sequence[str], view_sets: Sequence[Sequence[str]], aggregators: Sequence[str], seeds: int
) -> list[Job]:
    """Every job of an evaluation, deduplicated and sorted (object order kept, then aggregator, views, seed).

    For each object and each view set: every aggregator on the whole set, and the
    single-view baseline on each view of the set (one job per view, shared by every view
    set that contains it).
    """
    order = {o: i for i, o in enumerate(object_ids)}
    jobs: set[Job] = set()
    for obj in object_ids:
        for views in view_sets:
            for s in range(seeds):
                jobs.update(Job(obj, agg, tuple(views), s) for agg in aggregators)
                jobs.update(Job(obj, SINGLE, (v,), s) for v in views)
    return sorted(jobs, key=lambda j: (order[j.object_id], j.aggregator, len(j.views), j.views, j.seed_index))


def shard(jobs: Sequence[T], rank: int, world_size: int) -> list[T]:
    """The share of ``rank``: every ``world_size``-th item (job, or chunk of jobs) of the sorted list, from ``rank``."""
    return list(jobs[rank::world_size])


@dataclass(frozen=True)
class Placement:
    """Where this process stands: its rank, the number of processes, its GPU index on the node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    source: str = "one process"


def placement(env: dict[str, str] | None = None) -> Placement:
    """Rank, world size and local rank from torchrun's variables, else SLURM's, else a single process.

    >>> placement({"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"})
    Placement(rank=3, world_size=8, local_rank=1, source='SLURM_PROCID/SLURM_NTASKS')
    """
    env = dict(os.environ if env is None else env)
    for rank, world, local in (("RANK", "WORLD_SIZE", "LOCAL_RANK"), ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")):
        if rank in env and world in env:
            p = Placement(int(env[rank]), int(env[world]), int(env.get(local, "0")), f"{rank}/{world}")
            if not 0 <= p.rank < p.world_size:
                raise ValueError(f"{rank}={p.rank} is not in [0, {world}={p.world_size}); check the launcher's variables")
            return p
    return Placement()


def read_results(out: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The finished jobs' records of an evaluation folder (``trellis-mv eval --out``), one per job.

    Archived rank files (``results/rank-*.jsonl.gz``, as committed result folders keep them)
    are read as well as written ones.

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> ResultStore(d).append(0, {"key": "a", "iou": 0.5})
    >>> [r["iou"] for r in read_results(d)]
    [0.5]
    """
    return list(ResultStore(out).done().values())


class ResultStore:
    """Per-rank JSON-lines files under ``DIR/results``: one line per finished job, written whole.

    A line that a killed process left unfinished is ignored when read, so a restart runs
    that job again. Reading merges every rank's file, whatever the number of ranks that wrote them.
    """

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.dir = Path(out) / "results"

    def path(self, rank: int) -> Path:
        return self.dir / f"rank-{rank:04d}.jsonl"

    def files(self) -> list[Path]:
        """The rank files, written (``rank-*.jsonl``) and archived (``rank-*.jsonl.gz``, read only), by name."""
        return sorted([*self.dir.glob("rank-*.jsonl"), *self.dir.glob("rank-*.jsonl.gz")])

    def records(self) -> Iterator[dict[str, Any]]:
        """Every complete record, in a deterministic order (file name, then line)."""
        for file in self.files():
            for line in _read(file).decode().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the tail of a process that was killed while writing
                if isinstance(rec, dict) and rec.get("done") is True and "key" in rec:
                    yield rec

    def done(self) -> dict[str, dict[str, Any]]:
        """Finished jobs by key (the first record of a key wins)."""
        out: dict[str, dict[str, Any]] = {}
        for rec in self.records():
            out.setdefault(rec["key"], rec)
        return out

    def count(self) -> int:
        """Finished lines over all ranks (cheap; for progress)."""
        return sum(_read(f).count(b"\n") for f in self.files())

    def append(self, rank: int, *records: dict[str, Any]) -> None:
        """Write finished jobs, one line each, flushed and synced once before returning (a line is whole or,
        torn by a kill, skipped when read)."""
        if not records:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(rank)
        lines = "".join(json.dumps({**record, "done": True}, sort_keys=True) + "\n" for record in records)
        with open(path, "ab") as f:
            if f.tell() and not _ends_with_newline(path):
                lines = "\n" + lines  # after a torn line: start a fresh one
            f.write(lines.encode())
            f.flush()
            os.fsync(f.fileno())


def _read(file: Path) -> bytes:
    """A rank file's bytes, decompressed when it is an archived ``.jsonl.gz``."""
    data = file.read_bytes()
    return gzip.decompress(data) if file.suffix == ".gz" else data


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def pending(jobs: Iterable[Job], done: dict[str, Any]) -> list[Job]:
    """The jobs without a finished record."""
    return [j for j in jobs if j.key not in done]
