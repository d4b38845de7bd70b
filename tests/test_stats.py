"""elr.analysis.stats against independent computations: brute-force enumeration, hand values, closed forms."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elr.analysis import stats


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


# ---------------------------------------------------------------------------------------------- Hodges–Lehmann

def enumerated_u_cdf(m, n):
    """P(U <= u), u = 0..mn, by enumerating all C(m+n, m) splits of the tie-free ranks 1..m+n."""
    idx = np.array(list(itertools.combinations(range(1, m + n + 1), m)))
    u = idx.sum(axis=1) - m * (m + 1) // 2                           # U = rank sum - m(m+1)/2
    return np.cumsum(np.bincount(u, minlength=m * n + 1)) / len(idx)


@pytest.mark.parametrize("m, n", [(1, 3), (2, 2), (3, 4), (4, 3), (4, 4), (5, 6), (8, 8)])
def test_u_null_distribution_and_ci_rank_match_enumeration(m, n):
    cdf = enumerated_u_cdf(m, n)
    np.testing.assert_allclose(stats._u_null_cdf(m, n), cdf, rtol=1e-12)
    k, cov = stats._hl_rank(m, n, 0.95)
    ks = [j for j in range(1, (m * n + 1) // 2 + 1) if 1 - 2 * cdf[j - 1] >= 0.95]   # P(U <= k-1) <= 2.5%
    assert k == (max(ks) if ks else 1)
    assert cov == pytest.approx(1 - 2 * cdf[k - 1], rel=1e-12)


def test_hl_rank_matches_published_critical_values():
    # two-tailed α = 0.05 Mann–Whitney critical U for n1 = n2 (reject iff U <= U_crit), standard tables
    # (e.g. Siegel & Castellan 1988, Table J; Zar, Biostatistical Analysis, Table B.11): k = U_crit + 1
    crit = {4: 0, 5: 2, 6: 5, 7: 8, 8: 13, 9: 17, 10: 23, 11: 30, 12: 37}
    for n, u_crit in crit.items():
        assert stats._hl_rank(n, n, 0.95)[0] == u_crit + 1, n
    assert stats._hl_rank(3, 3, 0.95) == (1, pytest.approx(0.9))     # no rank reaches 95%: the widest


def test_hodges_lehmann_estimate_and_ci_invert_the_mann_whitney_test():
    rng = np.random.default_rng(5)
    a, b = rng.normal(1.0, 1.0, 5), rng.normal(0.0, 1.0, 6)
    est, (lo, hi), cov = stats.hodges_lehmann(a, b)
    assert est == pytest.approx(np.median([ai - bj for ai in a for bj in b]))
    assert cov >= 0.95 and lo < est < hi
    # the CI is the set of shifts Δ that the two-sided exact test of (a - Δ vs b) keeps at 1 - cov:
    # just outside an end one one-sided p falls to (1 - cov)/2, just inside it is above 2.5%
    tail, eps = (1 - cov) / 2, 1e-9
    assert stats.mann_whitney_greater(b, a - (hi + eps))[1] == pytest.approx(tail)
    assert stats.mann_whitney_greater(b, a - (hi - eps))[1] > 0.025
    assert stats.mann_whitney_greater(a - (lo - eps), b)[1] == pytest.approx(tail)
    assert stats.mann_whitney_greater(a - (lo + eps), b)[1] > 0.025


def test_hodges_lehmann_monte_carlo_coverage():
    rng = np.random.default_rng(6)
    hits = 0
    for _ in range(2000):                                            # 6 vs 6, true shift 0.7
        _, (lo, hi), cov = stats.hodges_lehmann(rng.normal(0.7, 1.0, 6), rng.normal(0.0, 1.0, 6))
        hits += lo <= 0.7 <= hi
    assert hits / 2000 >= 0.94
    assert hits / 2000 == pytest.approx(cov, abs=0.015)             # ≈ 3 Monte Carlo SE of the exact 0.9589
    hits = 0
    for _ in range(1000):                                            # skewed, 4 vs 5: distribution-free
        _, (lo, hi), cov = stats.hodges_lehmann(rng.lognormal(0, 1, 4) + 2.0, rng.lognormal(0, 1, 5))
        hits += lo <= 2.0 <= hi
    assert hits / 1000 >= cov - 0.02


def test_hodges_lehmann_tiny_nan_and_large():
    est, ci, cov = stats.hodges_lehmann([3.0, 4.0], [1.0, 0.0])     # 2 vs 2: widest, coverage 1 - 2/6
    assert est == 3.0 and ci == (2.0, 4.0) and cov == pytest.approx(2 / 3)
    assert stats.hodges_lehmann([1.0, np.nan, 2.0], [0.0, np.inf]) == stats.hodges_lehmann([1.0, 2.0], [0.0])
    est, ci, cov = stats.hodges_lehmann([np.nan], [1.0])
    assert math.isnan(est) and all(math.isnan(v) for v in ci) and math.isnan(cov)
    # 60 vs 60 uses the continuity-corrected normal approximation: within 1e-3 of the exact null CDF
    # everywhere (2e-3 without the correction), and the same rank, coverage within 1e-3 of its exact one
    approx, exact = stats._u_null_cdf(60, 60), stats._u_null_cdf(60, 60, exact=True)
    assert np.max(np.abs(approx - exact)) < 1e-3
    k, cov = stats._hl_rank(60, 60, 0.95)
    assert k == int(np.flatnonzero(1 - 2 * exact[:1800] >= 0.95)[-1]) + 1
    assert cov == pytest.approx(1 - 2 * exact[k - 1], abs=1e-3)


# ---------------------------------------------------------------------------------------------- power

@pytest.mark.parametrize("m, n", [(5, 4), (8, 8), (12, 12)])        # exact, exact, normal (C(24,12) > limit)
def test_power_p_lookup_matches_mann_whitney_greater(m, n):
    rng = np.random.default_rng(7)
    for _ in range(4):
        a, b = rng.normal(0.8, 1.0, m), rng.normal(0.0, 1.0, n)
        u, p = stats.mann_whitney_greater(a, b)
        assert stats._mw_p_greater(np.array([u]), m, n)[0] == pytest.approx(p, rel=1e-9)


def test_power_shift_reproduces_the_rule_run_by_hand():
    out = stats.power_shift(5, 4, shift=0.8, sd=1.0, margin=0.3, n_sim=40, seed=8)
    rng = np.random.default_rng(8)                                   # the documented draw order
    a, b = rng.normal(0.8, 1.0, (40, 5)), rng.normal(0.0, 1.0, (40, 4))
    held = [stats.mann_whitney_greater(x, y)[1] < 0.05 for x, y in zip(a, b)]
    refuted = [not h and stats.hodges_lehmann(x, y)[1][1] < 0.3 for h, x, y in zip(held, a, b)]
    assert out["p_held"] == np.mean(held) and out["p_refuted"] == np.mean(refuted)
    assert out["p_inconclusive"] == pytest.approx(1 - np.mean(held) - np.mean(refuted))


def test_power_shift_rises_with_shift_and_holds_its_size():
    runs = [stats.power_shift(6, 6, shift=s, sd=1.0, margin=0.5) for s in (0.0, 0.5, 1.0, 2.0)]
    held = [r["p_held"] for r in runs]
    assert all(x < y for x, y in zip(held, held[1:])) and held[-1] > 0.9
    se = math.sqrt(0.05 * 0.95 / 2000)
    assert held[0] <= 0.05 + 3 * se                                  # exact test: size <= alpha
    refuted = [r["p_refuted"] for r in runs]
    assert all(x > y for x, y in zip(refuted, refuted[1:]))          # refuting gets rarer as the shift grows
    for r in runs:
        assert r["p_held"] + r["p_refuted"] + r["p_inconclusive"] == pytest.approx(1.0)
    assert stats.power_shift(6, 6, shift=0.0, sd=0.2, margin=0.5)["p_refuted"] > 0.9   # quiet arms: refutable
    small_real = stats.power_shift(6, 6, shift=0.3, sd=0.05, margin=0.5)   # significant and below the margin
    assert small_real["p_held"] == 1.0 and small_real["p_refuted"] == 0.0  # counts as held, once
    at_margin = stats.power_shift(6, 6, shift=0.5, sd=1.0, margin=0.5)
    assert at_margin["p_refuted"] <= 0.021 + 3 * math.sqrt(0.021 / 2000)   # P(hi < Δ) = (1 - 0.9589)/2
    assert stats.power_shift(6, 6, shift=1.0, sd=1.0, margin=0.5) == runs[2]   # seeded


# ---------------------------------------------------------------------------------------------- OLS

def test_ols_against_lstsq_and_closed_form_covariance():
    rng = np.random.default_rng(9)
    X = np.column_stack([rng.uniform(-9, -5, 10), rng.uniform(-10, -6, 10)])   # log lr0, log λ
    y = 0.5 * X[:, 0] + 0.5 * X[:, 1] + 1.0 + 0.1 * rng.standard_normal(10)
    fit = stats.ols(y, X)
    Z = np.column_stack([np.ones(10), X])
    beta = np.linalg.lstsq(Z, y, rcond=None)[0]
    s2 = np.sum((y - Z @ beta) ** 2) / 7
    se = np.sqrt(np.diag(s2 * np.linalg.inv(Z.T @ Z)))
    assert fit.n == 10 and fit.dof == 7
    np.testing.assert_allclose(fit.coef, beta[1:], rtol=1e-10)
    assert fit.intercept == pytest.approx(beta[0], rel=1e-10)
    np.testing.assert_allclose(fit.stderr, se[1:], rtol=1e-8)
    t = 2.3646242510102993                                           # t_{7, 0.975}
    np.testing.assert_allclose(fit.ci, [(b - t * s, b + t * s) for b, s in zip(beta[1:], se[1:])], rtol=1e-8)


def test_ols_one_predictor_is_linregress():
    rng = np.random.default_rng(10)
    x = np.logspace(-5, -2, 7)
    y = 2.0 * x ** 0.5 * np.exp(0.2 * rng.standard_normal(7))
    fit = stats.ols(np.log(y), np.log(x))
    lr = __import__("scipy").stats.linregress(np.log(x), np.log(y))
    half = __import__("scipy").stats.t.ppf(0.975, 5) * lr.stderr          # slope +- t_{n-2} SE
    assert fit.coef[0] == pytest.approx(lr.slope) and fit.stderr[0] == pytest.approx(lr.stderr)
    assert fit.intercept == pytest.approx(lr.intercept) and fit.ci[0] == pytest.approx(
        (lr.slope - half, lr.slope + half), rel=1e-10)


def test_ols_degenerate_and_nan_rows():
    x1 = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    exact = stats.ols(1 + 2 * x1 - 3 * x1 ** 2, np.column_stack([x1, x1 ** 2]))   # noise-free: CI collapses
    np.testing.assert_allclose(exact.coef, [2.0, -3.0], atol=1e-9)
    assert exact.ci[0] == pytest.approx((2.0, 2.0), abs=1e-9)
    for X in (np.column_stack([x1, 2 * x1]), np.column_stack([x1, np.ones(5)])):   # rank-deficient
        fit = stats.ols(x1 ** 2, X)
        assert all(math.isnan(v) for v in fit.coef + fit.stderr) and math.isnan(fit.ci[1][0])
    fit = stats.ols([1.0, 2.0, 4.0], np.column_stack([[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]]))  # dof 0
    assert fit.dof == 0 and math.isnan(fit.coef[0])
    with_nan = stats.ols([1.0, 2.0, np.nan, 3.5, 5.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0, np.inf])
    assert with_nan == stats.ols([1.0, 2.0, 3.5, 5.0], [1.0, 2.0, 4.0, 5.0]) and with_nan.n == 4


def test_binomial_sd():
    assert stats.binomial_sd(0.5, 200) == pytest.approx(0.0354, abs=1e-4)   # docs/science.md: ±3.5 points
    assert stats.binomial_sd(0.9, 1000) == pytest.approx(
        __import__("scipy").stats.binom.std(1000, 0.9) / 1000)
    assert stats.binomial_sd(1.0, 10) == 0.0
    assert math.isnan(stats.binomial_sd(0.5, 0)) and math.isnan(stats.binomial_sd(1.5, 10))
    assert math.isnan(stats.binomial_sd(float("nan"), 10))


# ---------------------------------------------------------------------------------------------- issue 10: edges

def test_proportion_ci_point_estimate_and_clopper_pearson_beta_quantiles():
    """k/n itself, and the CI against the Clopper–Pearson closed form by beta quantiles (scipy.stats.beta), at
    the default 95% and at 90%; n = 1 is a sample, not an empty one."""
    beta = __import__("scipy").stats.beta
    for k, n, level in ((3, 10, 0.95), (7, 20, 0.90), (1, 1, 0.95), (0, 1, 0.80)):
        p, (lo, hi) = stats.proportion_ci(k, n, level=level)
        t = (1 - level) / 2
        assert p == k / n
        assert lo == (pytest.approx(beta.ppf(t, k, n - k + 1), rel=1e-9) if k > 0 else 0.0)
        assert hi == (pytest.approx(beta.ppf(1 - t, k + 1, n - k), rel=1e-9) if k < n else 1.0)
    p, (lo, hi) = stats.proportion_ci(3, 10)
    assert (lo, hi) == (pytest.approx(beta.ppf(0.025, 3, 8), rel=1e-9), pytest.approx(beta.ppf(0.975, 4, 7), rel=1e-9))
    assert all(math.isnan(v) for v in (stats.proportion_ci(2, 0)[0], *stats.proportion_ci(2, 0)[1]))
    assert all(math.isnan(v) for v in (stats.proportion_ci(0, -1)[0], *stats.proportion_ci(0, -1)[1]))


def test_robust_noise_hand_values_and_three_values():
    """Hand-worked: y = 0, 1, 3, 4, 6 has diffs 1, 2, 1, 2 (median 1.5), |d - 1.5| = 0.5 each, MAD 0.5; a
    steady trend of 1.5 per step is removed, not added. Three values (two diffs) are enough."""
    assert stats.robust_noise([0.0, 1.0, 3.0, 4.0, 6.0]) == pytest.approx(1.4826 * 0.5 / math.sqrt(2), rel=1e-12)
    assert stats.robust_noise([0.0, 1.0, 3.0]) == pytest.approx(1.4826 * 0.5 / math.sqrt(2), rel=1e-12)
    assert stats.robust_noise([0.0, 10.0, 20.0, 30.0]) == 0.0                  # a pure trend has no noise
    assert stats.robust_noise([0.0, 1.0, np.nan, 3.0]) == pytest.approx(1.4826 * 0.5 / math.sqrt(2))


def test_mw_p_lookup_at_u_zero_and_exact_beyond_the_hl_pair_limit():
    """P(U >= 0) = 1 for every arm size; with an arm of one, U is uniform on 0..n (the lone value's rank), so
    P(U >= u) = (n + 1 - u) / (n + 1) exactly -- also at 1 vs 3000, where m·n > MW_EXACT_PAIRS but the
    3001 splits are enumerable: the lookup must stay exact there, as mann_whitney_greater is."""
    for m, n in ((1, 1), (2, 3), (4, 4)):
        assert stats._mw_p_greater(np.array([0.0]), m, n)[0] == 1.0
    np.testing.assert_allclose(stats._mw_p_greater(np.array([0.0, 1.0, 2.0, 3.0]), 1, 3), [1.0, 0.75, 0.5, 0.25])
    u = np.array([0.0, 1.0, 1500.0, 2999.0, 3000.0])
    np.testing.assert_allclose(stats._mw_p_greater(u, 1, 3000), (3001 - u) / 3001, rtol=1e-12)
    b = np.arange(3000.0)
    assert stats.mann_whitney_greater([2999.5], b) == (3000.0, pytest.approx(1 / 3001, rel=1e-12))


def test_an_arm_of_one_value_is_a_sample():
    """One value in an arm is enough (nan only for an empty arm): hand-worked U, exact p and HL shift."""
    assert stats.mann_whitney_greater([1.0], [0.0, -1.0]) == (2.0, pytest.approx(1 / 3))   # rank 3 of 3
    assert stats.mann_whitney_greater([0.0, -1.0], [1.0]) == (0.0, 1.0)
    assert stats.mann_whitney_greater([2.0], [1.0]) == (1.0, 0.5)
    # 1 vs 1: the one difference; no rank reaches 95%, so the widest interval with coverage 1 - 2 * 1/2 = 0
    assert stats.hodges_lehmann([3.0], [1.0]) == (2.0, (2.0, 2.0), 0.0)
    est, (lo, hi), cov = stats.hodges_lehmann([3.0], [1.0, 0.0, 2.5])
    assert (est, lo, hi) == (2.0, 0.5, 3.0) and cov == pytest.approx(0.5)    # 1 - 2 P(U <= 0) = 1 - 2/4
    est, (lo, hi), cov = stats.hodges_lehmann([1.0, 0.0, 2.5], [3.0])
    assert (est, lo, hi) == (-2.0, -3.0, -0.5) and cov == pytest.approx(0.5)


def test_exactly_at_the_exact_limit_p_is_enumerated(monkeypatch):
    """EXACT_LIMIT is inclusive ("up to this many permutations"): with the limit set to C(8, 4) = 70, 4 vs 4 is
    still enumerated (p = 1/70 for separated arms) in both mann_whitney_greater and the power lookup."""
    monkeypatch.setattr(stats, "EXACT_LIMIT", 70)
    assert stats.mann_whitney_greater([5.0, 6.0, 7.0, 8.0], [1.0, 2.0, 3.0, 4.0]) == (16.0, pytest.approx(1 / 70))
    assert stats._mw_p_greater(np.array([16.0, 0.0]), 4, 4) == pytest.approx([1 / 70, 1.0])
    monkeypatch.setattr(stats, "EXACT_LIMIT", 69)                           # one below: the normal approximation
    z = (16 - 8 - 0.5) / math.sqrt(16 * 9 / 12)
    assert stats.mann_whitney_greater([5.0, 6.0, 7.0, 8.0], [1.0, 2.0, 3.0, 4.0])[1] == pytest.approx(
        0.5 * math.erfc(z / math.sqrt(2)), rel=1e-9)
    assert stats._mw_p_greater(np.array([16.0]), 4, 4)[0] == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)), rel=1e-9)


def test_a_small_arm_beyond_the_exact_limit_uses_the_normal_approximation():
    """3 vs 100 (C(103, 3) = 176,851 splits): the continuity-corrected normal approximation, one-sided, by
    hand -- not scipy's 'auto' choice (exact for an arm of <= 8 without ties), nor the two-sided p."""
    a, b = np.array([50.5, 80.5, 99.5]), np.arange(100.0)
    u, p = stats.mann_whitney_greater(a, b)
    assert u == 51 + 81 + 100
    z = (u - 150 - 0.5) / math.sqrt(300 * 104 / 12)
    assert p == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)), rel=1e-9)
    assert stats._mw_p_greater(np.array([u]), 3, 100)[0] == pytest.approx(p, rel=1e-9)


def test_power_shift_counts_ties_as_half_and_alpha_margin_are_strict():
    """sd = 0 makes every difference exactly `shift`, so every data set has the same U and the same upper CI
    end. 1 vs 1, no shift: the one difference is a tie, U = 1/2 (Mann & Whitney 1947), and the lookup's
    continuous null gives p = P(U >= 1/2) = P(U = 1) = 1/2: held at alpha 0.6, not at alpha 0.5 (p < alpha).
    2 vs 2, no shift: U = 2 of 4, p = P(U >= 2) = 4/6. A shift of 1: U = m·n, p = 1/C(m+n, m), no ties."""
    ps = stats.power_shift
    assert ps(1, 1, shift=0.0, sd=0.0, margin=-1.0, alpha=0.6, n_sim=5)["p_held"] == 1.0
    assert ps(1, 1, shift=0.0, sd=0.0, margin=-1.0, alpha=0.5, n_sim=5)["p_held"] == 0.0
    assert ps(2, 2, shift=0.0, sd=0.0, margin=-1.0, alpha=0.67, n_sim=5)["p_held"] == 1.0
    assert ps(2, 2, shift=0.0, sd=0.0, margin=-1.0, alpha=0.66, n_sim=5)["p_held"] == 0.0
    assert ps(2, 2, shift=1.0, sd=0.0, margin=-1.0, alpha=0.17, n_sim=5)["p_held"] == 1.0   # p = 1/6
    assert ps(2, 2, shift=1.0, sd=0.0, margin=-1.0, alpha=0.16, n_sim=5)["p_held"] == 0.0
    # 1 vs 1, shift 0.5: p = 1/2, not held at 0.05; the CI's upper end is the difference 0.5 itself, and
    # "below the margin" is strict: refuted under a margin of 0.6, not under a margin of exactly 0.5
    assert ps(1, 1, shift=0.5, sd=0.0, margin=0.6, n_sim=5)["p_refuted"] == 1.0
    assert ps(1, 1, shift=0.5, sd=0.0, margin=0.5, n_sim=5) == {"p_held": 0.0, "p_refuted": 0.0, "p_inconclusive": 1.0}


def test_power_shift_defaults_are_2000_sets_from_seed_0():
    kw = dict(shift=0.6, sd=1.0, margin=0.2)
    out = stats.power_shift(2, 3, **kw)
    assert out == stats.power_shift(2, 3, n_sim=2000, seed=0, **kw)
    rng = np.random.default_rng(0)                                   # the documented draw, by hand
    a, b = rng.normal(0.6, 1.0, (2000, 2)), rng.normal(0.0, 1.0, (2000, 3))
    held = [stats.mann_whitney_greater(x, y)[1] < 0.05 for x, y in zip(a, b)]
    assert out["p_held"] == np.mean(held)


def test_binomial_sd_edges_of_n_and_p():
    assert stats.binomial_sd(0.5, 1) == 0.5                          # one image: sqrt(0.25 / 1)
    assert stats.binomial_sd(0.0, 10) == 0.0                         # p = 0 is an accuracy, with sd 0
    assert math.isnan(stats.binomial_sd(-0.1, 10))


def test_ols_shape_check_dof_one_and_the_degenerate_fit_fields():
    with pytest.raises(ValueError, match=r"^X of shape \(4, 2\) does not fit y of 3 values$"):
        stats.ols([1.0, 2.0, 3.0], np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"does not fit y of 3 values"):
        stats.ols([1.0, 2.0, 3.0], np.ones((3, 2, 2)))
    # dof = 1 (three points, one predictor) is a fit: against scipy's linregress and t_{1, 0.975} = 12.7062...
    sp = __import__("scipy").stats
    fit, lr = stats.ols([1.0, 2.0, 4.0], [1.0, 2.0, 3.0]), sp.linregress([1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    assert fit.dof == 1 and fit.coef[0] == pytest.approx(1.5) and fit.intercept == pytest.approx(lr.intercept)
    assert fit.ci[0] == pytest.approx((1.5 - 12.706204736174707 * lr.stderr, 1.5 + 12.706204736174707 * lr.stderr))
    bad = stats.ols([1.0, 2.0, 4.0], np.column_stack([[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]]))   # dof 0
    assert bad.n == 3 and bad.dof == 0 and math.isnan(bad.intercept)


def test_missing_values_given_as_none_or_narrow_dtypes_are_read_as_float64():
    """The module computes in float64 whatever it is handed: None (a missing value, e.g. a JSON null) reads as
    nan and is dropped like one; unsigned integers are not differenced modulo 256; a float32 U is looked up
    in float64."""
    np.testing.assert_allclose(stats.holm([0.01, None, 0.04]), [0.02, np.nan, 0.04])
    np.testing.assert_allclose(stats.benjamini_hochberg([0.01, None, 0.04]), [0.02, np.nan, 0.04])
    assert stats.ols([1.0, None, 2.0, 4.0, 3.0], [1.0, 2.0, 3.0, 4.0, 5.0]) == stats.ols([1.0, 2.0, 4.0, 3.0],
                                                                                         [1.0, 3.0, 4.0, 5.0])
    assert stats.ols([1.0, 5.0, 2.0, 4.0, 3.0], [1.0, None, 3.0, 4.0, 5.0]) == stats.ols([1.0, 2.0, 4.0, 3.0],
                                                                                         [1.0, 3.0, 4.0, 5.0])
    f = stats.finite([3, None, 1])
    assert f.dtype == np.float64 and f.tolist() == [3.0, 1.0]
    # uint8 5, 3, 4: diffs -2, +1 (median -0.5, |d + 0.5| = 1.5, 1.5), not 254, 1
    assert stats.robust_noise(np.array([5, 3, 4], dtype=np.uint8)) == pytest.approx(1.4826 * 1.5 / math.sqrt(2))
    z = (700 - 600 - 0.5) / math.sqrt(1200 * 71 / 12)
    assert stats._mw_p_greater(np.array([700], dtype=np.float32), 40, 30)[0] == pytest.approx(
        0.5 * math.erfc(z / math.sqrt(2)), rel=1e-12)


def test_hl_rank_at_its_edges_against_enumeration():
    """The largest rank k <= ceil(mn/2) whose coverage 1 - 2 P(U <= k-1) reaches the level, by enumeration:
    a level equal to an attainable coverage gets that rank (4 vs 4: P(U <= 2) = 4/70, so 62/70 gives k = 3),
    and a low level reaches the innermost rank (2 vs 2 at 30%: k = 2, D_(2) = D_(3), coverage 1 - 2·2/6)."""
    cdf = enumerated_u_cdf(4, 4)
    assert cdf[2] == pytest.approx(4 / 70)
    level = 1 - 2 * cdf[2]
    assert stats._hl_rank(4, 4, level) == (3, pytest.approx(62 / 70))
    assert stats._hl_rank(4, 4, level + 1e-6)[0] == 2
    assert stats._hl_rank(2, 2, 0.3) == (2, pytest.approx(1 / 3))
    assert stats._hl_rank(1, 3, 0.0) == (2, pytest.approx(0.0))     # 1 vs 3: rank 2 of 3, the median
    est, ci, cov = stats.hodges_lehmann([3.0, 4.0], [1.0, 0.0], level=0.3)   # differences 2, 3, 3, 4
    assert est == 3.0 and ci == (3.0, 3.0) and cov == pytest.approx(1 / 3)
