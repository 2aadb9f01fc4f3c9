"""
Comparing aggregators
=====================

Every installed aggregator on the proxy model (:doc:`/proxy`), the same one on both
stages, four views of each of three held-out shapes: IoU against the ground truth and
model forwards and latent rows per generation. Aggregators from installed plugins
(``pip install "trellis-mv[plugins]"``) appear here automatically. To keep the build
fast this runs 8 sampling steps per stage instead of 12; the benchmark table on
:doc:`/proxy` is the measured comparison (100 shapes, 3 seeds).
"""

# %%
import warnings

import matplotlib.pyplot as plt

import trellis_mv
from trellis_mv import run_multi_image
from trellis_mv.eval import iou
from trellis_mv.proxy import HELD_OUT_SEED, STAGES, ProxyPipeline, input_views, make_shape, render

VIEWS, SHAPES, SAMPLES = ["front", "right", "back", "left"], 3, 2
PARAMS = {stage: {"steps": 8} for stage in STAGES}
names = [info.name for info in trellis_mv.list_aggregators()]
print("installed:", ", ".join(names))

pipeline = ProxyPipeline()
shapes = [make_shape(HELD_OUT_SEED + i) for i in range(SHAPES)]
inputs = []
for shape in shapes:
    inputs.append(list(input_views(shape.occupancy, shape.colors, VIEWS)))

# %%
# Every aggregator on every shape from the same noise; the front view alone is the
# single-view baseline. ``Patch.model_calls`` and ``Patch.batch_rows`` count the forwards
# and the latent rows they evaluated, per stage.
runs = {"front view alone": ("multidiffusion", 1), **{name: (name, len(VIEWS)) for name in names}}
scores, forwards, rows, firsts = {}, {}, {}, {}
for title, (name, n) in runs.items():
    scores[title] = []
    for i, (shape, views) in enumerate(zip(shapes, inputs)):
        with warnings.catch_warnings():  # `stochastic` warns when views outnumber steps; not the case here
            warnings.simplefilter("ignore")
            run = run_multi_image(pipeline, views[:n], mode=name, seed=i, num_samples=SAMPLES, params=PARAMS,
                                  cameras=VIEWS[:n])
            result, patches = run.output, run.patches
        scores[title] += [iou(result.occupancy[k], shape.occupancy) for k in range(SAMPLES)]
        if i == 0:
            firsts[title] = result
    forwards[title] = sum(p.model_calls for p in patches.values())
    rows[title] = sum(p.batch_rows for p in patches.values())

print(f"{'':<18}{'IoU (mean)':>12}{'forwards':>10}{'rows':>7}  (per generation of {SAMPLES} samples)")
for title in runs:
    print(f"{title:<18}{sum(scores[title]) / len(scores[title]):>12.3f}{forwards[title]:>10d}{rows[title]:>7d}")

# %%
# The first shape: its inputs, then each aggregator's first sample seen from a direction
# no input was taken from. On the proxy the aggregators differ by less than the spread
# between shapes, so read the numbers above with that in mind.
shape = shapes[0]
titles = ["ground truth", *runs]
pictures = [(shape.occupancy, shape.colors)] + [(r.occupancy[0], r.colors[0]) for r in firsts.values()]
cells = [(f"input: {v}", img.permute(1, 2, 0).numpy()) for v, img in zip(VIEWS, inputs[0])]
for title, (occ, col) in zip(titles, pictures):
    image, _ = render(occ, col, ["az45el30"], size=96)
    label = title if title == "ground truth" else f"{title}\nIoU {iou(occ, shape.occupancy):.2f}"
    cells.append((label, image[0].permute(1, 2, 0).numpy()))
fig, axes = plt.subplots(2, (len(cells) + 1) // 2, figsize=(12, 5))
for ax in axes.flat:
    ax.axis("off")
for ax, (label, image) in zip(axes.flat, cells):
    ax.imshow(image)
    ax.set_title(label, fontsize=8)
fig.tight_layout()

# %%
# Mean IoU per aggregator; the dashed line is the single-view baseline.
fig, ax = plt.subplots(figsize=(6, 3))
means = [sum(scores[t]) / len(scores[t]) for t in names]
ax.barh(names, means, color="tab:blue")
ax.axvline(sum(scores["front view alone"]) / len(scores["front view alone"]), color="k", ls="--", lw=1)
ax.set_xlim(min(means) - 0.1, max(means) + 0.05)
ax.set_xlabel(f"IoU, {SHAPES} held-out shapes x {SAMPLES} samples, {len(VIEWS)} views")
ax.invert_yaxis()
fig.tight_layout()
