"""
Per-stage aggregators
=====================

TRELLIS.2 samples three stages, each with its own sampler: the sparse structure (a dense
latent), the shape and the texture (sparse latents). Each stage may take its own
aggregator: for example ``stochastic`` for the structure, ``multidiffusion`` for the shape
and the first view alone for the texture.
:func:`trellis_mv.pipeline.run_multi_image` patches every stage's sampler at once and
restores them all however the run ends.
"""

# %%
# A two-stage pipeline adapter: anything with ``samplers`` (stage name → sampler) and
# ``run(images, **kwargs)``. Here a dense stage feeds the voxels of a sparse stage.
import matplotlib.pyplot as plt
import torch

from trellis_mv.pipeline import run_multi_image
from trellis_mv.samplers import FlowEulerGuidanceIntervalSampler
from trellis_mv.sparse import SparseTensor
from trellis_mv.testing import TinyDenoiser


class TwoStagePipeline:
    def __init__(self):
        self.samplers = {"structure": FlowEulerGuidanceIntervalSampler(), "texture": FlowEulerGuidanceIntervalSampler()}
        self.structure_model = TinyDenoiser(seed=0)
        self.texture_model = TinyDenoiser(seed=1)

    def encode(self, images):  # stands in for get_cond: one row of tokens per view
        return torch.stack([img.reshape(5, 8) for img in images]), torch.zeros(1, 5, 8)

    def run(self, images, seed=0, steps=10):
        cond, neg = self.encode(images)
        g = torch.Generator().manual_seed(seed)
        dense = self.samplers["structure"].sample(
            self.structure_model, torch.randn(1, 4, 6, 6, generator=g), cond, neg,
            steps=steps, guidance_strength=3.0, verbose=False).samples
        occupied = (dense[0, 0] > 0).nonzero()                      # voxels of the structure
        coords = torch.cat([torch.zeros(len(occupied), 1, dtype=torch.long), occupied,
                            torch.zeros(len(occupied), 1, dtype=torch.long)], 1).int()
        noise = SparseTensor(torch.randn(len(occupied), 4, generator=g), coords, batch_size=1)
        texture = self.samplers["texture"].sample(
            self.texture_model, noise, cond, neg, steps=steps, guidance_strength=1.0, verbose=False).samples
        return dense, texture


pipeline = TwoStagePipeline()
views = [torch.randn(40, generator=torch.Generator().manual_seed(i)) for i in range(3)]

# %%
# One aggregator for every stage (``mode``), or one per stage (``stages``): a name, a
# ``(name, options)`` pair or an instance.
plans = {
    "multidiffusion everywhere": dict(mode="multidiffusion"),
    "stochastic structure, view 0 texture": dict(
        stages={"structure": ("stochastic", {"order": "random", "seed": 0}), "texture": ("single", {"view": 0})}
    ),
}
fig, axes = plt.subplots(1, len(plans), figsize=(8, 3))
for ax, (title, plan) in zip(axes, plans.items()):
    (dense, texture), patches = run_multi_image(pipeline, views, seed=0, **plan)
    for stage, patch in patches.items():
        print(f"{title:<38} {stage:<10} {patch.name:<15} forwards={patch.model_calls:3d} rows={patch.batch_rows:3d}")
    ax.imshow(dense[0, 0], cmap="gray")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
fig.tight_layout()

# %%
# The texture stage runs at guidance strength 1, TRELLIS.2's default for it: no
# negative pass is made, so ``multidiffusion`` costs N rows per step there, not N + 1.
assert all("_inference_model" not in vars(s) for s in pipeline.samplers.values())
