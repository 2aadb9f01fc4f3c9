"""
Comparing aggregators
=====================

Every registered aggregator on one problem: what it costs in model forwards and latent
rows, and how far its sample is from each view's single-view sample. Aggregators from
installed plugins (``pip install "trellis-mv[plugins]"``) appear here automatically.
"""

# %%
import matplotlib.pyplot as plt
import torch

import trellis_mv
from trellis_mv.testing import make_problem

STEPS, VIEWS = 12, 4
names = [info.name for info in trellis_mv.list_aggregators()]
print("registered:", ", ".join(names))

# %%
# Each run starts from the same noise; ``Patch`` counts the forwards and rows.
rows = []
for name in names:
    problem = make_problem(num_views=VIEWS, steps=STEPS, strength=3.0, seed=2)
    singles = []
    for v in range(VIEWS):
        with trellis_mv.patch_sampler(problem.sampler, "single", view=v):
            singles.append(problem.run())
    with trellis_mv.patch_sampler(problem.sampler, name) as patch:
        sample = problem.run()
    spread = [float((sample - s).norm()) for s in singles]
    rows.append((name, patch.model_calls / STEPS, patch.batch_rows / STEPS, max(spread)))

print(f"{'aggregator':<16}{'forwards/step':>14}{'rows/step':>11}{'max dist to a view':>20}")
for name, fwd, r, d in rows:
    print(f"{name:<16}{fwd:>14.1f}{r:>11.1f}{d:>20.3f}")

# %%
# Rows per step is what costs time on a compute-bound model (see
# :doc:`/how_it_works`): ``multidiffusion`` evaluates N conditional rows and one shared
# negative, the selecting aggregators one view and one negative.
fig, ax = plt.subplots(figsize=(6, 2.8))
ax.barh([r[0] for r in rows], [r[2] for r in rows], color="tab:blue")
ax.set_xlabel(f"latent rows per step ({VIEWS} views, guidance on)")
ax.invert_yaxis()
fig.tight_layout()
torch.set_printoptions(precision=3)
