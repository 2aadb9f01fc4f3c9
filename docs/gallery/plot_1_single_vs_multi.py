"""
Single view versus multi-view
=============================

The proxy model (:doc:`/proxy`) generates one shape from the four views of a held-out
shape: from each view alone, then from all four at once with ``multidiffusion``. The same
pipeline, the same noise; :func:`trellis_mv.run_multi_image` patches the samplers
of both stages for the run and restores them afterwards. Because the shape is synthetic,
every result is scored against its ground truth.
"""

# %%
# A held-out shape (seeds from :data:`~trellis_mv.proxy.HELD_OUT_SEED` up were never
# trained on), rendered from four sides as the benchmark does: at 128 pixels, averaged
# down to the model's 64.
import matplotlib.pyplot as plt

from trellis_mv import run_multi_image
from trellis_mv.eval import chamfer, iou
from trellis_mv.proxy import HELD_OUT_SEED, ProxyPipeline, input_views, make_shape, render

VIEWS = ["front", "right", "back", "left"]
UNSEEN = "az45el30"  # the results are shown from a direction no input was taken from


def picture(occupancy, colors, view=UNSEEN):
    image, _ = render(occupancy, colors, [view], size=96)
    return image[0].permute(1, 2, 0).numpy()


pipeline = ProxyPipeline()  # the shipped weights, on the CPU
shape = make_shape(HELD_OUT_SEED)
images = list(input_views(shape.occupancy, shape.colors, VIEWS))
print("ground truth:", ", ".join(shape.parts), f"({shape.num_voxels} voxels)")

# %%
# Each view alone (with one view every aggregator is the plain sampler), then all four.
# ``num_samples=2`` draws two samples at once, each from its own noise.
runs = {f"{v} alone": [image] for v, image in zip(VIEWS, images)}
runs["all 4, multidiffusion"] = images
results = {}
for title, views in runs.items():
    run = run_multi_image(pipeline, views, mode="multidiffusion", seed=0, num_samples=2)
    result = results[title] = run.output
    scores = [iou(result.occupancy[k], shape.occupancy) for k in range(2)]
    dist = [chamfer(result.occupancy[k], shape.occupancy) for k in range(2)]
    forwards = run.cost()["model_forwards"]
    print(f"{title:<22} IoU {sum(scores) / 2:.3f}  Chamfer {sum(dist) / 2:.3f} voxels  forwards {forwards}")

# %%
# Side by side, each column from one direction (the four input views, then ``az45el30``,
# which no input shows): the inputs, the first sample from the front view alone, the first
# sample from all four views, and the ground truth.
rows = {
    "front view alone": results["front alone"],
    "all 4 views": results["all 4, multidiffusion"],
}
columns = [*VIEWS, UNSEEN]
fig, axes = plt.subplots(2 + len(rows), len(columns), figsize=(10, 8.4))
for j, view in enumerate(columns):
    axes[0, j].imshow(images[j].permute(1, 2, 0).numpy() if j < len(VIEWS) else 0 * picture(shape.occupancy, shape.colors))
    axes[0, j].set_title(f"input: {view}" if j < len(VIEWS) else f"{view}: no input", fontsize=9)
    for i, result in enumerate(rows.values(), start=1):
        axes[i, j].imshow(picture(result.occupancy[0], result.colors[0], view))
    axes[-1, j].imshow(picture(shape.occupancy, shape.colors, view))
for i, (title, result) in enumerate(rows.items(), start=1):
    axes[i, 0].set_title(f"{title}: IoU {iou(result.occupancy[0], shape.occupancy):.2f}", fontsize=9, loc="left")
axes[-1, 0].set_title("ground truth", fontsize=9, loc="left")
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
fig.tight_layout()

# %%
# What ``run_multi_image`` does, by hand: :func:`trellis_mv.patch_sampler` on each stage's
# sampler, then the adapter's own ``sample`` with the views' conditioning stacked as
# ``cond``. Inside the block every call of a sampler's ``_inference_model`` is answered by
# the aggregator; when the block ends, however it ends, the samplers are the originals.
import trellis_mv

with (
    trellis_mv.patch_sampler(pipeline.samplers["sparse_structure"], "multidiffusion") as structure,
    trellis_mv.patch_sampler(pipeline.samplers["texture"], "multidiffusion") as texture,
):
    result = pipeline.sample(images, seed=0, num_samples=2, params={})
print("forwards:", structure.model_calls, "+", texture.model_calls, "rows:", structure.batch_rows, "+", texture.batch_rows)
print("same as run_multi_image:", bool((result.occupancy == results["all 4, multidiffusion"].occupancy).all()))
assert "_inference_model" not in vars(pipeline.samplers["texture"])

# %%
# One shape says little. Over four held-out shapes (two samples each), the mean IoU of
# one view against four; four shapes are a glimpse, :doc:`/proxy` measures the gain on 300.
one, four = [], []
for i in range(4):
    truth = make_shape(HELD_OUT_SEED + i)
    views = list(input_views(truth.occupancy, truth.colors, VIEWS))
    for given, scores in ((views[:1], one), (views, four)):
        result = run_multi_image(pipeline, given, mode="multidiffusion", seed=i, num_samples=2).output
        scores += [iou(result.occupancy[k], truth.occupancy) for k in range(2)]
print(f"mean IoU, front alone: {sum(one) / len(one):.3f}; all 4 views: {sum(four) / len(four):.3f}")
