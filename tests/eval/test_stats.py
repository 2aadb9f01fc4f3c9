"""The statistics of the report: intervals cover a known difference, p-values separate a shift from none."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from trellis_mv.eval import mean_ci, paired, paired_bootstrap_ci, wilcoxon_p


def test_bootstrap_interval_covers_the_true_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    true = 0.03
    covered = 0
    for _ in range(200):
        base = rng.normal(0.6, 0.1, 40)  # objects differ a lot; the pairing removes that
        lo, hi = paired_bootstrap_ci(base + true + rng.normal(0, 0.02, 40) - base)
        covered += lo <= true <= hi
    assert 0.88 <= covered / 200 <= 0.99


def test_pairing_removes_the_spread_between_objects():
    rng = np.random.default_rng(2)
    base = rng.normal(0.5, 0.3, 30)
    shifted = base + 0.02 + rng.normal(0, 0.005, 30)
    r = paired(shifted, base)
    assert r.lo > 0 and r.p < 1e-4  # an unpaired interval would straddle 0 here
    assert mean_ci(shifted)[0] - mean_ci(shifted)[1] < mean_ci(base)[0]


def test_p_is_large_without_a_shift_and_small_with_one():
    rng = np.random.default_rng(3)
    null = [wilcoxon_p(rng.normal(0, 1, 30)) for _ in range(200)]
    assert 0.02 <= np.mean(np.array(null) < 0.05) <= 0.1  # the test's size is about 5%
    assert wilcoxon_p(rng.normal(1.0, 1, 30)) < 1e-3
    assert wilcoxon_p(np.zeros(10)) == 1.0


def test_nan_pairs_are_dropped_and_counted_out():
    r = paired([1.0, 2.0, np.nan, 4.0], [0.0, 1.0, 1.0, np.nan])
    assert (r.diff, r.n) == (1.0, 2)


@given(st.lists(st.floats(-10, 10), min_size=2, max_size=30), st.floats(-5, 5))
def test_shifting_both_sides_by_the_same_amount_changes_nothing(values, shift):
    a = np.array(values)
    b = a[::-1].copy()
    r1, r2 = paired(a, b), paired(a + shift, b + shift)
    assert np.isclose(r1.diff, r2.diff, atol=1e-9) and np.isclose(r1.lo, r2.lo, atol=1e-9)
