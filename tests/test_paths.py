"""Exact numbers from PAPERS.md."""
import math

import numpy as np
import pytest

from workloads.surgery.paths import (contribution_fractions, effective_range, log10_mean, log10_total_contribution,
                                     path_counts, path_length_distribution, probability_in_range, surviving_fraction)


def test_path_counts_of_resnet110():
    counts = path_counts(54)
    assert sum(counts) == 2**54
    assert f"{2**54:.2e}" == "1.80e+16"
    assert path_length_distribution(54).sum() == pytest.approx(1.0)


def test_probabilities_in_ranges():
    assert probability_in_range(54, 19, 35) == pytest.approx(0.980, abs=5e-4)
    assert probability_in_range(54, 5, 17) == pytest.approx(0.00454, abs=5e-5)


@pytest.mark.parametrize("d, x, want", [
    (1, 5, .907), (1, 10, .815), (1, 27, .500), (10, 5, .343), (10, 10, .104), (20, 5, .088), (20, 10, .005),
])
def test_surviving_fractions(d, x, want):
    assert surviving_fraction(54, d, x) == pytest.approx(want, abs=5e-4)


def test_log10_mean_is_stable_far_below_fp32():
    assert log10_mean([-300.0, -300.0]) == pytest.approx(-300.0)
    assert log10_mean([0.0, math.log10(3.0)]) == pytest.approx(math.log10(2.0))


def test_total_contribution_and_effective_range():
    n = 54
    # gradient norm falling x0.2 per block, as on digits: contributions peak at short paths
    log_norm = [k * math.log10(0.2) for k in range(n + 1)]
    frac = contribution_fractions(log10_total_contribution(n, log_norm))
    assert frac.sum() == pytest.approx(1.0)
    lo, hi = effective_range(frac, 0.9)
    assert frac[lo:hi + 1].sum() >= 0.9
    assert 3 <= lo < hi <= 20
    # C(54,k) 0.2^k peaks at k = 54 * 0.2 / 1.2 = 9
    assert int(np.argmax(frac)) == 9
