"""The contracts: the :class:`Aggregator` and :class:`Adapter` protocols and the plugin hook specifications.

Nothing here runs; every name is documentation that the rest of the package implements.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import pluggy

if TYPE_CHECKING:
    from ._step import Step
    from .run import MultiViewResult

__all__ = ["ADAPTER_DEFAULTS", "Adapter", "Aggregator", "hookimpl", "hookspec"]

PROJECT = "trellis_mv"

hookspec = pluggy.HookspecMarker(PROJECT)
#: Marks a plugin's implementation of a trellis-mv hook: ``from trellis_mv import hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT)


@runtime_checkable
class Aggregator(Protocol):
    """Combines N views into the one prediction a sampler needs at one denoising step.

    While a sampler is patched (:func:`trellis_mv.patch_sampler`), every call of its
    ``_inference_model`` becomes one call ``aggregator(step)``. What the aggregator may read
    and call (the latent, the time, where the run is, the views with their weights and
    cameras, shared or per sample, and the model evaluations) is described once, in
    :class:`~trellis_mv.Step`.

    The aggregator returns one prediction shaped like ``step.x_t`` (a tensor, or a sparse
    tensor with the same voxels). It should not keep state on ``self`` between calls: use
    ``step.state``, which the core resets between sampling runs, so that one aggregator may
    serve several samplers and threads at once.

    Registered aggregators are classes: ``name`` is the registered name, the keyword
    arguments of ``__init__`` are the options (validate them there, raising
    :class:`~trellis_mv.AggregatorOptionError`), and the first line of the docstring is the
    summary ``trellis-mv list`` prints. An optional method ``check(*, num_views, cameras)``
    refuses a view set before any model work (e.g. ``single:view=5`` with 3 views), raising
    :class:`~trellis_mv.AggregatorOptionError`; with per-sample views it is asked once per
    sample. A step where the sampler's guidance needs the negative branch alone (strength 0)
    never reaches the aggregator: the core answers it.
    Optional class attributes tell the conformance kit
    which invariants apply: ``fuses`` (N identical views give the single-view result),
    ``order_free`` (permuting views and weights together changes nothing) and ``weighted``
    (it honours ``step.sample_weights``: a view of weight 0 changes nothing).

    A complete aggregator, the weighted mean of the views::

        class Mean:
            "Weighted mean of the per-view predictions, guided once."
            name = "mean"
            fuses = True
            order_free = True
            weighted = True

            def __call__(self, step):
                return step.guide(step.fuse(step.predict(), step.sample_weights))
    """

    name: ClassVar[str]

    def __call__(self, step: Step) -> Any:
        """Return the prediction for this step, shaped like ``step.x_t``."""
        ...


@runtime_checkable
class Adapter(Protocol):
    """A model as :func:`trellis_mv.run_multi_image` drives it: its stages, its views, one run, its files.

    ``samplers`` maps each stage name, in order, to the sampler instance that stage uses;
    the core patches each one with that stage's aggregator for the length of a run.
    ``prepare`` turns the checked input images (RGB/RGBA PIL images, or what the adapter
    accepts beside) into views; ``sample`` runs every stage once with the views'
    conditioning stacked as the samplers' ``cond`` (one row per view, one negative row),
    as TRELLIS.2's pipeline would for one image; ``export`` writes a result's files into a
    folder and returns their names. An adapter registered by a plugin
    (:func:`register_adapters`) also has a classmethod ``load(model, *, device=None, **options)``.

    Every other member is optional; :data:`ADAPTER_DEFAULTS` lists them with the value the
    core assumes when an adapter lacks one, and :func:`trellis_mv.run.traits` is the one
    place that reads them:

    * ``name`` (shown in summaries; default the class name), ``stage_names`` (a class
      attribute: the stages in order, known without loading the model; the running
      adapter's are always ``tuple(samplers)``), ``dialect`` (``"trellis2"`` or
      ``"trellis"``: which sampler parameters the stages take), ``stage_aliases`` (other
      spellings of stage names), ``default_params`` (per stage, for summaries);
    * ``named_cameras`` (camera names as this model's views are usually taken, e.g. the
      proxy's ``front`` raised 25 degrees; they override the core's level ``front``),
      ``latent_frame`` (3x3: the object frame, x right, y up, z towards the front camera, in
      the latent's axes; identity when None);
    * ``device`` (where the model runs; None: unknown), ``verbose`` (progress bars while
      sampling; the CLI sets it when present);
    * ``render(output, camera, size) -> float [3, size, size]`` (the first sample seen from
      a :class:`~trellis_mv.Camera`), ``to_mesh(output) -> trimesh.Trimesh`` and
      ``to_voxels(output) -> (occupancy bool [B, R, R, R], colors float [B, R, R, R, 3])`` (every sample, on
      its device): what
      the evaluation harness scores with; ``examples() -> list[(path, camera)]``:
      views for ``trellis-mv demo``; ``sample_many(view_sets, *, seeds, params)``: one sample
      per view set (object ``b``'s views ``view_sets[b]``, its noise from ``seeds[b]`` alone, as
      ``sample`` would draw it), every stage's sampler called once with the per-sample
      conditioning ``[B, N, ...]`` (padded at the end where objects have fewer views):
      what :func:`trellis_mv.run.run_many` and the evaluation harness batch objects with.

    The proxy adapter (:class:`trellis_mv.proxy.ProxyAdapter`) is a complete example.
    """

    @property
    def samplers(self) -> Mapping[str, Any]:
        """Stage name → its sampler instance, in the order the stages run."""
        ...

    def prepare(self, images: Sequence[Any]) -> list[Any]:
        """The views as ``sample`` takes them (e.g. background removed, cropped)."""
        ...

    def sample(self, views: Sequence[Any], *, seed: int, num_samples: int, params: Mapping[str, Mapping[str, Any]]) -> Any:
        """Run every stage once on the views; ``params`` are per-stage sampler parameters (checked)."""
        ...

    def export(self, result: MultiViewResult, folder: Path) -> list[str]:
        """Write the result's files (mesh, pictures, ...) into ``folder``; return their names."""
        ...


#: The optional members of an :class:`Adapter` and what the core assumes where one is missing.
ADAPTER_DEFAULTS: Mapping[str, Any] = {
    "name": None,
    "stage_names": None,
    "dialect": "trellis2",
    "stage_aliases": {},
    "default_params": {},
    "named_cameras": {},
    "latent_frame": None,
    "device": None,
    "verbose": None,
    "render": None,
    "to_mesh": None,
    "to_voxels": None,
    "examples": None,
    "sample_many": None,
}


@hookspec
def register_aggregators() -> list[type]:  # type: ignore[empty-body]
    """Return the aggregator classes this plugin provides.

    Called once per plugin when the registry is built. Each class must satisfy
    :class:`Aggregator`: a ``name`` class attribute (unique across plugins) and
    ``__call__(step)``; its ``__init__`` keyword arguments are its options.

    A plugin module, declared in its distribution's ``pyproject.toml`` under
    ``[project.entry-points.trellis_mv]``::

        from trellis_mv import hookimpl

        @hookimpl
        def register_aggregators():
            return [Mean]

    :returns: a list of aggregator classes.
    """


@hookspec
def register_adapters() -> list[type]:  # type: ignore[empty-body]
    """Return the adapter classes this plugin provides (``trellis-mv list`` shows them).

    Each class satisfies :class:`Adapter`, has a ``name`` class attribute, a first docstring
    line that says which models it runs, and a classmethod ``load(model, *, device=None,
    **options)`` that builds the adapter of ``model``.

    :returns: a list of adapter classes.
    """


@hookspec
def adapter_for(model: str) -> type | None:
    """Which of this plugin's adapters runs ``model`` (a name, a hub id or a local folder), or None.

    :func:`trellis_mv.load_adapter` asks every plugin, as pytest asks for a collector:
    the one adapter that answers runs the model. Answer only for models that are yours
    (e.g. by the ``pipeline.json`` a folder holds); two answers for one model are an error
    naming both distributions. A plugin that recognises a model it cannot run here may
    raise :class:`~trellis_mv.ModelNotAvailable` saying what to install.

    A built-in answers for its name (the proxy for ``"proxy"``)::

        @hookimpl
        def adapter_for(model):
            return ProxyAdapter if model == "proxy" else None

    :param model: what the user gave as ``--model``.
    :returns: an adapter class, or None.
    """
