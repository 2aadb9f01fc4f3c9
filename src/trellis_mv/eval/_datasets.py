"""What is evaluated: the proxy's procedural objects, or a folder of real objects.

The folder layout (one sub-folder per object, sorted by name)::

    DATASET/
      chair-01/
        front.png  right.png  back.png  left.png  top.png   # the views (PNG/JPEG; RGBA is composited on black)
        cameras.json    # optional: {"front.png": {"azimuth": 0, "elevation": 0}, ...} (degrees)
        mesh.glb        # optional ground truth: mesh.glb, mesh.obj or mesh.ply (one of mesh or cameras is needed)
      chair-02/
        ...

The views of an object are its images in ``cameras.json`` order when it lists them, else
sorted by file name. For ``N`` given views, the standard set (:data:`VIEW_SETS`) is used
when the object has views named so (``front.png``, ...), else its first ``N`` views. Views
not given are held out: where the model can render, its result is compared at their
cameras with the held-out photos (no ground-truth mesh needed).

>>> import tempfile
>>> root = write_example_folder(tempfile.mkdtemp() + "/objects", objects=2)
>>> ds = FolderDataset(root)
>>> ds.object_ids()
['proxy-1000000000', 'proxy-1000000001']
>>> obj = ds.load("proxy-1000000000")
>>> obj.view_names, obj.cameras["top"], obj.mesh is not None
(['front', 'right', 'back', 'left', 'top'], (0.0, 90.0), True)
>>> given_views(ds.view_names("proxy-1000000001"), 4)
('front', 'right', 'back', 'left')
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from trellis_mv import parse_camera, proxy
from trellis_mv.voxels import mesh_from_voxels

__all__ = [
    "VIEW_SETS",
    "Dataset",
    "EvalObject",
    "FolderDataset",
    "ProxyDataset",
    "WrongView",
    "given_views",
    "parse_dataset",
    "write_example_folder",
]

#: The standard given views for N = 1, 2 and 4.
VIEW_SETS: dict[int, list[str]] = dict(proxy.VIEW_SETS)
_IMAGES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_MESHES = ("mesh.glb", "mesh.obj", "mesh.ply")


@dataclass
class EvalObject:
    """One object: its views (name → image), cameras (name → (azimuth, elevation)) and ground truth if known."""

    object_id: str
    images: dict[str, Any]
    cameras: dict[str, tuple[float, float]] = field(default_factory=dict)
    shape: proxy.Shape | None = None
    mesh: Any = None

    @property
    def view_names(self) -> list[str]:
        return list(self.images)


class Dataset(Protocol):
    """What the harness needs from a data set."""

    def describe(self) -> str:
        """A string that identifies the data set (stored with the results, compared on restart)."""
        ...

    def object_ids(self) -> list[str]:
        """The objects, in a fixed order."""
        ...

    def load(self, object_id: str) -> EvalObject:
        """One object's views, cameras and ground truth."""
        ...

    def view_names(self, object_id: str) -> list[str]:
        """The names of the object's views, in order, without loading them (checked before any model work)."""
        ...


class ProxyDataset:
    """The proxy's procedural shapes ``HELD_OUT_SEED + first_object + i``, rendered from the four named views.

    >>> ds = ProxyDataset(first_object=5, objects=2)
    >>> ds.object_ids(), ds.load(ds.object_ids()[0]).images["back"].shape
    (['1000000005', '1000000006'], torch.Size([3, 64, 64]))
    """

    def __init__(self, first_object: int = 0, objects: int = 10) -> None:
        if first_object < 0 or objects < 1:
            raise ValueError(f"--first-object must be >= 0 and --objects >= 1; got {first_object} and {objects}")
        self.first_object, self.objects = first_object, objects

    def describe(self) -> str:
        return f"proxy:first_object={self.first_object},objects={self.objects}"

    def object_ids(self) -> list[str]:
        start = proxy.HELD_OUT_SEED + self.first_object
        return [str(start + i) for i in range(self.objects)]

    def load(self, object_id: str) -> EvalObject:
        return self.load_many([object_id])[0]

    def load_many(self, object_ids: list[str], device: torch.device | str = "cpu") -> list[EvalObject]:
        """Several objects at once, their views rendered together on ``device`` (where the model runs)."""
        names = VIEW_SETS[max(VIEW_SETS)]
        shapes = [proxy.make_shape(int(oid)) for oid in object_ids]
        occ = torch.from_numpy(np.stack([s.occupancy for s in shapes])).to(device)
        col = torch.from_numpy(np.stack([s.colors for s in shapes])).to(device)
        n = len(names)
        images = proxy.input_views(occ.repeat_interleave(n, 0), col.repeat_interleave(n, 0), names * len(shapes))
        cameras = {v: proxy.NAMED_VIEWS[v] for v in names}
        return [EvalObject(oid, dict(zip(names, images[k * n : (k + 1) * n])), dict(cameras), shape=shape)
                for k, (oid, shape) in enumerate(zip(object_ids, shapes))]

    def view_names(self, object_id: str) -> list[str]:
        return list(VIEW_SETS[max(VIEW_SETS)])


class FolderDataset:
    """Objects in a folder (layout in this module's docstring); ``first_object`` and ``objects`` pick a range of them."""

    def __init__(self, root: str | os.PathLike[str], first_object: int = 0, objects: int | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset folder {str(self.root)!r} does not exist; pass --dataset folder:PATH of a folder "
                                    "with one sub-folder per object")
        if first_object < 0 or (objects is not None and objects < 1):
            raise ValueError(f"--first-object must be >= 0 and --objects >= 1; got {first_object} and {objects}")
        from trellis_mv._outputs import MARKER_FILE

        ids = sorted(p.name for p in self.root.iterdir()  # never trellis-mv's own output folders
                     if p.is_dir() and not p.name.startswith(".") and not (p / MARKER_FILE).exists())
        if not ids:
            raise ValueError(f"dataset folder {str(self.root)!r} has no object sub-folders; see `trellis-mv eval example`")
        self._ids = ids[first_object : None if objects is None else first_object + objects]
        if not self._ids:
            raise ValueError(f"--first-object {first_object} is past the {len(ids)} objects of {str(self.root)!r}")
        self._range = (first_object, objects)

    def describe(self) -> str:
        first, count = self._range
        return f"folder:{self.root.resolve()}" + (f",first_object={first},objects={count}" if first or count else "")

    def object_ids(self) -> list[str]:
        return list(self._ids)

    def _views(self, folder: Path) -> tuple[list[Path], dict[str, tuple[float, float]]]:
        cams_file = folder / "cameras.json"
        cams: dict[str, tuple[float, float]] = {}
        if cams_file.exists():
            try:
                raw = json.loads(cams_file.read_text())
                for image, cam in raw.items():
                    cams[Path(image).stem] = (float(cam["azimuth"]) % 360, float(cam.get("elevation", 0.0)))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
                raise ValueError(f"{cams_file}: expected {{\"IMAGE\": {{\"azimuth\": DEG, \"elevation\": DEG}}, ...}}; "
                                 f"could not read it ({exc})") from exc
        files: dict[str, Path] = {}
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in _IMAGES:
                if p.stem in files:
                    raise ValueError(f"object folder {str(folder)!r} has two views named {p.stem!r} ({files[p.stem].name}, "
                                     f"{p.name}); keep one of them")
                files[p.stem] = p
        missing = [name for name in cams if name not in files]
        if missing:
            raise ValueError(f"{cams_file} names images that are not in {folder}: {', '.join(missing)}")
        order = [*cams, *sorted(n for n in files if n not in cams)]
        return [files[n] for n in order], cams

    def view_names(self, object_id: str) -> list[str]:
        return [p.stem for p in self._views(self.root / object_id)[0]]

    def fingerprint(self, object_id: str) -> str:
        """A SHA-256 over the names, sizes and contents of the object's files (stored with the results, compared on restart)."""
        digest = hashlib.sha256()
        for path in sorted((self.root / object_id).rglob("*")):
            if path.is_file():
                digest.update(f"{path.relative_to(self.root / object_id)}\0{path.stat().st_size}\0".encode())
                digest.update(hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()

    def check(self, object_id: str) -> None:
        """Refuse, naming the object, views that cannot be told apart, a broken mesh, or nothing to score against."""
        folder = self.root / object_id
        _, cams = self._views(folder)
        if self._mesh(object_id) is None and not cams:
            raise ValueError(f"object {object_id!r} has no ground-truth mesh and no cameras.json, so nothing can be scored; "
                             f"add {' or '.join(_MESHES)} or cameras.json to {str(folder)!r}")

    def _mesh(self, object_id: str) -> Any:
        """The object's ground-truth mesh (checked: it parses, has faces and finite vertices), or None."""
        import numpy as np

        folder = self.root / object_id
        for name in _MESHES:
            if (folder / name).exists():
                import trimesh

                try:
                    mesh = trimesh.load(folder / name, force="mesh", process=False)  # processing drops NaN vertices
                except Exception as exc:  # trimesh raises many types for a broken file
                    raise ValueError(f"object {object_id!r}: {name} cannot be read ({type(exc).__name__}: {exc}); "
                                     "replace or remove it") from exc
                faces = getattr(mesh, "faces", None)
                if faces is None or len(faces) == 0:
                    raise ValueError(f"object {object_id!r}: {name} has no faces; give a triangle mesh or remove it")
                if not np.isfinite(np.asarray(mesh.vertices, dtype=np.float64)).all():  # type: ignore[attr-defined]
                    raise ValueError(f"object {object_id!r}: {name} has vertices that are NaN or infinite; "
                                     "repair the mesh or remove it")
                return mesh.process()  # type: ignore[attr-defined]  # a Trimesh: faces were checked above
        return None

    def load(self, object_id: str) -> EvalObject:
        paths, cams = self._views(self.root / object_id)
        return EvalObject(object_id, {p.stem: p for p in paths}, cams, mesh=self._mesh(object_id))


def given_views(names: Sequence[str], num_views: int) -> tuple[str, ...]:
    """The ``num_views`` views given to the model: the standard set when the object has it, else its first views.

    >>> given_views(["front", "right", "back", "left", "top"], 2), given_views(["a", "b", "c"], 2)
    (('front', 'right'), ('a', 'b'))
    """
    standard = VIEW_SETS.get(num_views, [])
    if standard and all(v in names for v in standard):
        return tuple(standard)
    return tuple(names[:num_views])


class WrongView:
    """A data set whose view ``view`` of every object is the next object's (in the data set's order): one
    wrong photo among right ones, as a careless capture gives; the ground truth stays the object's own.

    >>> ds = WrongView(ProxyDataset(objects=2), "back")
    >>> a, b = (ProxyDataset(objects=2).load(o) for o in ds.object_ids())
    >>> bool((ds.load(a.object_id).images["back"] == b.images["back"]).all()), ds.describe()
    (True, 'proxy:first_object=0,objects=2+wrong_view=back')
    """

    def __init__(self, dataset: Dataset, view: str) -> None:
        self.dataset, self.view = dataset, view

    def describe(self) -> str:
        return f"{self.dataset.describe()}+wrong_view={self.view}"

    def object_ids(self) -> list[str]:
        return self.dataset.object_ids()

    def view_names(self, object_id: str) -> list[str]:
        names = self.dataset.view_names(object_id)
        if self.view not in names:
            raise ValueError(f"--wrong-view {self.view!r}: object {object_id!r} has no such view; its views are "
                             f"{', '.join(names)}")
        return names

    def load(self, object_id: str) -> EvalObject:
        ids = self.object_ids()
        if len(ids) < 2:
            raise ValueError("--wrong-view needs at least 2 objects: each object's view comes from the next one")
        obj = self.dataset.load(object_id)
        other = self.dataset.load(ids[(ids.index(object_id) + 1) % len(ids)])
        return dataclasses.replace(obj, images={**obj.images, self.view: other.images[self.view]})


def parse_dataset(text: str | Dataset, *, first_object: int = 0, objects: int | None = None) -> Dataset:
    """``"proxy"`` or ``"folder:PATH"`` (a data set object passes through).

    >>> parse_dataset("proxy", objects=3).describe()
    'proxy:first_object=0,objects=3'
    """
    if not isinstance(text, str):
        return text
    if text == "proxy":
        return ProxyDataset(first_object, 10 if objects is None else objects)
    kind, sep, path = text.partition(":")
    if kind == "folder" and sep and path:
        return FolderDataset(path, first_object, objects)
    raise ValueError(f"unknown dataset {text!r}; expected 'proxy' or 'folder:PATH'")


def write_example_folder(
    root: str | os.PathLike[str], objects: int = 3, first_object: int = 0,
    views: Sequence[str] = ("front", "right", "back", "left", "top"),
) -> Path:
    """Write proxy shapes in the folder layout: views (PNG), ``cameras.json`` and the true mesh (``mesh.ply``)."""
    from PIL import Image

    root = Path(root)
    for i in range(objects):
        seed = proxy.HELD_OUT_SEED + first_object + i
        shape = proxy.make_shape(seed)
        folder = root / f"proxy-{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        images = proxy.input_views(shape.occupancy, shape.colors, list(views))
        cams = {}
        for name, img in zip(views, images):
            arr = (img.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            Image.fromarray(arr).save(folder / f"{name}.png")
            camera = parse_camera(name, proxy.NAMED_VIEWS)
            assert camera is not None
            cams[f"{name}.png"] = dict(zip(("azimuth", "elevation"), camera))
        (folder / "cameras.json").write_text(json.dumps(cams, indent=1) + "\n")
        mesh_from_voxels(shape.occupancy, shape.colors).export(folder / "mesh.ply")
    return root
