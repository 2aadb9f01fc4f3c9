"""The conformance kit passes the built-ins and catches deliberately broken aggregators."""

import types

import pytest
import torch

import trellis_mv
from trellis_mv.aggregators.multidiffusion import MultiDiffusion
from trellis_mv.aggregators.stochastic import Single, Stochastic
from trellis_mv.testing import AggregatorTests, check_aggregator


class TestMultiDiffusion(AggregatorTests):
    aggregator, distribution = MultiDiffusion, "trellis-mv"


class TestStochastic(AggregatorTests):
    aggregator, distribution, options = Stochastic, "trellis-mv", [{}, {"order": "random", "seed": 7}]


class TestSingle(AggregatorTests):
    aggregator, distribution = Single, "trellis-mv"


def test_shared_tests_name_a_wrong_distribution_and_a_failing_doctest(monkeypatch):
    class Wrong(AggregatorTests):
        aggregator, distribution = Single, "trellis-mv-weighted"

    with pytest.raises(AssertionError, match="'single' comes from 'trellis-mv', not 'trellis-mv-weighted'"):
        Wrong().test_is_registered_by_its_distribution()
    bad = types.ModuleType("bad", ">>> 1 + 1\n3\n")
    monkeypatch.setattr(Wrong, "doctest_modules", (bad,))
    with pytest.raises(AssertionError, match="1 of 1 doctests of bad failed"):
        Wrong().test_doctests()


class Unguided:
    """Forgets the guidance: returns the fused conditional prediction."""

    name = "unguided"
    fuses = True
    order_free = True

    def __call__(self, step):
        return step.fuse(step.predict())


class GuidesEachView:
    """Guides each view with its own negative pass, then averages (the costly port)."""

    name = "per-view"
    fuses = True
    order_free = True

    def __call__(self, step):
        preds = step.predict()
        neg = step.negative()  # always, even at strength 1
        return step.guide(step.fuse([p + 0 * neg for p in preds]))


class FirstViewClaimsOrderFree:
    """Uses view 0 only but claims permutations do not matter."""

    name = "first"
    fuses = True
    order_free = True

    def __call__(self, step):
        return step.select(0)


class IgnoresWeights:
    """Plain mean although weights were given, yet claims to honour them."""

    name = "ignores-weights"
    fuses = True
    order_free = True
    weighted = True

    def __call__(self, step):
        preds = step.predict()
        return step.guide(step.fuse(preds, [1.0 / len(preds)] * len(preds)) if len(preds) > 1 else preds[0])


class Sums:
    """Sums instead of averaging: N identical views are N times one view."""

    name = "sums"
    fuses = True
    order_free = False

    def __call__(self, step):
        return step.guide(step.fuse(step.predict(), [1.0] * step.num_views))


class IgnoresPadding:
    """Uniform mean over every view column: a sample's padding views leak into its result."""

    name = "ignores-padding"
    fuses = True
    order_free = True

    def __call__(self, step):
        preds = step.predict()
        return step.guide(step.fuse(preds, [1.0 / len(preds)] * len(preds)))


class FirstSampleWeights:
    """Fuses every sample with the first sample's weights (right whenever the views are shared)."""

    name = "first-sample-weights"
    fuses = True
    order_free = True
    weighted = True

    def __call__(self, step):
        return step.guide(step.fuse(step.predict(), step.sample_weights[0].tolist()))


class KeepsStateOnSelf:
    """Keeps a counter on self instead of step.state: the schedule leaks across runs."""

    name = "leaky"
    fuses = False

    def __init__(self):
        self.calls = 0

    def __call__(self, step):
        self.calls += 1
        if self.calls > 3:
            return step.select(0) * 1.5
        return step.select(0)


@pytest.mark.parametrize(
    "broken, invariant",
    [
        (Unguided, "one view vs the unpatched sampler"),
        (GuidesEachView, "negative rows evaluated at guidance strength 1"),
        (FirstViewClaimsOrderFree, "permuting views and weights"),
        (Sums, "identical views vs one view"),
        (KeepsStateOnSelf, "one view vs the unpatched sampler"),
        (IgnoresPadding, "of a batch of objects with their own views"),
        (FirstSampleWeights, "of a batch of objects with their own views"),
    ],
)
def test_kit_catches_broken_aggregators(broken, invariant):
    with pytest.raises(AssertionError, match=invariant):
        check_aggregator(broken)


def test_kit_catches_wrong_shape():
    class Flat:
        name = "flat"

        def __call__(self, step):
            return torch.zeros(1)

    with pytest.raises(trellis_mv.AggregatorError, match="'flat' returned shape"):
        check_aggregator(Flat)


def test_weights_that_are_ignored_are_caught():
    with pytest.raises(AssertionError, match="views of weight 0 must not change the result"):
        check_aggregator(IgnoresWeights)
