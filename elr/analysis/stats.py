"""Statistics for the claims: exact rank tests, Hodges–Lehmann intervals, power, multiple-testing corrections, OLS.

Pure numpy/scipy functions, float64 throughout. NaN policy (every function): non-finite values are
dropped before computing (pairwise for paired data: a pair is dropped if either value is non-finite);
when too few values remain to compute a quantity, it is returned as nan (never raised), so one bad run
never crashes a claim. Every resampling function takes a `seed` and is deterministic given it.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as st

LEVEL = 0.95          # confidence level of every interval here
EXACT_LIMIT = 100_000  # up to this many permutations, p-values are computed by exact enumeration


def finite(x) -> np.ndarray:
    """1-D float64 copy of `x` without its non-finite entries."""
    x = np.asarray(x, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


# ---------------------------------------------------------------------------------------------- rank tests

def mann_whitney_greater(a, b) -> tuple[float, float]:
    """One-sided Mann–Whitney U test of "a tends to be larger than b": returns (U, p).

    U = #{(i, j): a_i > b_j} + 0.5 #{a_i = b_j} (Mann & Whitney 1947), the count for `a`.
    p is exact by enumerating every split of the pooled values when there are at most EXACT_LIMIT
    splits (ties handled exactly: 8 vs 8 runs is C(16, 8) = 12,870 splits), otherwise the normal
    approximation with tie and continuity corrections. (nan, nan) if either arm is empty.
    """
    a, b = finite(a), finite(b)
    if a.size == 0 or b.size == 0:
        return math.nan, math.nan
    if math.comb(a.size + b.size, a.size) > EXACT_LIMIT:
        res = st.mannwhitneyu(a, b, alternative="greater", method="asymptotic")
        return float(res.statistic), float(res.pvalue)
    x = np.concatenate([a, b])
    # derived: with C_ij = [x_i > x_j] + [x_i = x_j]/2, C_ij + C_ji = 1, so the U of any m-subset S of the
    # pooled values is sum_{i in S} rowsum_i - m^2/2; every split enumerated (works for an arm of one, too)
    rows = ((x[:, None] > x[None, :]) + 0.5 * (x[:, None] == x[None, :])).sum(axis=1)
    u_all = rows[np.array(list(itertools.combinations(range(x.size), a.size)))].sum(axis=1) - a.size**2 / 2
    u = float(rows[:a.size].sum() - a.size**2 / 2)
    return u, float(np.mean(u_all >= u - 1e-9))


# ---------------------------------------------------------------------------------------------- corrections

def holm(p) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values, in the input order.

    Sorted ascending p_(1..m): adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)). Non-finite entries are
    left out of the family (m counts the finite ones) and returned as nan.
    """
    p = np.asarray(p, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = idx.size
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]                  # Holm 1979: (m - j + 1) p_(j), j from 1
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out


def benjamini_hochberg(p) -> np.ndarray:
    """Benjamini–Hochberg (1995) adjusted p-values (scipy.stats.false_discovery_control), input order.
    Non-finite entries are left out of the family and returned as nan."""
    p = np.asarray(p, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    keep = np.isfinite(p)
    if keep.any():
        out[keep] = st.false_discovery_control(p[keep], method="bh")
    return out


# ---------------------------------------------------------------------------------------------- proportions

def proportion_ci(k: int, n: int, *, level: float = LEVEL) -> tuple[float, tuple[float, float]]:
    """k/n with the Clopper–Pearson exact CI; (nan, (nan, nan)) for n = 0."""
    if n <= 0:
        return math.nan, (math.nan, math.nan)
    ci = st.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return k / n, (float(ci.low), float(ci.high))


def robust_noise(y) -> float:
    """Robust scale of white noise on a slowly varying signal: 1.4826 · MAD(diff(y)) / sqrt(2).

    derived: for y_t = s_t + e_t with smooth s and i.i.d. Gaussian e of sd σ, diff(y) ≈ e_t - e_{t-1}
    has sd σ·sqrt(2), and 1.4826·MAD estimates a Gaussian sd (Hampel 1974); a few large jumps (spikes)
    do not move the median. nan for fewer than 3 finite values.
    """
    y = finite(y)
    if y.size < 3:
        return math.nan
    d = np.diff(y)
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2.0))


# ---------------------------------------------------------------------------------------------- shift, power

MW_EXACT_PAIRS = 2_500   # HL CI: the null distribution of U is exact up to m·n pairs (cost ~ min(m,n)·m·n)


@functools.lru_cache(maxsize=256)
def _u_null_counts(m: int, n: int) -> tuple[int, ...]:
    """#{m-subsets of m+n tie-free ranks with U = u}, u = 0..m·n, as exact Python integers.

    Their generating function is the Gaussian binomial [m+n choose m]_q = prod_{i=1..m}
    (1 - q^(n+i)) / (1 - q^i) (Mann & Whitney 1947; Andrews 1976, Theory of Partitions §3.3): multiply
    by (1 - q^(n+i)), then divide by (1 - q^i) (a running sum with stride i). Cost O(m · m·n)."""
    if m > n:
        return _u_null_counts(n, m)                           # U and m·n - U: the pmf is symmetric
    poly = np.array([1], dtype=object)
    for i in range(1, m + 1):
        t = np.zeros(i * n + i + 1, dtype=object)
        t[: poly.size] += poly
        t[n + i:] -= poly
        for r in range(i):
            t[r::i] = np.cumsum(t[r::i])
        poly = t[: i * n + 1]
    return tuple(int(c) for c in poly)


@functools.lru_cache(maxsize=256)
def _u_null_cdf(m: int, n: int, exact: bool | None = None) -> np.ndarray:
    """P(U <= u) for u = 0..m·n under H0 (continuous data, no ties), U the Mann–Whitney count of an arm
    of m against an arm of n. Exact when `exact` or (None) m·n <= MW_EXACT_PAIRS, else normal approx."""
    mn = m * n
    if exact is None:
        exact = mn <= MW_EXACT_PAIRS
    if exact:
        total = math.comb(m + n, m)
        counts = itertools.accumulate(_u_null_counts(m, n))
        cdf = np.array([c / total for c in counts])           # int / int: one rounding each
    else:
        u = np.arange(mn + 1, dtype=np.float64)
        sd = math.sqrt(mn * (m + n + 1) / 12.0)               # Mann & Whitney 1947: var U = mn(m+n+1)/12
        cdf = st.norm.cdf((u + 0.5 - mn / 2.0) / sd)          # with continuity correction
    cdf.flags.writeable = False
    return cdf


def _hl_rank(m: int, n: int, level: float) -> tuple[int, float]:
    """(k, coverage) of the Moses CI [D_(k), D_(mn+1-k)]: the largest k >= 1 with
    coverage = 1 - 2 P(U <= k-1) >= level; k = 1 (the widest interval) if none reaches it."""
    cdf = _u_null_cdf(m, n)
    # Hollander & Wolfe 1999 §4.3 (Moses 1965): P(D_(k) <= Δ <= D_(mn+1-k)) = 1 - 2 P(U <= k-1)
    ok = np.flatnonzero(1.0 - 2.0 * cdf[: (m * n + 1) // 2] >= level - 1e-12)   # index = k - 1
    k = int(ok[-1]) + 1 if ok.size else 1
    return k, float(1.0 - 2.0 * cdf[k - 1])


def hodges_lehmann(a, b, *, level: float = LEVEL) -> tuple[float, tuple[float, float], float]:
    """Hodges–Lehmann shift of a over b with its distribution-free CI: (estimate, (lo, hi), coverage).

    estimate = median of the m·n differences a_i - b_j (Hodges & Lehmann 1963). CI = [D_(k), D_(mn+1-k)]
    over the sorted differences (Moses; Lehmann 1975; Hollander & Wolfe), k the largest rank whose
    coverage 1 - 2 P(U <= k-1) under the Mann–Whitney null is >= level. The null distribution is exact
    for m·n <= MW_EXACT_PAIRS (8 vs 8: k = 14 of 64, coverage 0.9502), the normal approximation above.
    When no k reaches `level` (3 vs 3 at most 0.90, 2 vs 2 at most 0.67) the widest interval
    [min, max difference] is returned with its lower coverage: check the third value. Coverage
    assumes continuous data (with ties it is approximate). (nan, (nan, nan), nan) if an arm is empty.
    """
    a, b = finite(a), finite(b)
    if a.size == 0 or b.size == 0:
        return math.nan, (math.nan, math.nan), math.nan
    d = np.sort((a[:, None] - b[None, :]).ravel())
    k, coverage = _hl_rank(a.size, b.size, level)
    return float(np.median(d)), (float(d[k - 1]), float(d[d.size - k])), coverage


def _mw_p_greater(u: np.ndarray, m: int, n: int) -> np.ndarray:
    """One-sided Mann–Whitney p = P(U >= u) for continuous data, as mann_whitney_greater computes it:
    exact when C(m+n, m) <= EXACT_LIMIT, else the continuity-corrected normal approximation."""
    u = np.asarray(u, dtype=np.float64)
    mn = m * n
    if math.comb(m + n, m) > EXACT_LIMIT:
        sd = math.sqrt(mn * (m + n + 1) / 12.0)               # Mann & Whitney 1947: var U = mn(m+n+1)/12
        return st.norm.sf((u - mn / 2.0 - 0.5) / sd)          # as scipy's asymptotic "greater"
    cdf = np.concatenate([[0.0], _u_null_cdf(m, n, exact=True)])    # cdf[t] = P(U <= t - 1)
    return 1.0 - cdf[np.ceil(u - 1e-9).astype(int)]           # P(U >= u) = 1 - P(U <= ceil(u) - 1)


def power_shift(n_a: int, n_b: int, *, shift: float, sd: float, margin: float, alpha: float = 0.05,
                n_sim: int = 2_000, seed: int = 0, level: float = LEVEL) -> dict:
    """Simulated outcome rates of the H3 decision rule for normal data: arm a ~ N(shift, sd), arm b ~
    N(0, sd), n_a and n_b values, n_sim data sets (drawn as rng.normal(shift, sd, (n_sim, n_a)) then
    rng.normal(0, sd, (n_sim, n_b)) from default_rng(seed)).

    Returns {"p_held": fraction with one-sided Mann–Whitney p < alpha (mann_whitney_greater's p for data
    without ties; the normal data drawn here has ties with probability zero, and a tied U is looked up in the
    same no-ties null distribution),
    "p_refuted": fraction not held whose Hodges–Lehmann CI (at `level`) has its upper end < margin,
    "p_inconclusive": the rest}. The three are exclusive and sum to 1: a data set both significant and
    below the margin counts as held. The null distribution of U and the CI rank are computed once.
    """
    rng = np.random.default_rng(seed)
    a = rng.normal(shift, sd, (n_sim, n_a))
    b = rng.normal(0.0, sd, (n_sim, n_b))
    d = (a[:, :, None] - b[:, None, :]).reshape(n_sim, n_a * n_b)
    u = (d > 0).sum(axis=1) + 0.5 * (d == 0).sum(axis=1)      # Mann & Whitney 1947 U for arm a
    held = _mw_p_greater(u, n_a, n_b) < alpha
    k, _ = _hl_rank(n_a, n_b, level)
    hi = np.sort(d, axis=1)[:, d.shape[1] - k]                # D_(mn+1-k), as hodges_lehmann
    refuted = ~held & (hi < margin)
    p_held, p_refuted = float(held.mean()), float(refuted.mean())
    return {"p_held": p_held, "p_refuted": p_refuted, "p_inconclusive": 1.0 - p_held - p_refuted}


@dataclass(frozen=True)
class OLSFit:
    coef: tuple[float, ...]                    # one per predictor (column of X), intercept excluded
    ci: tuple[tuple[float, float], ...]        # t-based CI of each coefficient at `level`
    stderr: tuple[float, ...]
    intercept: float
    n: int                                     # rows used (after dropping non-finite ones)
    dof: int                                   # n - k - 1


def ols(y, X, *, level: float = LEVEL) -> OLSFit:
    """Least squares of y on the k columns of X plus an intercept, with t-based CIs (n - k - 1 dof).

    X: shape (n,) for one predictor or (n, k). Rows with a non-finite y or X entry are dropped. nan
    fields (n and dof still reported) when dof < 1 or [1, X] is rank-deficient (e.g. a constant
    predictor, or two proportional ones). With one predictor this is scipy.stats.linregress's fit.
    """
    y = np.asarray(y, dtype=np.float64).ravel()
    X = np.asarray(X, dtype=np.float64)
    X = X.reshape(-1, 1) if X.ndim == 1 else X
    if X.ndim != 2 or X.shape[0] != y.size:
        raise ValueError(f"X of shape {X.shape} does not fit y of {y.size} values")
    keep = np.isfinite(y) & np.all(np.isfinite(X), axis=1)
    y, X = y[keep], X[keep]
    n, k = X.shape
    dof = n - k - 1
    Z = np.column_stack([np.ones(n), X])
    if dof < 1 or np.linalg.matrix_rank(Z) < k + 1:
        nan = (math.nan,) * k
        return OLSFit(nan, ((math.nan, math.nan),) * k, nan, math.nan, n, dof)
    q, r = np.linalg.qr(Z)
    beta = np.linalg.solve(r, q.T @ y)                        # normal equations via QR: R β = Qᵀ y
    s2 = float(np.sum((y - Z @ beta) ** 2)) / dof             # unbiased residual variance, RSS / (n - k - 1)
    r_inv = np.linalg.inv(r)
    se = np.sqrt(s2 * np.sum(r_inv ** 2, axis=1))             # Var β = s² (ZᵀZ)⁻¹ = s² R⁻¹ R⁻ᵀ
    half = st.t.ppf(0.5 + level / 2.0, dof) * se              # β ± t_{n-k-1, 1-α/2} · SE (OLS)
    return OLSFit(tuple(float(v) for v in beta[1:]),
                  tuple((float(b - h), float(b + h)) for b, h in zip(beta[1:], half[1:])),
                  tuple(float(v) for v in se[1:]), float(beta[0]), n, dof)


def binomial_sd(p: float, n: int) -> float:
    """sd of an accuracy p measured on n independent test images, sqrt(p(1-p)/n) (binomial proportion;
    docs/science.md: 200 images at p = 0.5 give ±3.5 points). nan for n <= 0 or p outside [0, 1]."""
    p = float(p)
    if not (n > 0 and 0.0 <= p <= 1.0):
        return math.nan
    return math.sqrt(p * (1.0 - p) / n)                       # Var(k/n) = p(1-p)/n for k ~ Binomial(n, p)
