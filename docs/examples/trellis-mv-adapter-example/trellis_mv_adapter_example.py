"""A third-party model adapter: a one-stage "model" whose sample is the views' mean colour."""

import json

import torch

from trellis_mv import hookimpl
from trellis_mv.samplers import FlowEulerGuidanceIntervalSampler


class TintAdapter:
    """A toy one-stage colour model (--model tint): its sample is the views' mean colour."""

    name = "tint"
    stage_names = ("colour",)

    def __init__(self, device=None):
        self.samplers = {"colour": FlowEulerGuidanceIntervalSampler()}

    @classmethod
    def load(cls, model, *, device=None):
        return cls(device)

    def prepare(self, images):
        return [torch.tensor(im.convert("RGB").resize((1, 1)).getpixel((0, 0))) / 255.0 for im in images]

    def sample(self, views, *, seed, num_samples, params):
        cond = torch.stack(list(views))[:, None]                  # one row per view: [N, 1, 3]
        noise = torch.randn(num_samples, 3, generator=torch.Generator().manual_seed(seed))
        model = lambda x, t, c, **kw: (x - c[:, 0]) / (t[:, None] / 1000).clamp_min(1e-3)   # flow to the colour
        steps = {"steps": 8, "guidance_strength": 1.0, "verbose": False, **params.get("colour", {})}
        return self.samplers["colour"].sample(model, noise, cond, torch.zeros_like(cond[:1]), **steps).samples

    def export(self, result, folder):
        (folder / "colour.json").write_text(json.dumps(result.output.tolist()))
        return ["colour.json"]


@hookimpl
def register_adapters():
    return [TintAdapter]


@hookimpl
def adapter_for(model):
    return TintAdapter if model == "tint" else None
