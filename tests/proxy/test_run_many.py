"""Several objects in one sampler run (trellis_mv.run.run_many) give, per object, what separate runs give."""

from __future__ import annotations

import pytest
import torch

import trellis_mv
from trellis_mv.run import run_many

PARAMS = {"sparse_structure": {"steps": 4}, "texture": {"steps": 4}}


@pytest.fixture(scope="module")
def adapter() -> trellis_mv.Adapter:
    torch.set_num_threads(1)
    return trellis_mv.load_adapter("proxy")


@pytest.mark.parametrize("mode", ["multidiffusion", "stochastic", "single:view=0"])
def test_each_object_equals_its_own_run(adapter: trellis_mv.Adapter, mode: str) -> None:
    images = [path for path, _ in adapter.examples()]
    sets = [images[:2], images[3:], images[1:4]]  # 2, 1 and 3 views: padded to 3
    cameras = [[p.stem for p in s] for s in sets]
    seeds = [7, 11, 7]
    batch = run_many(adapter, sets, seeds=seeds, mode=mode, params=PARAMS, cameras=cameras)
    for b, (views, seed) in enumerate(zip(sets, seeds)):
        alone = trellis_mv.run_multi_image(adapter, views, seed=seed, mode=mode, params=PARAMS, cameras=cameras[b]).output
        assert torch.equal(batch.output.occupancy[b].cpu(), alone.occupancy[0])
        torch.testing.assert_close(batch.output.colors[b].cpu(), alone.colors[0], atol=1e-5, rtol=0)
    # one sampler run per stage for all three objects: as many forwards as one object's run
    assert batch.cost()["stages"]["sparse_structure"]["sampling_runs"] == 1


def test_bad_batches_are_refused_before_model_work(adapter: trellis_mv.Adapter) -> None:
    images = [path for path, _ in adapter.examples()]
    with pytest.raises(trellis_mv.ParameterError, match="seeds has 1 entries but there are 2 objects"):
        run_many(adapter, [images[:1], images[1:2]], seeds=[1])
    with pytest.raises(trellis_mv.ImageError, match="does not exist"):
        run_many(adapter, [images[:1], ["missing.png"]], seeds=[1, 2])
    with pytest.raises(trellis_mv.ParameterError, match="has no sample_many"):
        run_many(object.__new__(type("NoBatch", (), {"samplers": {}, "name": "nobatch"})), [images[:1]], seeds=[1])
