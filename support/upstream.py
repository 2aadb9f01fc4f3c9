"""Import TRELLIS.2's (or TRELLIS') Python modules without their CUDA extensions.

``trellis2/__init__.py`` imports the renderers and representations, which need compiled
extensions (``cumesh``, ``flex_gemm``, ``nvdiffrast``, ...). The samplers, the flow models
and the pipeline's stage methods need none of them. :func:`load_trellis2` therefore
registers a bare package object named ``trellis2`` whose ``__path__`` points at the source
tree, so that its submodules import one by one and ``__init__`` never runs; the few modules
the pipeline imports but the flow stages do not use (background removal, image encoder,
mesh representation) are replaced by placeholders *only when they fail to import*.

This is support code for the tests and benchmarks (``support/`` is on pytest's path; the
benchmarks put it on ``sys.path``), not part of the library: a user with a TRELLIS.2
installation imports ``trellis2`` normally. CI points ``TRELLIS2_SRC`` / ``TRELLIS_SRC`` at
unmodified upstream sources so that the integration tests run against the real code.

Sources are found, in this order, from the ``src`` argument, the environment variable
(``TRELLIS2_SRC`` / ``TRELLIS_SRC``: a folder holding the ``trellis2`` / ``trellis``
package folder, or the package folder itself), or an importable installation.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "SourceNotFound",
    "install_easydict_standin",
    "install_flash_attn_shim",
    "install_spconv_standin",
    "load_trellis",
    "load_trellis2",
    "locate_source",
]


class SourceNotFound(ImportError):
    """Neither the environment variable nor an installation points at the package's source."""


def locate_source(package: str, env_var: str, src: str | os.PathLike[str] | None = None) -> Path:
    """The folder of the ``package`` package (the one holding its ``__init__.py``).

    :param package: ``"trellis2"`` or ``"trellis"``.
    :param env_var: environment variable naming a source tree (e.g. ``TRELLIS2_SRC``).
    :param src: explicit source tree; wins over the environment.
    :raises SourceNotFound: with the places that were looked at.
    """
    tried: list[str] = []
    for candidate in (src, os.environ.get(env_var)):
        if not candidate:
            continue
        root = Path(candidate).expanduser()
        for folder in (root / package, root):
            if (folder / "__init__.py").is_file() and folder.name == package:
                return folder.resolve()
        tried.append(f"{root} (no {package}/__init__.py there)")
    if package in sys.modules and getattr(sys.modules[package], "__path__", None):
        return Path(next(iter(sys.modules[package].__path__))).resolve()
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).resolve()
    tried.append(f"no importable {package!r} package")
    raise SourceNotFound(
        f"{package} source not found: set {env_var} to a folder that holds the {package}/ package "
        f"(e.g. an extracted copy of its repository). Looked at: {'; '.join(tried) or env_var + ' (unset)'}"
    )


def _importable(name: str) -> bool:
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def install_easydict_standin() -> None:
    """Register a minimal ``easydict`` (attribute-access dict) if the real one is missing."""
    if _importable("easydict"):
        return

    class EasyDict(dict):  # type: ignore[type-arg]
        """Attribute access over a dict, all the samplers use of ``easydict``."""

        def __getattr__(self, key: str) -> Any:
            try:
                return self[key]
            except KeyError as exc:
                raise AttributeError(key) from exc

        def __setattr__(self, key: str, value: Any) -> None:
            self[key] = value

    module = types.ModuleType("easydict")
    module.EasyDict = EasyDict  # type: ignore[attr-defined]
    sys.modules["easydict"] = module


# -- flash_attn stand-in ------------------------------------------------------------------


def _varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
            max_q: int, max_k: int) -> torch.Tensor:
    """Block-diagonal attention over packed sequences ``[T, H, C]``.

    On CUDA with half precision this is PyTorch's FlashAttention-2 varlen kernel; elsewhere
    one ``scaled_dot_product_attention`` per sequence (exact, slow, for tests).
    """
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        try:
            from torch.nn.attention.varlen import varlen_attn
        except ImportError:  # older torch: fall through to per-sequence SDPA
            varlen_attn = None
        if varlen_attn is not None:
            return varlen_attn(q, k, v, cu_q.int(), cu_k.int(), int(max_q), int(max_k))
    out = torch.empty(q.shape[0], q.shape[1], v.shape[-1], dtype=q.dtype, device=q.device)
    bq, bk = cu_q.tolist(), cu_k.tolist()
    for i in range(len(bq) - 1):
        qi = q[bq[i]:bq[i + 1]].transpose(0, 1)  # [H, Lq, C]
        ki = k[bk[i]:bk[i + 1]].transpose(0, 1)
        vi = v[bk[i]:bk[i + 1]].transpose(0, 1)
        out[bq[i]:bq[i + 1]] = F.scaled_dot_product_attention(qi, ki, vi).transpose(0, 1)
    return out


def _dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``[N, L, H, C]`` attention, flash_attn's dense layout."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def install_flash_attn_shim(force: bool = False) -> bool:
    """Register a ``flash_attn`` module forwarding to PyTorch attention, if none is importable.

    Covers the functions TRELLIS.2's attention modules call: the varlen forms
    (``flash_attn_varlen_qkvpacked_func``, ``..._kvpacked_func``, ``flash_attn_varlen_func``)
    and the dense ones. Softmax scale is the default ``1/sqrt(C)``, as TRELLIS.2 uses.

    :param force: replace a real ``flash_attn`` too (to compare kernels).
    :returns: whether the shim was installed.
    """
    if not force and _importable("flash_attn"):
        return False
    module = types.ModuleType("flash_attn")
    module.__doc__ = "trellis-mv stand-in for flash_attn, forwarding to PyTorch attention."

    def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, *args, **kwargs):
        q, k, v = qkv.unbind(dim=1)
        return _varlen(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen)

    def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                        *args, **kwargs):
        k, v = kv.unbind(dim=1)
        return _varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *args, **kwargs):
        return _varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)

    def flash_attn_qkvpacked_func(qkv, *args, **kwargs):
        q, k, v = qkv.unbind(dim=2)
        return _dense(q, k, v)

    def flash_attn_kvpacked_func(q, kv, *args, **kwargs):
        k, v = kv.unbind(dim=2)
        return _dense(q, k, v)

    def flash_attn_func(q, k, v, *args, **kwargs):
        return _dense(q, k, v)

    for fn in (flash_attn_varlen_qkvpacked_func, flash_attn_varlen_kvpacked_func, flash_attn_varlen_func,
               flash_attn_qkvpacked_func, flash_attn_kvpacked_func, flash_attn_func):
        setattr(module, fn.__name__, fn)
    module.__version__ = "0.0+trellis_mv_shim"  # type: ignore[attr-defined]
    sys.modules["flash_attn"] = module
    return True


def install_spconv_standin() -> bool:
    """Register a feature-carrying ``spconv.pytorch.SparseConvTensor`` if spconv is missing.

    TRELLIS v1's ``SparseTensor`` stores its data in spconv's tensor even when no sparse
    convolution runs (its flow models without IO blocks use none). This stand-in holds
    features and indices only; any convolution still needs the real spconv.
    """
    if _importable("spconv"):
        return False

    class SparseConvTensor:
        """Features, indices and bookkeeping fields, as TRELLIS v1's SparseTensor reads them."""

        def __init__(self, features: torch.Tensor, indices: torch.Tensor, spatial_shape: Any, batch_size: int,
                     grid: Any = None, voxel_num: Any = None, indice_dict: Any = None) -> None:
            self._features = features
            self.indices = indices
            self.spatial_shape = spatial_shape
            self.batch_size = batch_size
            self.grid = grid
            self.voxel_num = voxel_num
            self.indice_dict = {} if indice_dict is None else indice_dict
            self.benchmark = False
            self.benchmark_record: dict[str, Any] = {}
            self.thrust_allocator = None
            self._timer = None
            self.force_algo = None
            self.int8_scale = None

        @property
        def features(self) -> torch.Tensor:
            return self._features

        @features.setter
        def features(self, value: torch.Tensor) -> None:
            self._features = value

    root = types.ModuleType("spconv")
    sub = types.ModuleType("spconv.pytorch")
    sub.SparseConvTensor = SparseConvTensor  # type: ignore[attr-defined]
    root.pytorch = sub  # type: ignore[attr-defined]
    sys.modules["spconv"] = root
    sys.modules["spconv.pytorch"] = sub
    return True


# -- bare packages ----------------------------------------------------------------------


def _bare_package(name: str, folder: Path) -> types.ModuleType:
    existing = sys.modules.get(name)
    if existing is not None:
        paths = [str(Path(p).resolve()) for p in getattr(existing, "__path__", [])]
        if str(folder) in paths:
            return existing
        raise ImportError(
            f"a different {name!r} is already imported (from {paths or existing!r}); "
            f"cannot also load it from {folder}"
        )
    module = types.ModuleType(name)
    module.__path__ = [str(folder)]  # type: ignore[attr-defined]
    module.__file__ = str(folder / "__init__.py")
    module.__package__ = name
    sys.modules[name] = module
    return module


def _placeholder_class(qualname: str, reason: str) -> type:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        raise ImportError(f"{qualname} is unavailable here: {reason}")

    return type(qualname.rsplit(".", 1)[-1], (), {"__init__": __init__, "__doc__": f"Placeholder: {reason}"})


def _placeholder_module(name: str, classes: list[str], reason: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__doc__ = f"trellis-mv placeholder ({reason})"
    for cls in classes:
        setattr(module, cls, _placeholder_class(f"{name}.{cls}", reason))
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent in sys.modules:
        setattr(sys.modules[parent], child, module)
    return module


def _import_or_placeholder(name: str, classes: list[str]) -> bool:
    """Import ``name``; if that fails, register a placeholder. Returns True if real."""
    try:
        importlib.import_module(name)
        return True
    except Exception as exc:  # ImportError, or an extension failing at import time
        sys.modules.pop(name, None)
        _placeholder_module(name, classes, f"{type(exc).__name__}: {exc}")
        return False


def load_trellis2(src: str | os.PathLike[str] | None = None, *, flash_attn_shim: bool = False,
                  pipeline: bool = True) -> types.ModuleType:
    """Make ``trellis2``'s samplers, models and (optionally) pipeline class importable.

    :param src: source tree (else ``TRELLIS2_SRC``, else an installed ``trellis2``).
    :param flash_attn_shim: register :func:`install_flash_attn_shim` when flash_attn is missing
        (sparse attention needs it); also selects SDPA for dense attention unless
        ``ATTN_BACKEND`` is set.
    :param pipeline: also import ``trellis2.pipelines.trellis2_image_to_3d``, with placeholders
        for the background remover, the image encoder and the mesh classes if they cannot load.
    :returns: the ``trellis2`` package object.
    :raises SourceNotFound: when no source is found.
    """
    folder = locate_source("trellis2", "TRELLIS2_SRC", src)
    if flash_attn_shim:
        os.environ.setdefault("ATTN_BACKEND", "sdpa")
        install_flash_attn_shim()
    install_easydict_standin()
    package = sys.modules.get("trellis2")
    if package is None or not hasattr(package, "pipelines"):
        package = _bare_package("trellis2", folder)
    importlib.import_module("trellis2.pipelines.samplers")
    importlib.import_module("trellis2.models.sparse_structure_flow")
    importlib.import_module("trellis2.models.structured_latent_flow")
    if pipeline:
        _import_or_placeholder("trellis2.pipelines.rembg", ["BiRefNet"])
        _import_or_placeholder("trellis2.modules.image_feature_extractor",
                               ["DinoV2FeatureExtractor", "DinoV3FeatureExtractor"])
        representations = importlib.import_module("trellis2.representations")
        try:
            representations.Mesh  # noqa: B018 - triggers the lazy import
        except Exception as exc:
            for cls in ("Mesh", "MeshWithVoxel", "MeshWithPbrMaterial", "Voxel"):
                setattr(representations, cls,
                        _placeholder_class(f"trellis2.representations.{cls}", f"{type(exc).__name__}: {exc}"))
        importlib.import_module("trellis2.pipelines.trellis2_image_to_3d")
    return package


def load_trellis(src: str | os.PathLike[str] | None = None, *, flash_attn_shim: bool = False,
                 pipeline: bool = True) -> types.ModuleType:
    """The same for TRELLIS (v1): ``trellis.pipelines.samplers``, its flow models and pipeline.

    ``trellis/pipelines/__init__.py`` imports every pipeline eagerly (torchvision, rembg), so
    ``trellis.pipelines`` is registered bare as well.
    """
    folder = locate_source("trellis", "TRELLIS_SRC", src)
    if flash_attn_shim:
        os.environ.setdefault("ATTN_BACKEND", "sdpa")
        install_flash_attn_shim()
        install_spconv_standin()
    install_easydict_standin()
    package = sys.modules.get("trellis")
    if package is None or not hasattr(package, "pipelines"):
        package = _bare_package("trellis", folder)
    if "trellis.pipelines" not in sys.modules:
        pipelines = _bare_package("trellis.pipelines", folder / "pipelines")
        package.pipelines = pipelines  # type: ignore[attr-defined]
    importlib.import_module("trellis.pipelines.samplers")
    importlib.import_module("trellis.models.sparse_structure_flow")
    importlib.import_module("trellis.models.structured_latent_flow")
    if pipeline:
        for name, classes in (("torchvision", []), ("rembg", [])):
            if not _importable(name):
                _placeholder_module(name, classes, f"{name} is not installed")
        tv = sys.modules.get("torchvision")
        if tv is not None and not hasattr(tv, "transforms"):
            transforms = _placeholder_module("torchvision.transforms", ["Compose", "Normalize"],
                                             "torchvision is not installed")
            tv.transforms = transforms  # type: ignore[attr-defined]
        importlib.import_module("trellis.pipelines.trellis_image_to_3d")
    return package



# -- TRELLIS.2 at full size with random weights (cost measurements on a GPU) -----------------------

#: (tokens, channels) of DINOv3 ViT-L/16 per input resolution: patches, one class and four register tokens
DINOV3_TOKENS = {512: 1029, 1024: 4101}


def build_trellis2_model(config: str, src: str | os.PathLike[str], device: Any, seed: int,
                         overrides: dict[str, Any] | None = None) -> torch.nn.Module:
    """A TRELLIS.2 flow model from its training config (``configs/gen/CONFIG.json``), bf16, random weights.

    The zero-initialised modulation and output layers get small random values, so outputs
    are not trivially zero; cost does not depend on weight values.
    """
    import json

    args = json.loads((Path(src) / "configs" / "gen" / f"{config}.json").read_text())["models"]["denoiser"]
    args["args"].update(overrides or {})
    name = args["name"].replace("Elastic", "")
    module = "sparse_structure_flow" if name == "SparseStructureFlowModel" else "structured_latent_flow"
    cls = getattr(importlib.import_module(f"trellis2.models.{module}"), name)
    torch.manual_seed(seed)
    with torch.device(device):
        model = cls(**args["args"], dtype="bfloat16")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "adaLN_modulation" in n or "out_layer" in n:
                p.normal_(0, 0.02)
    return model.eval()


class QuantileDecoder(torch.nn.Module):
    """Stand-in for the sparse-structure VAE decoder (hub weights): the top ``keep`` of a latent channel."""

    def __init__(self, keep: float = 0.02, size: int = 32) -> None:
        super().__init__()
        self.keep, self.size = keep, size

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        v = F.interpolate(z[:, :1].float(), size=self.size, mode="trilinear", align_corners=False)
        return v - v.flatten(1).quantile(1 - self.keep, dim=1).view(-1, 1, 1, 1, 1)


class Upsampler(torch.nn.Module):
    """Stand-in for the shape decoder's ``upsample`` in the cascade (it needs sparse convolutions)."""

    low_vram = False

    def upsample(self, slat: Any, upsample_times: int = 4) -> torch.Tensor:
        c = slat.coords
        return torch.cat([c[:, :1], c[:, 1:] * 16 + 8], dim=1)


class ProjectionEncoder:
    """Stand-in for DINOv3: a fixed random projection of a 16x16 thumbnail to ``[N, tokens, 1024]``."""

    def __init__(self, device: Any, seed: int = 123) -> None:
        self.device = torch.device(device)
        self.image_size = 512
        gen = torch.Generator().manual_seed(seed)
        self.proj = {r: (torch.randn(16 * 16 * 3, 1024, generator=gen) / 16).to(self.device) for r in DINOV3_TOKENS}
        self.pos = {r: torch.randn(n, 1024, generator=gen).to(self.device) for r, n in DINOV3_TOKENS.items()}

    def to(self, *args: Any, **kwargs: Any) -> ProjectionEncoder:
        return self

    cpu = cuda = lambda self, *a, **k: self

    def __call__(self, images: list[Any]) -> torch.Tensor:
        import numpy as np

        rows = [torch.from_numpy(np.asarray(im.convert("RGB").resize((16, 16)), dtype=np.float32) / 255).flatten()
                for im in images]
        feats = torch.stack(rows).to(self.device) @ self.proj[self.image_size]
        return (feats[:, None] + self.pos[self.image_size][None]).to(torch.bfloat16)


def random_trellis2_pipeline(src: str | os.PathLike[str], device: Any, *, keep: float = 0.02,
                             steps: int = 6, overrides: dict[str, Any] | None = None) -> Any:
    """A ``Trellis2ImageTo3DPipeline`` of the real model classes at full size with random weights.

    Every pipeline type's flow models are built; the image encoder, the structure decoder and
    the cascade's upsampler are stand-ins (:class:`ProjectionEncoder`, :class:`QuantileDecoder`,
    :class:`Upsampler`), and ``decode_latent`` returns no meshes, so views must be given
    already matted (``preprocess=False``). Sampler parameters are TRELLIS.2's defaults with
    ``steps`` steps.
    """
    import json

    from trellis2.pipelines.samplers import FlowEulerGuidanceIntervalSampler
    from trellis2.pipelines.trellis2_image_to_3d import Trellis2ImageTo3DPipeline

    src = Path(src)
    if (src / "trellis2").is_dir() is False and src.name == "trellis2":
        src = src.parent
    cfg = lambda name: json.loads((src / "configs" / "gen" / f"{name}.json").read_text())
    norm = cfg("slat_flow_imgshape2tex_dit_1_3B_512_bf16")["dataset"]["args"]
    build = lambda name, seed: build_trellis2_model(name, src, device, seed, overrides)
    models = {
        "sparse_structure_flow_model": build("ss_flow_img_dit_1_3B_64_bf16", 1),
        "sparse_structure_decoder": QuantileDecoder(keep),
        "shape_slat_flow_model_512": build("slat_flow_img2shape_dit_1_3B_512_bf16", 2),
        "shape_slat_flow_model_1024": build("slat_flow_img2shape_dit_1_3B_512_bf16_ft1024", 3),
        "tex_slat_flow_model_512": build("slat_flow_imgshape2tex_dit_1_3B_512_bf16", 4),
        "tex_slat_flow_model_1024": build("slat_flow_imgshape2tex_dit_1_3B_512_bf16_ft1024", 5),
        "shape_slat_decoder": Upsampler(),
    }
    params = {"steps": steps, "guidance_interval": [0.6, 1.0]}
    pipe = Trellis2ImageTo3DPipeline(
        models=models,
        sparse_structure_sampler=FlowEulerGuidanceIntervalSampler(sigma_min=1e-5),
        shape_slat_sampler=FlowEulerGuidanceIntervalSampler(sigma_min=1e-5),
        tex_slat_sampler=FlowEulerGuidanceIntervalSampler(sigma_min=1e-5),
        sparse_structure_sampler_params={**params, "guidance_strength": 7.5, "guidance_rescale": 0.7, "rescale_t": 5.0},
        shape_slat_sampler_params={**params, "guidance_strength": 7.5, "guidance_rescale": 0.5, "rescale_t": 3.0},
        tex_slat_sampler_params={**params, "guidance_strength": 1.0, "guidance_rescale": 0.0, "rescale_t": 3.0},
        shape_slat_normalization=norm["shape_slat_normalization"],
        tex_slat_normalization=norm["pbr_slat_normalization"],
        image_cond_model=ProjectionEncoder(device), rembg_model=None, low_vram=False,
    )
    pipe._device = torch.device(device)
    pipe.decode_latent = lambda shape_slat, tex_slat, resolution: []
    return pipe
