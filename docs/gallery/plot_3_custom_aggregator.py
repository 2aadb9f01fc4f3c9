"""
A custom aggregator in 30 lines
===============================

An aggregator is a class with a ``name`` and ``__call__(step)``. This one fuses the views
by an element-wise quantile (the median by default) of their x0 predictions, the clean
sample each view implies, then lets the sampler guide the result as it would guide a
single view's prediction.
"""

# %%
# The whole aggregator. ``step.predict()`` evaluates every view in one batched forward
# (the negative branch rides along when guidance needs it); ``step.to_xstart`` and
# ``step.from_xstart`` convert between velocity and x0; ``step.guide`` applies the
# sampler's own guidance once.
import torch

import trellis_mv


class MedianX0:
    """Element-wise median (or another quantile) of the views' x0 predictions, guided once."""

    name = "median-x0"
    fuses = True        # N identical views give the single-view result
    order_free = True   # permuting the views changes nothing

    def __init__(self, *, q: float = 0.5) -> None:
        if not 0.0 <= q <= 1.0:
            raise trellis_mv.AggregatorOptionError(
                f"median-x0: option q must be in [0, 1]; got q={q!r}", aggregator=self.name
            )
        self.q = q

    def __call__(self, step: trellis_mv.Step):
        if not step.needs_positive:        # guidance strength 0: the negative alone
            return step.guide(None)
        x0 = [step.to_xstart(p) for p in step.predict()]   # all views, one forward
        # dense latents are tensors; sparse ones keep their values in .feats
        values = torch.stack([getattr(x, "feats", x) for x in x0])
        fused = torch.quantile(values, self.q, dim=0)
        fused = x0[0].replace(fused) if hasattr(x0[0], "feats") else fused
        return step.guide(step.from_xstart(fused))


# %%
# The conformance kit checks the invariants every aggregator must hold (restoring the
# sampler, one view equals the unpatched run, no negative pass at strength 1, and the
# ones the class declares: ``fuses``, ``order_free``). It raises ``AssertionError``
# naming the broken invariant.
from trellis_mv.testing import check_aggregator

check_aggregator(MedianX0, max_examples=3)
print("MedianX0 passes the conformance check")

# %%
# Use it like a registered one: pass the class (with options) or an instance.
import matplotlib.pyplot as plt

from trellis_mv.testing import make_problem

problem = make_problem(num_views=5, steps=12, seed=3)
problem.cond[4] = -problem.cond[4]         # one view unlike the others
out = {}
for agg in ("multidiffusion", MedianX0()):
    with trellis_mv.patch_sampler(problem.sampler, agg) as patch:
        out[patch.name] = problem.run()
with trellis_mv.patch_sampler(problem.sampler, "multidiffusion"):
    out["without the odd view"] = problem.run(cond=problem.cond[:4])

fig, axes = plt.subplots(1, 3, figsize=(8, 2.8))
for ax, (title, x) in zip(axes, out.items()):
    ax.imshow(x[0, 0], cmap="viridis", vmin=-2, vmax=2)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
fig.tight_layout()
ref = out["without the odd view"]
for name in ("multidiffusion", "median-x0"):
    print(f"{name}: distance to the run without the odd view = {float((out[name] - ref).norm()):.3f}")
