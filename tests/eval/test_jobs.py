"""Jobs, seeds and shards: nothing depends on the number of processes; torn result lines are re-run."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trellis_mv.eval._jobs import Job, ResultStore, build_jobs, derive_seed, pending, placement, shard


def test_single_view_baselines_are_shared_by_every_view_set_that_contains_the_view():
    jobs = build_jobs(["o1"], [("front",), ("front", "right")], ["multidiffusion"], seeds=2)
    singles = [j for j in jobs if j.aggregator == "single"]
    assert sorted({j.views for j in singles}) == [("front",), ("right",)]
    assert len(jobs) == 2 * (2 + 2)  # per seed: multidiffusion on each set, single on each view
    assert len({j.key for j in jobs}) == len(jobs)


def test_seed_depends_on_object_and_seed_index_only():
    a = Job("o1", "multidiffusion", ("front",), 1)
    b = Job("o1", "stochastic", ("front", "right"), 1)
    assert a.seed == b.seed == derive_seed("o1", 1)
    assert derive_seed("o1", 0) != derive_seed("o1", 1) != derive_seed("o2", 1)


@given(st.integers(1, 40), st.integers(1, 9))
def test_shards_partition_the_job_list(n, world):
    jobs = build_jobs([f"o{i}" for i in range(n)], [("front",)], ["multidiffusion"], seeds=1)
    parts = [shard(jobs, r, world) for r in range(world)]
    flat = [j for p in parts for j in p]
    assert sorted(flat) == sorted(jobs) and len(flat) == len(set(flat))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_placement_prefers_torchrun_then_slurm_and_rejects_nonsense():
    assert placement({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "SLURM_PROCID": "5", "SLURM_NTASKS": "8"}).rank == 1
    assert placement({"SLURM_PROCID": "5", "SLURM_NTASKS": "8"}).world_size == 8
    assert placement({}).world_size == 1
    with pytest.raises(ValueError, match="RANK=2 is not in"):
        placement({"RANK": "2", "WORLD_SIZE": "2"})


def test_a_torn_last_line_is_ignored_and_the_next_record_starts_a_new_line(tmp_path):
    store = ResultStore(tmp_path)
    store.append(0, {"key": "a", "x": 1})
    with open(store.path(0), "a") as f:
        f.write('{"key": "b", "x"')  # killed mid-write
    assert list(store.done()) == ["a"]
    store.append(0, {"key": "b", "x": 2}, {"key": "c", "x": 3})  # a chunk's records, one sync
    assert {k: v["x"] for k, v in store.done().items()} == {"a": 1, "b": 2, "c": 3}
    assert len(store.path(0).read_text().splitlines()) == 4  # a, the torn line, b, c
    assert pending([Job("a", "m", ("v",), 0)], {"a|m|v|0": {}}) == []
    assert all(json.loads(line)["done"] for line in store.path(0).read_text().splitlines() if line.endswith("}"))


def test_archived_rank_files_are_read_with_the_written_ones(tmp_path):
    import gzip

    from trellis_mv.eval import read_results

    store = ResultStore(tmp_path)
    store.append(0, {"key": "a", "x": 1})
    store.append(1, {"key": "b", "x": 2})
    archived = store.path(0).with_name("rank-0000.jsonl.gz")
    archived.write_bytes(gzip.compress(store.path(0).read_bytes()))
    store.path(0).unlink()  # a committed folder keeps its results gzipped
    assert {r["key"]: r["x"] for r in read_results(tmp_path)} == {"a": 1, "b": 2}
    assert store.count() == 2
    store.append(0, {"key": "c", "x": 3})  # resuming writes a plain file beside the archive
    assert sorted(store.done()) == ["a", "b", "c"] and store.count() == 3
