"""One sample's views spread over two gloo processes equal the single-process run, bit for bit.

On the CPU a row's output depends on which rows share its forward (measured on the proxy
models: one forward of 5 rows and two of 3 + 2 differ in the last bits), so the reference
is the single-process run that evaluates the same chunks: the same ``max_batch``, and
without one ``max_batch = ceil((N + 1) / 2) * num_samples``.
"""

from __future__ import annotations

import math
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import trellis_mv
from trellis_mv import cli
from trellis_mv._distributed import partition, rows_for
from trellis_mv.proxy import ProxyPipeline, example_images, preprocess
from trellis_mv.run import parse_aggregator, run_multi_image

STEPS = {"steps": 5}
FULL = {s: dict(STEPS) for s in ("sparse_structure", "texture")}
# some steps outside the guidance interval: those evaluate N rows, the others N + 1
PARTIAL = {s: {**STEPS, "guidance_interval": (0.3, 0.8)} for s in ("sparse_structure", "texture")}
CASES = [  # (aggregator, views, num_samples, max_batch or None, params)
    *((agg, 4, ns, None, FULL) for agg in ("stochastic", "single:view=2", "multidiffusion") for ns in (1, 2)),
    ("multidiffusion", 3, 2, 2, PARTIAL),
    ("multidiffusion", 2, 1, None, FULL),
]


def _reference_max_batch(views: int, num_samples: int, max_batch: int | None, world: int = 2) -> int:
    return max_batch if max_batch is not None else math.ceil((views + 1) / world) * num_samples


def _run(pipe: ProxyPipeline, case: tuple, group: Any, max_batch: int | None, seed: int = 3) -> dict[str, Any]:
    agg, views, ns, _, params = case
    images = [preprocess(p) for p in example_images()[:views]]
    result = run_multi_image(pipe, images, mode=agg, seed=seed, num_samples=ns, params=params, max_batch=max_batch,
                             group=group)
    # the dense stage's raw latent too, through patch_sampler on the sampler itself
    sampler = pipe.samplers["sparse_structure"]
    cond = pipe.get_cond(images)
    noise = torch.randn((ns, 8, 8, 8, 8), generator=torch.Generator().manual_seed(seed))
    name, options = parse_aggregator(agg)
    with trellis_mv.patch_sampler(sampler, name, max_batch=max_batch, group=group, **options):
        dense = sampler.sample(pipe.models.structure, noise, cond, torch.zeros_like(cond[:1]), verbose=False,
                               **{**pipe.default_params["sparse_structure"], **params["sparse_structure"]}).samples
    return {"occupancy": result.output.occupancy, "colors": result.output.colors, "dense": dense,
            "rows": {s: p.batch_rows for s, p in result.patches.items()}}


def _worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        pipe = ProxyPipeline()
        results = [_run(pipe, case, dist.group.WORLD, case[3]) for case in CASES]
        try:  # a rank-dependent seed: every rank must refuse, naming the cause
            _run(pipe, CASES[-1], dist.group.WORLD, None, seed=3 + rank)
            error = ""
        except trellis_mv.PatchError as exc:
            error = str(exc)
        torch.save({"results": results, "error": error}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def distributed(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("dist")
    torch.multiprocessing.spawn(_worker, args=(_free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def reference() -> list[dict[str, Any]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pipe = ProxyPipeline()
        return [_run(pipe, case, None, _reference_max_batch(case[1], case[2], case[3])) for case in CASES]
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{c[0]}-N{c[1]}-samples{c[2]}-mb{c[3]}" for c in CASES])
def test_two_ranks_equal_the_single_process_run_exactly(distributed: list, reference: list, index: int) -> None:
    ref = reference[index]
    for rank in range(2):
        got = distributed[rank]["results"][index]
        for key in ("occupancy", "colors", "dense"):
            assert torch.equal(got[key], ref[key]), f"rank {rank}: {key} differs from the single-process run"


def test_each_rank_evaluates_its_share_of_the_rows(distributed: list, reference: list) -> None:
    for index, case in enumerate(CASES):
        rows = [distributed[r]["results"][index]["rows"] for r in range(2)]
        for stage, total in reference[index]["rows"].items():
            if case[0].startswith("multidiffusion"):  # split: together the ranks did the single run's rows, once
                assert rows[0][stage] + rows[1][stage] == total and min(rows[0][stage], rows[1][stage]) > 0
            else:  # selecting: every rank computes the same step itself
                assert rows[0][stage] == rows[1][stage] == total


def test_ranks_that_start_from_different_noise_all_refuse(distributed: list) -> None:
    for rank in range(2):
        error = distributed[rank]["error"]
        assert "seed" in error and ("different latents" in error or "runs a different job" in error)


def test_the_default_chunking_changes_only_the_last_bits(distributed: list) -> None:
    """Against the default one-forward single-process run: fp32 rounding, not exact (documented)."""
    torch.set_num_threads(1)
    index = CASES.index(next(c for c in CASES if c[0] == "multidiffusion" and c[2] == 2))
    ref = _run(ProxyPipeline(), CASES[index], None, None)
    got = distributed[0]["results"][index]
    assert torch.allclose(got["dense"], ref["dense"], atol=1e-4, rtol=0)


def _tiny_run(group: Any) -> torch.Tensor:
    """A dense toy sampling whose fused prediction depends on which row went where (unequal weights)."""
    from trellis_mv.samplers import FlowEulerGuidanceIntervalSampler

    gen = torch.Generator().manual_seed(0)
    views, noise = torch.randn(3, 4, 8, generator=gen), torch.randn(2, 5, generator=gen)
    sampler = FlowEulerGuidanceIntervalSampler()

    def model(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, **_: Any) -> torch.Tensor:
        return x * cond.mean(dim=(1, 2)).view(-1, 1) - cond[:, 0, :5]

    with trellis_mv.patch_sampler(sampler, "multidiffusion", weights=[0.5, 0.3, 0.2], max_batch=4, group=group):
        return sampler.sample(model, noise, views, torch.zeros(1, 4, 8), steps=4, guidance_strength=3.0,
                              verbose=False).samples


def _worker3(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=3)
    try:
        torch.save(_tiny_run(dist.group.WORLD), Path(out) / f"tiny{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_three_ranks_one_idle_route_every_row_to_its_view(tmp_path: Path) -> None:
    """4 rows in chunks of 2 over 3 ranks: rank 0 evaluates nothing and learns the rows from the others."""
    torch.multiprocessing.spawn(_worker3, args=(_free_port(), str(tmp_path)), nprocs=3, join=True)
    ref = _tiny_run(None)
    for rank in range(3):
        assert torch.equal(torch.load(tmp_path / f"tiny{rank}.pt"), ref), f"rank {rank}"


@given(rows=st.integers(1, 40), world=st.integers(1, 9), per_call=st.one_of(st.none(), st.integers(1, 12)))
def test_partition_routes_every_row_once_in_order(rows: int, world: int, per_call: int | None) -> None:
    plan = partition(rows, world, per_call)
    assert len(plan) == world
    distinct = sorted({chunk for chunks in plan for chunk in chunks})
    flat = [i for start, stop in distinct for i in range(start, stop)]
    assert flat == list(range(rows))  # every row in exactly one chunk, chunks in order
    size = per_call or math.ceil(rows / world)
    assert all(stop - start <= size for start, stop in distinct)
    if len(distinct) == 1:  # one chunk: everyone computes it
        assert all(chunks == distinct for chunks in plan)
    else:  # each chunk on one rank, ranks take consecutive chunks, loads differ by at most one chunk
        assert [c for chunks in plan for c in chunks] == distinct
        loads = [len(chunks) for chunks in plan]
        assert max(loads) - min(loads) <= 1
        assert plan[-1] and plan[-1][-1][1] == rows  # the last row (the negative) on the last rank


def test_group_without_torch_distributed_is_refused_before_any_model_work() -> None:
    with pytest.raises(trellis_mv.PatchError, match="init_process_group"):
        rows_for(object())


def test_torchrun_cli_writes_once_and_matches_the_single_process_command(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    images = [str(p) for p in example_images()]
    common = ["generate", "--images", *images, "--steps", "3", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    spread = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
         "-m", "trellis_mv", *common, "--out", str(tmp_path / "spread")],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert spread.returncode == 0, spread.stderr[-2000:]
    assert spread.stdout.count("wrote ") == 1  # rank 0 alone reports
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli.main([*common, "--max-batch", "3", "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "spread"]  # nothing left beside the outputs
    listing = sorted(p.name for p in (tmp_path / "spread").iterdir())
    assert listing == [".trellis-mv.json", "comparison.png", "mesh.glb", "summary.json"]
    assert (tmp_path / "spread" / "mesh.glb").read_bytes() == (tmp_path / "one" / "mesh.glb").read_bytes()
