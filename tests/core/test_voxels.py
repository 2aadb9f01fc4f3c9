"""trellis_mv.voxels: renders, visible faces and meshes of voxel grids, on the grid's device, with any camera names."""

from __future__ import annotations

import pytest
import torch

from trellis_mv import voxels
from trellis_mv.proxy import NAMED_VIEWS, make_shape

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def _shape(seed: int = 3, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    s = make_shape(seed)
    return torch.from_numpy(s.occupancy).to(device), torch.from_numpy(s.colors).to(device)


def test_camera_names_are_the_callers():
    occ, col = _shape()
    level, _ = voxels.render(occ, col, ["front", "0,25"], size=32)
    raised, _ = voxels.render(occ, col, ["front"], size=32, names=NAMED_VIEWS)
    assert torch.equal(raised[0], level[1]) and not torch.equal(level[0], level[1])
    with pytest.raises(ValueError, match="every image needs one"):
        voxels.render(occ, col, [None], size=8)


@pytest.mark.parametrize("device", DEVICES)
def test_results_stay_on_the_grids_device_and_agree_with_the_cpu(device):
    occ, col = _shape(device=device)
    img, mask = voxels.render(occ, col, ["front", "az135el40"], size=24)
    vis = voxels.visible_faces(occ, ["top"])
    assert img.device.type == mask.device.type == vis.device.type == device
    cpu_img, _ = voxels.render(occ.cpu(), col.cpu(), ["front", "az135el40"], size=24)
    assert torch.allclose(img.cpu(), cpu_img, atol=1e-5)


def test_the_mesh_is_the_exposed_faces_with_their_colours():
    occ, col = _shape(5)
    mesh = voxels.mesh_from_voxels(occ, col)
    padded = torch.nn.functional.pad(occ, (1, 1, 1, 1, 1, 1))
    exposed = sum(int((occ & ~torch.roll(padded, -s, a)[1:17, 1:17, 1:17]).sum()) for a, s in voxels.FACES)
    assert len(mesh.faces) == 2 * exposed and len(mesh.vertices) == 4 * exposed
    assert mesh.bounds.min() >= -1 and mesh.bounds.max() <= 1
    colours = {tuple(c) for c in (col[occ] * 255).round().to(torch.uint8).tolist()}
    assert {tuple(c[:3]) for c in mesh.visual.vertex_colors.tolist()} == colours
    assert len(voxels.mesh_from_voxels(torch.zeros(4, 4, 4, dtype=torch.bool), torch.zeros(4, 4, 4, 3)).faces) == 0
    with pytest.raises(ValueError, match="takes one grid"):
        voxels.mesh_from_voxels(occ[None].repeat(2, 1, 1, 1), col[None].repeat(2, 1, 1, 1, 1))


def test_the_device_traversal_equals_the_compacting_one() -> None:
    """The fixed-step traversal a GPU runs (no host syncs) hits what the CPU's compacting one hits, batched too."""
    import numpy as np

    from trellis_mv.proxy import make_shape
    from trellis_mv.voxels import trace

    occ = torch.from_numpy(np.stack([make_shape(k).occupancy for k in range(4)]))
    occ[3] = False  # an empty shape: no ray hits
    cams = ["front", "90,20", "200,-10", "top"]
    fixed, compact = trace(occ, cams, 48, compact=False), trace(occ, cams, 48, compact=True)
    assert torch.equal(fixed.hit, compact.hit) and not fixed.hit[3].any() and fixed.hit[:3].any()
    assert torch.equal(fixed.voxel[fixed.hit], compact.voxel[compact.hit])
    assert torch.equal(fixed.face[fixed.hit], compact.face[compact.hit])
