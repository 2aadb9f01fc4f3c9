"""``auto_generate``: per object, run several candidate aggregators and keep the result that agrees best with the views.

No ground truth is needed: each candidate's result is rendered from every given view's
camera and compared with that view (:func:`render_agreement`: mean absolute RGB difference
of the render and the image, background included, so a wrong silhouette counts). A
candidate's score is the *median* of its per-view errors, so that one wrong or off-object
photo, which no result can match, does not decide the choice. The candidates include each
view alone (``single:view=i``): where fusing the views goes wrong (views that contradict
each other), a single view's result can win, which is what "never worse than the best
single view" asks for.

This is a function over whole generations, not a per-step aggregator: judging a candidate
needs its finished result (a render to compare with the photos), which no denoising step
has, and candidates differ already in the structure stage. Cost: one generation per
candidate (by default three N-view generations and N one-view ones, about 3 (N + 1) / 2 + N
single-view generations with guidance), plus the renders.

The default scorer renders voxel results (an output with ``occupancy`` and ``colors``, as
:class:`~trellis_mv.proxy.ProxyResult`) with :mod:`trellis_mv.voxels`, against the views as
the pipeline's ``prepare`` gives them; for another pipeline pass ``score=``, a function
``(result, images, cameras) -> per-view errors [N]`` (lower is better).

>>> from trellis_mv.proxy import ProxyPipeline, make_shape, input_views, HELD_OUT_SEED
>>> shape = make_shape(HELD_OUT_SEED)
>>> views = list(input_views(shape.occupancy, shape.colors, ["front", "back"]))
>>> out = auto_generate(ProxyPipeline(), views, ["front", "back"], candidates=["multidiffusion"],
...                     params={"sparse_structure": {"steps": 2}, "texture": {"steps": 2}})
>>> out.choice in out.scores, sorted(out.scores)
(True, ['multidiffusion', 'single:view=0', 'single:view=1'])
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from trellis_mv import Patch, ViewError, parse_camera, run_multi_image
from trellis_mv.run import StageSpec
from trellis_mv.voxels import input_views

__all__ = ["DEFAULT_CANDIDATES", "AutoResult", "auto_generate", "render_agreement"]

#: Candidates tried besides each view alone.
DEFAULT_CANDIDATES: tuple[str, ...] = ("multidiffusion", "visibility", "robust")

Candidate = StageSpec | Mapping[str, StageSpec]


def _cameras(cameras: Sequence[Any], count: int, names: Any = None) -> list[Any]:
    if isinstance(cameras, (str, bytes)) or not isinstance(cameras, Sequence) or len(cameras) != count:
        raise ViewError(f"auto_generate needs one camera per view ({count} views); got cameras={cameras!r}. "
                        "Give e.g. cameras=['front', 'back'] or ['0,25', '180,25']")
    parsed = [parse_camera(c, names) for c in cameras]
    if any(c is None for c in parsed):
        raise ViewError(f"auto_generate renders each result from every view's camera, so every view needs one; "
                        f"views {[i for i, c in enumerate(parsed) if c is None]} have none")
    return parsed


def _open(image: Any) -> Any:
    from PIL import Image

    return Image.open(image) if isinstance(image, (str, os.PathLike)) else image


def _tensor(image: Any) -> torch.Tensor:
    """A view as ``float [3, H, W]``: tensors as they are, images at their own size (RGBA composited on black)."""
    if isinstance(image, torch.Tensor):
        return image
    rgba = torch.from_numpy(np.asarray(_open(image).convert("RGBA"), dtype=np.float32) / 255)
    return (rgba[..., :3] * rgba[..., 3:]).permute(2, 0, 1)


def render_agreement(result: Any, images: Sequence[Any], cameras: Sequence[Any], sample: int = 0, *,
                     names: Mapping[str, Any] | None = None) -> torch.Tensor:
    """Per view, the mean absolute RGB difference between a voxel result rendered from its camera and the view.

    :param result: an output holding ``occupancy [B, R, R, R]`` and ``colors [B, R, R, R, 3]``
        (a :class:`~trellis_mv.proxy.ProxyResult`).
    :param images: the views as the model sees them (``[3, S, S]`` tensors, as the pipeline's
        ``prepare`` gives them), or image files / PIL images, compared at their own size.
    :param names: named cameras (the pipeline's ``named_cameras``; the proxy's ``front`` is raised).
    :returns: ``[N]`` errors in ``[0, 1]`` (0: the render reproduces the view).
    """
    if not (hasattr(result, "occupancy") and hasattr(result, "colors")):
        raise TypeError(f"render_agreement renders voxel results; for a {type(result).__name__} pass "
                        "auto_generate(..., score=your_function(result, images, cameras) -> per-view errors)")
    target = torch.stack([_tensor(im) for im in images]).float()
    imgs = input_views(result.occupancy[sample], result.colors[sample], _cameras(cameras, len(images), names),
                       size=int(target.shape[-1]))
    return (imgs - target.to(imgs.device)).abs().mean((1, 2, 3))


@dataclass
class AutoResult:
    """What :func:`auto_generate` chose and why.

    :ivar result: the chosen candidate's result.
    :ivar choice: its label (``"robust"``, ``"single:view=2"``, ...).
    :ivar scores: per candidate, the median over views of its per-view errors (lower is better).
    :ivar per_view: per candidate, the per-view errors.
    :ivar patches: the chosen run's patches, per stage.
    :ivar model_calls: model forwards of all candidates together.
    """

    result: Any
    choice: str
    scores: dict[str, float]
    per_view: dict[str, list[float]]
    patches: dict[str, Patch] = field(default_factory=dict)
    model_calls: int = 0


def _label(candidate: Candidate) -> str:
    if isinstance(candidate, str):
        return candidate
    if isinstance(candidate, Mapping):
        return ",".join(f"{k}={_label(v)}" for k, v in candidate.items())
    if isinstance(candidate, tuple):
        name, options = candidate
        return name + (":" + ",".join(f"{k}={v}" for k, v in options.items()) if options else "")
    return getattr(candidate, "name", repr(candidate))


def auto_generate(
    pipeline: Any,
    images: Sequence[Any],
    cameras: Sequence[Any],
    *,
    candidates: Sequence[Candidate] | None = None,
    singles: bool = True,
    score: Callable[[Any, Sequence[Any], Sequence[Any]], Any] | None = None,
    **run_kwargs: Any,
) -> AutoResult:
    """Generate with each candidate, score each result against the views, return the best.

    :param pipeline: a model adapter (:class:`trellis_mv.Adapter`), e.g. :class:`~trellis_mv.proxy.ProxyPipeline`.
    :param images: the views.
    :param cameras: one camera per view (a name, ``"AZ,EL"``, a pair or a :class:`~trellis_mv.Camera`).
    :param candidates: aggregator specs, each for every stage (``"robust:method=huber"``) or per stage
        (``{"texture": "visibility"}``); default :data:`DEFAULT_CANDIDATES`.
    :param singles: also try each view alone (``single:view=i``).
    :param score: ``(result, images, cameras) -> per-view errors`` (default :func:`render_agreement`,
        averaged over samples).
    :param run_kwargs: passed to every run (``seed``, ``params``, ``num_samples``, ``weights``, ...).
    """
    names = getattr(pipeline, "named_cameras", None)
    cams = _cameras(cameras, len(images), names)
    pool: list[Candidate] = list(DEFAULT_CANDIDATES if candidates is None else candidates)
    if singles and len(images) > 1:
        pool += [f"single:view={i}" for i in range(len(images))]
    if not pool:
        raise ValueError("auto_generate has no candidates; give candidates=[...] or singles=True")

    def default_score(result: Any, imgs: Sequence[Any], cs: Sequence[Any]) -> torch.Tensor:
        seen = pipeline.prepare([_open(im) for im in imgs])  # the views as the model saw them
        n = int(result.occupancy.shape[0])
        return torch.stack([render_agreement(result, seen, cs, k, names=names) for k in range(n)]).mean(0)

    scorer = score or default_score
    best: tuple[float, str, Any, dict[str, Patch]] | None = None
    scores: dict[str, float] = {}
    per_view: dict[str, list[float]] = {}
    calls = 0
    for candidate in pool:
        label = _label(candidate)
        stages = dict(candidate) if isinstance(candidate, Mapping) else None
        mode: StageSpec = "multidiffusion" if isinstance(candidate, Mapping) else candidate
        run = run_multi_image(pipeline, images, mode=mode, stages=stages, cameras=cams, **run_kwargs)
        result, patches = run.output, run.patches
        calls += run.cost()["model_forwards"]
        errors = np.asarray(torch.as_tensor(scorer(result, images, cams)).float().cpu(), dtype=float).reshape(-1)
        if errors.shape[0] != len(images):
            raise ValueError(f"the scorer {getattr(scorer, '__name__', scorer)!r} returned {errors.shape[0]} errors for "
                             f"{len(images)} views (candidate {label!r}); it must return one error per view")
        per_view[label] = errors.tolist()
        scores[label] = float(np.median(errors)) if np.isfinite(errors).all() else float("nan")
        if not math.isnan(scores[label]) and (best is None or scores[label] < best[0]):
            best = (scores[label], label, result, patches)
    if best is None:
        raise ValueError(f"every candidate's score is NaN ({', '.join(scores)}); the scorer cannot judge these results: "
                         "check it, or pass score= with one finite error per view")
    return AutoResult(result=best[2], choice=best[1], scores=scores, per_view=per_view, patches=best[3], model_calls=calls)
