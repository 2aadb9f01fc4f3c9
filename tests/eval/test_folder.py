"""The folder layout: the example folder loads, its meshes score against the truth, held-out views are rendered."""

import json

import numpy as np
import pytest
import trimesh

import trellis_mv
from trellis_mv import proxy
from trellis_mv.eval import FolderDataset, evaluate, score_mesh, write_example_folder
from trellis_mv.eval._datasets import given_views


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_example_folder(tmp_path_factory.mktemp("data") / "objects", objects=2, first_object=7)


def test_example_folder_round_trips_views_cameras_and_mesh(folder):
    ds = FolderDataset(folder)
    assert ds.object_ids() == ["proxy-1000000007", "proxy-1000000008"]
    obj = ds.load("proxy-1000000007")
    assert obj.view_names == ["front", "right", "back", "left", "top"]
    assert obj.cameras == {n: trellis_mv.parse_camera(n, proxy.NAMED_VIEWS) for n in obj.view_names}
    shape = proxy.make_shape(1000000007)
    photo = proxy.preprocess(obj.images["back"])
    assert (photo - proxy.input_views(shape.occupancy, shape.colors, ["back"])[0]).abs().max().item() <= 1 / 255 + 1e-6
    truth = proxy.mesh_from_voxels(shape.occupancy, shape.colors)
    assert np.allclose(sorted(obj.mesh.bounds.ravel()), sorted(truth.bounds.ravel()))
    assert given_views(obj.view_names, 4) == ("front", "right", "back", "left")


def test_images_without_cameras_are_taken_in_name_order_and_bad_cameras_are_named(tmp_path, folder):
    obj = tmp_path / "d" / "mug"
    obj.mkdir(parents=True)
    for name in ("b.png", "a.png", "c.jpg"):
        (obj / name).write_bytes((folder / "proxy-1000000007" / "front.png").read_bytes())
    ds = FolderDataset(tmp_path / "d")
    assert ds.view_names("mug") == ["a", "b", "c"]
    assert ds.load("mug").mesh is None and given_views(ds.view_names("mug"), 2) == ("a", "b")
    (obj / "cameras.json").write_text(json.dumps({"d.png": {"azimuth": 0}}))
    with pytest.raises(ValueError, match="names images that are not in"):
        ds.view_names("mug")
    (obj / "cameras.json").write_text(json.dumps({"a.png": {"elevation": 0}}))
    with pytest.raises(ValueError, match="expected"):
        ds.view_names("mug")


@pytest.mark.parametrize("seed", [1000000001, 1000000003, 1000000005])
def test_mesh_scores_rank_a_worse_shape_lower(seed):
    a, b = proxy.make_shape(seed), proxy.make_shape(seed + 1)
    truth = proxy.mesh_from_voxels(a.occupancy, a.colors)
    turn = trimesh.transformations.rotation_matrix(2.0, [0, 1, 0])  # not one of the 24 starting rotations
    same = score_mesh(truth.copy().apply_scale(3.0).apply_transform(turn), truth)
    other = score_mesh(proxy.mesh_from_voxels(b.occupancy, b.colors), truth)
    # the alignment can stop in a local optimum (seed 1000000001: voxel IoU 0.31), but a turned,
    # scaled copy always ranks above another object
    assert other["chamfer"] > 2 * same["chamfer"] and other["fscore@0.02"] < same["fscore@0.02"]
    assert other["voxel_iou"] < same["voxel_iou"] and same["fscore@0.05"] > 0.9
    assert score_mesh(trimesh.Trimesh(), truth)["fscore@0.05"] == 0.0


def test_folder_dataset_through_the_harness_has_mesh_and_held_out_view_scores(folder, tmp_path):
    res = evaluate(out=tmp_path / "run", dataset=FolderDataset(folder, objects=1), views=[1], progress=False,
                   params={"sparse_structure": {"steps": 2}, "texture": {"steps": 2}})
    assert res["jobs"] == 2 and res["pending"] == 0
    metrics = {row.split(",")[2] for row in (tmp_path / "run" / "summary.csv").read_text().splitlines()[1:]}
    assert {"chamfer", "fscore@0.02", "fscore@0.05", "voxel_iou", "given_psnr", "heldout_psnr"} <= metrics


def test_every_job_of_a_chunk_of_folder_objects_is_scored(folder, tmp_path):
    # several objects a chunk: each gets its own result and its own scores (none dropped, none shared)
    res = evaluate(out=tmp_path / "run", dataset=FolderDataset(folder), views=[1, 4], progress=False, report=False,
                   params={"sparse_structure": {"steps": 1}, "texture": {"steps": 1}}, batch=2, mesh_workers=0)
    assert res["jobs"] == res["ran"] == 2 * (2 + 4) and res["pending"] == 0
    recs = [json.loads(line) for line in (tmp_path / "run" / "results" / "rank-0000.jsonl").open()]
    by_object = {o: [r["metrics"]["chamfer"] for r in recs if r["object"] == o] for o in {r["object"] for r in recs}}
    assert len(by_object) == 2 and all(len(v) == 6 for v in by_object.values())
    assert set(by_object["proxy-1000000007"]).isdisjoint(by_object["proxy-1000000008"])


def test_a_range_of_folder_objects(folder):
    assert FolderDataset(folder, first_object=1).object_ids() == ["proxy-1000000008"]
    with pytest.raises(ValueError, match="past the 2 objects"):
        FolderDataset(folder, first_object=2)


def test_an_adapter_built_in_python_is_used_as_given(tmp_path, monkeypatch):
    from trellis_mv.eval import _run

    class Tiny(proxy.ProxyPipeline):
        name = "tiny-proxy"

    monkeypatch.setattr(_run, "_load_adapter", lambda *a: pytest.fail("a model was loaded"))
    adapter = Tiny()
    adapter.default_params = {s: {**p, "steps": 2} for s, p in adapter.default_params.items()}
    res = evaluate(adapter=adapter, out=tmp_path / "run", objects=1, views=[1], progress=False, report=False)
    assert res["jobs"] == 2 and res["report"] is None
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"] == "tiny-proxy"
    forwards = [json.loads(line)["cost"]["model_forwards"] for line in (tmp_path / "run" / "results" / "rank-0000.jsonl").open()]
    assert forwards == [2 * 2 * 1, 2 * 2 * 2]  # multidiffusion batches views and negative; single runs them apart


def test_scores_come_from_the_adapters_optional_members_and_its_prepare(folder, tmp_path):
    from PIL import Image

    big = tmp_path / "big"
    for obj in FolderDataset(folder, objects=1).object_ids():
        (big / obj).mkdir(parents=True)
        for f in (folder / obj).iterdir():
            if f.suffix == ".png":  # photos at 128 px: the adapter's prepare makes them 64 px
                Image.open(f).resize((128, 128), Image.Resampling.NEAREST).save(big / obj / f.name)
            else:
                (big / obj / f.name).write_bytes(f.read_bytes())
    rendered = []

    class Members(proxy.ProxyAdapter):
        to_voxels = None  # eval may use only what an adapter offers: here a mesh and renders

        def render(self, output, camera, size):
            rendered.append((tuple(camera), size))
            return super().render(output, camera, size)

    adapter = Members()
    adapter.default_params = {s: {**p, "steps": 2} for s, p in adapter.default_params.items()}
    evaluate(adapter=adapter, out=tmp_path / "run", dataset=FolderDataset(big), views=[1], progress=False, report=False)
    cameras = json.loads((big / "proxy-1000000007" / "cameras.json").read_text())
    assert {c for c, _ in rendered} == {(c["azimuth"], c["elevation"]) for c in cameras.values()}
    assert {s for _, s in rendered} == {64}
    metrics = json.loads((tmp_path / "run" / "results" / "rank-0000.jsonl").open().readline())["metrics"]
    assert {"chamfer", "given_psnr", "heldout_psnr"} <= set(metrics) and "iou" not in metrics


def _metrics(run):
    lines = (run / "results" / "rank-0000.jsonl").read_text().splitlines()
    return [(r["key"], r["metrics"]) for r in map(json.loads, lines)]


def test_mesh_scores_in_worker_processes_give_the_same_records_in_the_same_order(folder, tmp_path, monkeypatch):
    from trellis_mv.eval import _run

    params = {"sparse_structure": {"steps": 2}, "texture": {"steps": 2}}
    common = dict(dataset=FolderDataset(folder), views=[1, 2], progress=False, report=False, params=params, batch=1)
    evaluate(out=tmp_path / "here", mesh_workers=0, **common)
    submitted = []
    real = _run._MeshPool.submit
    monkeypatch.setattr(_run._MeshPool, "submit", lambda self, p, t: submitted.append(self.workers) or real(self, p, t))
    evaluate(out=tmp_path / "pool", mesh_workers=2, **common)
    assert submitted and set(submitted) == {2}  # every mesh went to the pool of two processes
    here, pool = _metrics(tmp_path / "here"), _metrics(tmp_path / "pool")
    assert [k for k, _ in pool] == [k for k, _ in here] and len(here) == 2 * (1 + 2 + 1)
    assert pool == here  # the same numbers, written in the same order
    assert {"chamfer", "voxel_iou", "given_psnr"} <= set(here[0][1])


def test_a_mesh_score_that_fails_in_a_worker_fails_as_it_does_here(folder, tmp_path):
    class NaNMesh(proxy.ProxyPipeline):
        def to_mesh(self, output):
            return trimesh.Trimesh(vertices=np.full((3, 3), np.nan), faces=[[0, 1, 2]], process=False)

    adapter = NaNMesh()
    adapter.default_params = {s: {**p, "steps": 1} for s, p in adapter.default_params.items()}
    errors = []
    for workers in (0, 1):
        with pytest.raises(ValueError) as info:
            evaluate(adapter=adapter, out=tmp_path / f"run{workers}", dataset=FolderDataset(folder, objects=1),
                     views=[1], progress=False, report=False, mesh_workers=workers)
        errors.append(str(info.value))
        assert not (tmp_path / f"run{workers}" / "results" / "rank-0000.jsonl").exists()
    assert errors[0] == errors[1] and "finite" in errors[0]


def test_a_worker_that_cannot_start_is_named_with_the_fix(tmp_path):
    import subprocess
    import sys

    script = (  # no __main__ guard, read from stdin: a spawned worker cannot re-import it
        "import trimesh\n"
        "from trellis_mv.eval._run import _MeshPool, _Pending\n"
        "pool = _MeshPool(1)\n"
        "box = trimesh.creation.box()\n"
        "_Pending({}, pool.submit(box, box), {}).record()\n"
    )
    proc = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "mesh_workers=0" in proc.stderr and '__name__ == "__main__"' in proc.stderr, proc.stderr[-2000:]
