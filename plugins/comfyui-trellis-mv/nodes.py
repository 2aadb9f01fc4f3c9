"""The nodes, in ComfyUI's V3 schema: the views, and a MODEL patched to sample them with a trellis-mv aggregator."""

from __future__ import annotations

from typing import Any

import torch
from comfy_api.latest import ComfyExtension, io
from typing_extensions import override

import trellis_mv

from .multiview import CAMERA, VIEW, WEIGHT, MultiView, aggregator_choices

__all__ = ["MAX_VIEWS", "MultiViewModel", "TrellisMVExtension", "Views", "comfy_entrypoint", "split_views"]

#: Conditioning inputs of the views node; a batched conditioning counts one view per row.
MAX_VIEWS = 8


def _list(text: str) -> list[str]:
    return [part.strip() for part in text.split(";")] if text.strip() else []


def _per_row(key: str, value: Any, rows: int) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim >= 2 and value.shape[0] == rows and not key.startswith("trellis2_")


def split_views(conditioning: list) -> list[list]:
    """One ``[tensor, dict]`` entry per view: an entry of batch B gives B views.

    Tensors in the entry's dict with the same batch (TRELLIS.2's ``embeds``, a ``pooled_output``) are split
    with it; TRELLIS.2's per-stage constants (``trellis2_*``) are shared by every view.
    """
    views = []
    for cond, extras in conditioning:
        rows = int(cond.shape[0])
        for r in range(rows):
            split = {k: v[r : r + 1] if rows > 1 and _per_row(k, v, rows) else v for k, v in extras.items()}
            views.append([cond[r : r + 1], split])
    return views


class Views(io.ComfyNode):
    """Several images' conditionings as the views of one object, with optional cameras and weights."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TrellisMVViews",
            display_name="trellis-mv Views",
            category="conditioning/trellis-mv",
            description="The views of one object for a trellis-mv Multi-view model: connect each image's positive "
            "conditioning (a batch of images counts one view per image). Use any one image's negative as the negative.",
            inputs=[
                io.Conditioning.Input("view_1"),
                *[io.Conditioning.Input(f"view_{i}", optional=True) for i in range(2, MAX_VIEWS + 1)],
                io.String.Input("cameras", default="", optional=True,
                                tooltip="One camera per view, separated by ';': front, right, back, left, top, an azimuth "
                                "in degrees ('90') or 'AZIMUTH,ELEVATION'; empty: unknown (for camera-aware aggregators)"),
                io.String.Input("weights", default="", optional=True,
                                tooltip="One weight per view, separated by ';'; empty: equal weights"),
            ],
            outputs=[io.Conditioning.Output(display_name="views")],
        )

    @classmethod
    def execute(cls, view_1: list, cameras: str = "", weights: str = "", **more: Any) -> io.NodeOutput:
        inputs = [view_1, *(more[f"view_{i}"] for i in range(2, MAX_VIEWS + 1) if more.get(f"view_{i}") is not None)]
        views = [view for conditioning in inputs for view in split_views(conditioning)]
        shapes = [tuple(cond.shape[1:]) for cond, _ in views]
        if len(set(shapes)) > 1:
            listed = ", ".join(f"view {i + 1}: {s}" for i, s in enumerate(shapes))
            raise ValueError(f"trellis-mv Views: the views' conditioning shapes differ ({listed}); encode every image "
                             "with the same vision model at the same resolution")
        cams, wts = _list(cameras), _list(weights)
        for name, given in (("cameras", cams), ("weights", wts)):
            if given and len(given) != len(views):
                raise ValueError(f"trellis-mv Views: {name} has {len(given)} entries but there are {len(views)} views; "
                                 f"give one per view, separated by ';'")
        try:
            parsed_cams = [trellis_mv.parse_camera(c or None) for c in cams] or [None] * len(views)
            parsed_wts = [float(w) for w in wts] or [None] * len(views)
        except ValueError as exc:
            raise ValueError(f"trellis-mv Views: {exc}") from exc
        out = [[cond, {**extras, VIEW: i, CAMERA: cam, WEIGHT: w}]
               for i, ((cond, extras), cam, w) in enumerate(zip(views, parsed_cams, parsed_wts))]
        return io.NodeOutput(out)


class MultiViewModel(io.ComfyNode):
    """A MODEL whose every sampling runs a trellis-mv aggregator over the views."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        choices = aggregator_choices()
        summaries = {i.qualified_name: i.summary for i in trellis_mv.list_aggregators()}
        tips = "; ".join(f"{c}: {summaries.get(c, '')}".rstrip(": ") for c in choices)
        return io.Schema(
            node_id="TrellisMVMultiView",
            display_name="trellis-mv Multi-view Model",
            category="model_patches/trellis-mv",
            description="Patches the MODEL so that ComfyUI's sampler runs a trellis-mv aggregator over the views of "
            "the positive conditioning (from trellis-mv Views) at every step: one batched pass over the views, one "
            "shared negative, ComfyUI's CFG applied once. Use one node per stage to choose an aggregator per stage.",
            inputs=[
                io.Model.Input("model"),
                io.Combo.Input("aggregator", options=choices,
                               default="multidiffusion" if "multidiffusion" in choices else None, tooltip=tips),
                io.String.Input("options", default="", optional=True,
                                tooltip="The aggregator's options, OPTION=VALUE,... (e.g. order=random,seed=3 for stochastic)"),
                io.String.Input("stage", default="", optional=True,
                                tooltip="A stage label the aggregator sees as step.stage (structure, shape, texture)"),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model: Any, aggregator: str, options: str = "", stage: str = "") -> io.NodeOutput:
        spec = f"{aggregator}:{options.strip()}" if options.strip() else aggregator
        return io.NodeOutput(MultiView(spec, stage=stage.strip() or None).apply(model))


class TrellisMVExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [Views, MultiViewModel]


async def comfy_entrypoint() -> TrellisMVExtension:
    """What ComfyUI calls when it loads this folder from ``custom_nodes``."""
    return TrellisMVExtension()
