"""elr.stats against independent computations: brute-force enumeration, hand values, closed forms."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elr import stats


# ---------------------------------------------------------------------------------------------- Mann–Whitney

def brute_force_mw(a, b):
    """U counted pair by pair, p by enumerating every split of the pooled values (exact, ties included)."""
    def u(x, y):
        return sum((xi > yj) + 0.5 * (xi == yj) for xi in x for yj in y)
    pooled = list(a) + list(b)
    u0 = u(a, b)
    hits = total = 0
    for idx in itertools.combinations(range(len(pooled)), len(a)):
        x = [pooled[i] for i in idx]
        y = [pooled[i] for i in range(len(pooled)) if i not in idx]
        hits += u(x, y) >= u0 - 1e-12
        total += 1
    return u0, hits / total


@pytest.mark.parametrize("a, b", [
    ([0.81, 0.85, 0.90, 0.79], [0.60, 0.70, 0.65, 0.80]),            # no ties
    ([0.8, 0.85, 0.9, 0.1, 0.82], [0.6, 0.1, 0.7, 0.65]),             # a tie at chance (diverged runs)
    ([0.5, 0.5, 0.6], [0.5, 0.4, 0.5, 0.5]),                          # many ties
    ([0.2, 0.3, 0.1], [0.6, 0.7, 0.5]),                               # a below b
])
def test_mann_whitney_matches_enumeration(a, b):
    u, p = stats.mann_whitney_greater(a, b)
    u_ref, p_ref = brute_force_mw(a, b)
    assert u == pytest.approx(u_ref)
    assert p == pytest.approx(p_ref, rel=1e-9)


def test_mann_whitney_direction():
    hi, lo = [0.9, 0.91, 0.92, 0.93], [0.5, 0.51, 0.52, 0.53]
    u, p = stats.mann_whitney_greater(hi, lo)
    assert u == 16 and p == pytest.approx(1 / math.comb(8, 4))     # the one most extreme split of 70
    u, p = stats.mann_whitney_greater(lo, hi)
    assert u == 0 and p == pytest.approx(1.0)


def test_mann_whitney_large_sample_normal_approximation():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 1, 40), rng.normal(0, 1, 30)                 # C(70, 40) splits: not enumerable
    u, p = stats.mann_whitney_greater(a, b)
    assert u == sum(ai > bj for ai in a for bj in b)
    # Mann & Whitney 1947 normal approximation, no ties, continuity-corrected
    z = (u - 40 * 30 / 2 - 0.5) / math.sqrt(40 * 30 * (40 + 30 + 1) / 12)
    assert p == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)), rel=1e-9)


def test_mann_whitney_nan_dropped_and_empty():
    with_nan = stats.mann_whitney_greater([0.9, np.nan, 0.8], [0.1, 0.2])
    assert with_nan == stats.mann_whitney_greater([0.9, 0.8], [0.1, 0.2])
    assert all(math.isnan(v) for v in stats.mann_whitney_greater([np.nan], [0.1]))


# ---------------------------------------------------------------------------------------------- corrections

def test_holm_and_bh_hand_values():
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 -> running max 0.06
    np.testing.assert_allclose(stats.holm(p), [0.03, 0.06, 0.06, 0.02])
    # BH: 0.005*4/1 = 0.02, 0.01*4/2 = 0.02, 0.03*4/3 = 0.04, 0.04*4/4 = 0.04 -> running min from the top
    np.testing.assert_allclose(stats.benjamini_hochberg(p), [0.02, 0.04, 0.04, 0.02])
    np.testing.assert_allclose(stats.holm([0.5, 0.9]), [1.0, 1.0])   # capped at 1


def test_corrections_leave_nan_out_of_the_family():
    h = stats.holm([0.01, np.nan, 0.04])
    np.testing.assert_allclose(h[[0, 2]], [0.02, 0.04])
    assert math.isnan(h[1])
    assert math.isnan(stats.benjamini_hochberg([np.nan, 0.2])[0])
    assert stats.holm([]).size == 0


@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12))
@settings(max_examples=60)
def test_adjusted_p_properties(p):
    p = np.array(p)
    h, b = stats.holm(p), stats.benjamini_hochberg(p)
    assert np.all(h >= p - 1e-12) and np.all(b >= p - 1e-12)          # never below the raw p
    assert np.all(h <= 1) and np.all(b <= 1)
    assert np.all(h >= b - 1e-12)                                      # FWER control is stricter than FDR
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(h[order]) >= -1e-12) and np.all(np.diff(b[order]) >= -1e-12)   # monotone


# ---------------------------------------------------------------------------------------------- Spearman

def test_spearman_exact_small_and_scipy_large():
    rho, p = stats.spearman([1, 2, 3, 4], [10, 20, 30, 40])
    assert rho == pytest.approx(1.0) and p == pytest.approx(2 / 24)  # 2 of 4! orderings are as extreme
    rho, p = stats.spearman([1, 2, 3, 4, 5], [5, 4, 3, 2, 1])
    assert rho == pytest.approx(-1.0) and p == pytest.approx(2 / 120)
    x = np.arange(20.0)
    y = x ** 3 + np.random.default_rng(0).normal(0, 300, 20)
    rho, p = stats.spearman(x, y)
    d = x - np.argsort(np.argsort(y))
    assert rho == pytest.approx(1 - 6 * np.sum(d ** 2) / (20 * (20 ** 2 - 1)))  # Spearman's formula, no ties
    assert p < 1e-4


def test_spearman_degenerate():
    assert all(math.isnan(v) for v in stats.spearman([1, 2], [3, 4]))
    assert all(math.isnan(v) for v in stats.spearman([1, 1, 1], [1, 2, 3]))


# ---------------------------------------------------------------------------------------------- slope

def test_loglog_slope_recovers_planted_half():
    x = np.logspace(-6, -2, 12)
    fit = stats.loglog_slope(x, 3.0 * np.sqrt(x))
    assert fit.slope == pytest.approx(0.5) and fit.intercept == pytest.approx(math.log(3.0))
    rng = np.random.default_rng(1)
    y = 3.0 * np.sqrt(x) * np.exp(0.1 * rng.standard_normal(x.size))
    fit = stats.loglog_slope(x, y)
    assert fit.ci[0] < 0.5 < fit.ci[1] and abs(fit.slope - 0.5) < 0.05
    # the CI against an independent OLS: se = sqrt(s² / Sxx), t quantile with n - 2 dof
    lx, ly = np.log(x), np.log(y)
    b, a = np.polyfit(lx, ly, 1)
    s2 = np.sum((ly - a - b * lx) ** 2) / (x.size - 2)
    se = math.sqrt(s2 / np.sum((lx - lx.mean()) ** 2))
    half = 2.2281388519649385 * se                                   # t_{10, 0.975}
    assert fit.ci == pytest.approx((b - half, b + half))


def test_loglog_slope_degenerate():
    assert math.isnan(stats.loglog_slope([1, 1, 1], [1, 2, 3]).slope)
    assert math.isnan(stats.loglog_slope([1, 2], [1, 2]).slope)
    fit = stats.loglog_slope([1, 2, -1, 4, np.nan], [1, 2, 5, 4, 1])   # non-positive / nan dropped
    assert fit.n == 3 and fit.slope == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------- bootstrap

def test_bootstrap_mean_and_geometric_mean():
    rng = np.random.default_rng(2)
    x = rng.normal(5.0, 1.0, 400)
    m, (lo, hi) = stats.bootstrap_mean(x, seed=3)
    assert m == pytest.approx(x.mean())
    assert lo < 5.0 < hi
    assert hi - lo == pytest.approx(2 * 1.96 * x.std() / math.sqrt(400), rel=0.15)   # ≈ normal-theory width
    assert stats.bootstrap_mean(x, seed=3) == (m, (lo, hi))                          # seeded
    g, (glo, ghi) = stats.bootstrap_mean([2.0, 8.0], geometric=True)
    assert g == pytest.approx(4.0) and 2.0 - 1e-9 <= glo <= ghi <= 8.0 + 1e-9
    assert math.isnan(stats.bootstrap_mean([np.nan])[0])


def test_median_difference():
    a, b = [0.8, 0.82, 0.84, 0.86, 0.88], [0.5, 0.6, 0.7]
    d, (lo, hi) = stats.median_difference(a, b, seed=1)
    assert d == pytest.approx(0.84 - 0.6)
    assert 0.8 - 0.7 - 1e-12 <= lo <= d <= hi <= 0.88 - 0.5 + 1e-12   # bounded by the extreme medians


def test_dispersion_ratio():
    init = np.array([1e-3, 1e-2, 1e-1, 1.0, 3e-2])
    r, ci = stats.dispersion_ratio(init, init * 7)                   # kept its spread (shifted)
    assert r == pytest.approx(1.0) and ci == pytest.approx((1.0, 1.0))
    r, ci = stats.dispersion_ratio(init, np.full(5, 0.05))           # collapsed to one value
    assert r == 0.0 and ci == (0.0, 0.0)
    r, ci = stats.dispersion_ratio(init, np.sqrt(init))              # half the log spread
    assert r == pytest.approx(0.5) and ci == pytest.approx((0.5, 0.5))
    assert math.isnan(stats.dispersion_ratio([1, 1, 1], [1, 2, 3])[0])


def test_proportion_ci_clopper_pearson():
    p, (lo, hi) = stats.proportion_ci(0, 10)
    assert p == 0 and lo == 0 and hi == pytest.approx(1 - 0.025 ** (1 / 10))   # closed form at k = 0
    p, (lo, hi) = stats.proportion_ci(10, 10)
    assert hi == 1 and lo == pytest.approx(0.025 ** (1 / 10))
    assert math.isnan(stats.proportion_ci(0, 0)[0])


def test_robust_noise_ignores_trend_and_spikes():
    rng = np.random.default_rng(4)
    t = np.arange(2000)
    y = np.exp(-t / 300) + 0.02 * rng.standard_normal(t.size)
    assert stats.robust_noise(y) == pytest.approx(0.02, rel=0.1)
    y[::100] += 5.0                                                   # 20 huge spikes
    assert stats.robust_noise(y) == pytest.approx(0.02, rel=0.1)
    assert math.isnan(stats.robust_noise([1.0, 2.0]))
