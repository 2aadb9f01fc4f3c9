"""One sample, its views spread over the ranks of a ``torch.distributed`` group.

A fusing aggregator asks :meth:`~trellis_mv.Step.predict` for N conditional rows and the
negative row. Here those rows are cut into chunks of equal size (``max_batch`` rows, or
``ceil(rows / world)`` when no cap is given), the chunks are dealt to the ranks in order
(the negative, last, lands on the last busy rank), each rank evaluates its own chunks, and
one ``all_gather`` of equal-sized padded buffers gives every rank every row. Every rank
then runs the same aggregator and guidance on the same numbers, so every rank holds the
same latent after every step; aggregators do not change.

What moves per exchange is one latent's values (``feats`` for sparse latents: the voxels
are the same on every rank) per row, plus 32 bytes per rank that let every rank check
that all started the step from the same latent and the same views.

A selecting step (``step.select``, ``step.sampler_call``: one view) and a one-row request
(the negative alone) are computed by every rank itself: rank 0 computing and broadcasting
would take as long, and move bytes for nothing.

Because a chunk is evaluated as one forward whatever rank holds it, a distributed run is
bitwise the single-process run that evaluates the same chunks: the same ``max_batch``
(and, without one, ``max_batch = ceil((N + 1) / world) * num_samples``).

>>> partition(rows=5, world=2)                   # 4 views and the negative on 2 ranks
[[(0, 3)], [(3, 5)]]
>>> partition(rows=9, world=2, per_call=2)       # max_batch of 2 rows
[[(0, 2), (2, 4)], [(4, 6), (6, 8), (8, 9)]]
>>> partition(rows=1, world=4)                   # one row: every rank computes it
[[(0, 1)], [(0, 1)], [(0, 1)], [(0, 1)]]
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from . import _tensors as T
from ._errors import PatchError

__all__ = [
    "DistributedRows", "LocalRows", "check_same_job", "partition", "process_group_from_env", "rank_timeout", "rows_for",
    "writes_outputs",
]

Forward = Callable[[list[torch.Tensor]], list[Any]]
_SIGNATURE = 4  # float64 values per rank: sum and sum of squares of x_t, coordinate sum, conditioning sum


def partition(rows: int, world: int, per_call: int | None = None) -> list[list[tuple[int, int]]]:
    """Which rows each rank evaluates: per rank, a list of ``(start, stop)`` chunks.

    Chunks hold ``per_call`` consecutive rows (``ceil(rows / world)`` when ``None``), the
    last one possibly fewer; rank ``r`` takes chunks ``[r * C // world, (r + 1) * C // world)``
    of the ``C`` chunks, so ranks get consecutive rows and their loads differ by at most one
    chunk. A single chunk is given to every rank (each computes it; nothing is exchanged).
    """
    if rows < 1 or world < 1:
        raise ValueError(f"partition needs rows >= 1 and world >= 1; got rows={rows}, world={world}")
    size = per_call or -(-rows // world)
    chunks = [(start, min(start + size, rows)) for start in range(0, rows, size)]
    if len(chunks) == 1:
        return [list(chunks) for _ in range(world)]
    c = len(chunks)
    return [chunks[r * c // world : (r + 1) * c // world] for r in range(world)]


class LocalRows:
    """Every row evaluated in this process, ``per_call`` rows a forward (all at once when ``None``)."""

    def evaluate(self, step: Any, conds: list[torch.Tensor], per_call: int | None, forward: Forward) -> list[Any]:
        size = per_call or len(conds)
        outs: list[Any] = []
        for start in range(0, len(conds), size):
            outs.extend(forward(conds[start : start + size]))
        return outs

    def __repr__(self) -> str:
        return "LocalRows()"


class DistributedRows:
    """The rows of each model evaluation spread over the ranks of ``group`` (see the module docs).

    Every rank of the group must run the same sampling with the same latent, views and
    aggregator; each exchange checks the first two and raises :class:`~trellis_mv.PatchError`
    on every rank when they differ.
    """

    def __init__(self, group: Any) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self._cond_key: Any = None
        self._cond_sum: torch.Tensor | None = None

    def evaluate(self, step: Any, conds: list[torch.Tensor], per_call: int | None, forward: Forward) -> list[Any]:
        plan = partition(len(conds), self.world, per_call)
        mine = plan[self.rank]
        outs: list[Any] = []
        for start, stop in mine:
            outs.extend(forward(conds[start:stop]))
        if all(p == plan[0] for p in plan):  # one chunk, computed by every rank
            return outs
        return self._exchange(step, plan, outs)

    # -- the exchange -----------------------------------------------------------------------
    def _signature(self, step: Any, device: torch.device) -> torch.Tensor:
        if self._cond_key is not step.views:  # the views change once per sampling run at most
            self._cond_key, self._cond_sum = step.views, step.cond.double().sum().to(device)
        xd = T.feats(step.x_t).double()
        coords = step.x_t.coords.double().sum() if T.is_sparse(step.x_t) else xd.new_zeros(())
        assert self._cond_sum is not None
        return torch.stack([xd.sum(), (xd * xd).sum(), coords.to(device), self._cond_sum])

    def _agree_dtype(self, local: torch.dtype | None, device: torch.device) -> torch.dtype:
        """The predictions' dtype, learnt from the busy ranks by the idle ones (few rows, many ranks)."""
        codes = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
        mine = torch.tensor([codes.index(local) if local is not None else -1], device=device)
        every = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(every, mine, group=self.group)
        return codes[int(max(int(v) for v in every))]

    def _exchange(self, step: Any, plan: list[list[tuple[int, int]]], outs: list[Any]) -> list[Any]:
        like = T.feats(step.x_t)
        device = like.device
        shape = tuple(like.shape)
        counts = [sum(stop - start for start, stop in chunks) for chunks in plan]
        dtype = T.feats(outs[0]).dtype if outs else None
        if min(counts) == 0:
            dtype = self._agree_dtype(dtype, device)
        assert dtype is not None
        numel = math.prod(shape)
        extra = _SIGNATURE * 8 // dtype.itemsize
        width = max(counts) * numel + extra
        send = torch.zeros(width, dtype=dtype, device=device)
        for k, out in enumerate(outs):
            values = T.feats(out)
            if tuple(values.shape) != shape:
                raise PatchError(f"the model returned values of shape {tuple(values.shape)} for a latent of shape {shape}")
            send[extra + k * numel : extra + (k + 1) * numel] = values.reshape(-1).to(dtype)
        send[:extra] = self._signature(step, device).view(dtype)  # first: aligned for float64
        every = [torch.empty_like(send) for _ in range(self.world)]
        try:
            dist.all_gather(every, send, group=self.group)
        except RuntimeError as exc:  # a rank died or timed out (TRELLIS_MV_RANK_TIMEOUT)
            raise PatchError(f"rank {self.rank}: the exchange with the other ranks at step {step.index} of stage "
                             f"{step.stage!r} failed; a rank may have died (see its log): {str(exc).strip()[:300]}") from exc
        self._check(step, [buf[:extra].view(torch.float64) for buf in every])
        rows: list[Any] = []
        for r, count in enumerate(counts):
            if r == self.rank:
                rows.extend(outs)
                continue
            for k in range(count):
                rows.append(T.with_feats(step.x_t, every[r][extra + k * numel : extra + (k + 1) * numel].view(shape)))
        return rows

    def _check(self, step: Any, signatures: Sequence[torch.Tensor]) -> None:
        values = torch.stack(list(signatures)).cpu()
        differ = [r for r in range(self.world) if not torch.equal(values[r], values[0])]
        if differ:
            what = "latents" if any(not torch.equal(values[r, :3], values[0, :3]) for r in differ) else "views"
            raise PatchError(
                f"ranks {differ} of the group hold different {what} from rank 0 at step {step.index} of stage "
                f"{step.stage!r}; every rank must run the same sampling: seed the noise identically on every rank "
                "(not seed + rank) and pass the same views"
            )

    def __repr__(self) -> str:
        return f"DistributedRows(rank={self.rank}, world={self.world})"


def rows_for(group: Any) -> LocalRows | DistributedRows:
    """How a patch evaluates rows: here (``group=None`` or a group of one) or over ``group``'s ranks."""
    if group is None:
        return LocalRows()
    if not dist.is_available() or not dist.is_initialized():
        raise PatchError(
            "group= was given but torch.distributed is not initialised; call torch.distributed.init_process_group() "
            "first (torchrun sets up its environment), or pass group=None"
        )
    if not isinstance(group, dist.ProcessGroup):
        raise PatchError(
            f"group must be a torch.distributed.ProcessGroup (e.g. torch.distributed.group.WORLD) or None; got {group!r}"
        )
    if dist.get_rank(group) < 0:
        raise PatchError("this process is not a member of the given group; pass a group it belongs to, or None")
    return LocalRows() if dist.get_world_size(group) == 1 else DistributedRows(group)


def rank_timeout() -> float:
    """Seconds a rank waits for the others (``TRELLIS_MV_RANK_TIMEOUT``, default 1800) before it says which is missing."""
    text = os.environ.get("TRELLIS_MV_RANK_TIMEOUT", "1800")
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0:
        raise PatchError(f"TRELLIS_MV_RANK_TIMEOUT={text!r}: expected a positive number of seconds, e.g. 1800")
    return value


_GLOO: dict[Any, Any] = {}


def _gloo(group: Any) -> Any:
    """``group`` itself when it is gloo, else a gloo group of the same ranks (NCCL has no monitored barrier)."""
    if dist.get_backend(group) == "gloo":
        return group
    if group not in _GLOO:
        _GLOO[group] = dist.new_group(dist.get_process_group_ranks(group), backend="gloo",
                                      timeout=timedelta(seconds=rank_timeout()))
    return _GLOO[group]


def check_same_job(group: Any, job: Mapping[str, Any]) -> None:
    """Before sampling: every rank of ``group`` is there and runs the same ``job`` (aggregators, views, steps, ...).

    :raises PatchError: on every rank that can tell, naming the rank that did not come within
        :func:`rank_timeout` seconds, or the rank and the entry of ``job`` that differ from rank 0's.
    """
    if group is None or dist.get_world_size(group) == 1:
        return
    check, seconds = _gloo(group), rank_timeout()
    try:
        dist.monitored_barrier(group=check, timeout=timedelta(seconds=seconds), wait_all_ranks=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        found = re.search(r"Ranks? ([\d, ]+) failed", first)
        who = f"rank(s) {found.group(1).strip()}" if found else "a rank"
        raise PatchError(f"rank {dist.get_rank(group)}: {who} of the group did not reach the start of sampling within "
                         f"{seconds:g} s (TRELLIS_MV_RANK_TIMEOUT); it may have died: see its log ({first})") from exc
    every: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(every, {k: re.sub(r" at 0x[0-9a-fA-F]+", "", repr(v)) for k, v in job.items()}, group=check)
    for rank, theirs in enumerate(every):
        differ = sorted(k for k in set(theirs) | set(every[0]) if theirs.get(k) != every[0].get(k))
        if differ:
            key = differ[0]
            raise PatchError(f"rank {rank} runs a different job from rank 0: {key} is {theirs.get(key)} there and "
                             f"{every[0].get(key)} on rank 0; launch every rank with the same options")


def writes_outputs(group: Any) -> bool:
    """Whether this process writes the run's outputs: always without a group, else rank 0 only."""
    return group is None or dist.get_rank(group) == 0


@contextlib.contextmanager
def process_group_from_env() -> Iterator[Any]:
    """The world group when launched by ``torchrun`` with ``WORLD_SIZE > 1``, else ``None``.

    Initialises ``torch.distributed`` from torchrun's environment (NCCL and the GPU
    ``LOCAL_RANK`` when CUDA is available, gloo otherwise) unless it already is, and
    destroys what it created on exit.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield None
        return
    created = False
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=rank_timeout()))
        created = True
    try:
        yield dist.group.WORLD
    finally:
        if created:
            dist.destroy_process_group()
