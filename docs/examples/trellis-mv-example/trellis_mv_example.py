"""A third-party trellis-mv aggregator: ``pip install .`` and ``trellis-mv list`` shows ``median``."""

import torch

from trellis_mv import hookimpl


class Median:
    """Per-element median of the per-view predictions (weights are not used), guided once."""

    name = "median"
    fuses = True  # the median of N copies is the copy
    order_free = True  # a median does not depend on the order of the views

    def __call__(self, step):
        preds = step.predict()  # every view in one batched forward
        sparse = hasattr(preds[0], "feats")  # a sparse latent keeps its values in .feats
        values = torch.stack([p.feats if sparse else p for p in preds])
        # objects with their own views: each sample's padding views become NaN, which nanmedian skips
        values = step.without_padding(values).nanmedian(dim=0).values
        return step.guide(preds[0].replace(values) if sparse else values)


@hookimpl
def register_aggregators():
    return [Median]
