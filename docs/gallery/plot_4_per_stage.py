"""
Per-stage aggregators
=====================

TRELLIS.2 samples three stages, each with its own sampler: the sparse structure (a dense
latent), the shape and the texture (sparse latents). The proxy model (:doc:`/proxy`) has
two, ``sparse_structure`` and ``texture``, built the same way. Each stage may take its own
aggregator: here ``stochastic`` (one view per step, in turn) for the structure and the
first view alone for the texture. :func:`trellis_mv.run_multi_image` patches
every stage's sampler at once and restores them all however the run ends.
"""

# %%
# Four views of a held-out shape, as the benchmark renders them.
import matplotlib.pyplot as plt

from trellis_mv import run_multi_image
from trellis_mv.eval import color_error, iou
from trellis_mv.proxy import HELD_OUT_SEED, STAGES, ProxyPipeline, input_views, make_shape, render

VIEWS = ["front", "right", "back", "left"]
UNSEEN = ["az135el20", "az225el20"]  # two directions behind the object that no input shows
pipeline = ProxyPipeline()
print("stages:", STAGES)
shape = make_shape(HELD_OUT_SEED + 1)
images = list(input_views(shape.occupancy, shape.colors, VIEWS))

# %%
# One aggregator for every stage (``mode``), or one per stage (``stages``): a name, a
# ``(name, options)`` pair or an instance; stages not named take ``mode``.
plans = {
    "multidiffusion on both": dict(mode="multidiffusion"),
    "stochastic structure,\nfront view texture": dict(
        stages={"sparse_structure": ("stochastic", {"order": "cycle"}), "texture": ("single", {"view": 0})}
    ),
}
results = {}
for title, plan in plans.items():
    run = run_multi_image(pipeline, images, seed=0, **plan)
    result, patches = run.output, run.patches
    results[title] = result
    print(title.replace("\n", " "))
    for stage, patch in patches.items():
        print(f"  {stage:<17} {patch.name:<15} forwards={patch.model_calls:3d} rows={patch.batch_rows:3d}")
        # one StepRecord per step: which views it used and what it cost
        print("   ", ", ".join(f"step {r.step}: views {list(r.views)}" for r in patch.records[:4]), "...")
    occ, col = result.occupancy[0], result.colors[0]
    print(f"  IoU {iou(occ, shape.occupancy):.3f}, colour error from behind "
          f"{color_error(occ, col, shape.occupancy, shape.colors, UNSEEN):.3f}")

# %%
# The inputs and the ground truth from behind; below, each result from behind. With the
# texture taken from the front view alone, the colours of the sides that view does not show are the model's guess; with
# ``multidiffusion`` every view steers them. The ``stochastic`` structure costs two
# forwards a step (one view and the negative), ``multidiffusion`` one batched forward.
fig, axes = plt.subplots(2, 6, figsize=(13, 5))
cells = [(f"input: {v}", img.permute(1, 2, 0).numpy()) for v, img in zip(VIEWS, images)]
truth, _ = render(shape.occupancy, shape.colors, UNSEEN, size=96)
cells += [(f"ground truth\n{view}", pic.permute(1, 2, 0).numpy()) for view, pic in zip(UNSEEN, truth)]
for title, result in results.items():
    pictures, _ = render(result.occupancy[0], result.colors[0], UNSEEN, size=96)
    cells += [(f"{title}\n{view}", pic.permute(1, 2, 0).numpy()) for view, pic in zip(UNSEEN, pictures)]
for ax in axes.flat:
    ax.axis("off")
for ax, (label, image) in zip(axes.flat, cells):
    ax.imshow(image)
    ax.set_title(label, fontsize=8)
fig.tight_layout()

# %%
# Outside the run every sampler is the original again.
assert all("_inference_model" not in vars(s) for s in pipeline.samplers.values())
