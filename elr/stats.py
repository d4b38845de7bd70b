"""Statistics for the claims: rank tests, bootstrap intervals, multiple-testing corrections, log-log fits.

Pure numpy/scipy functions, float64 throughout. NaN policy (every function): non-finite values are
dropped before computing (pairwise for paired data: a pair is dropped if either value is non-finite);
when too few values remain to compute a quantity, it is returned as nan (never raised), so one bad run
never crashes a claim. Every resampling function takes a `seed` and is deterministic given it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as st

LEVEL = 0.95          # confidence level of every interval here
N_BOOT = 10_000       # bootstrap resamples: Monte Carlo error of a 2.5% quantile ~ 0.16% at this size
EXACT_LIMIT = 100_000  # up to this many permutations, p-values are computed by exact enumeration


def finite(x) -> np.ndarray:
    """1-D float64 copy of `x` without its non-finite entries."""
    x = np.asarray(x, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def finite_pairs(x, y) -> tuple[np.ndarray, np.ndarray]:
    """Paired values with every pair holding a non-finite member dropped."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired data of different lengths: {x.size} and {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


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
    if math.comb(a.size + b.size, a.size) <= EXACT_LIMIT:
        method = st.PermutationMethod(n_resamples=EXACT_LIMIT)  # >= all splits: scipy enumerates them
    else:
        method = "asymptotic"
    res = st.mannwhitneyu(a, b, alternative="greater", method=method)
    return float(res.statistic), float(res.pvalue)


def spearman(x, y) -> tuple[float, float]:
    """Spearman rank correlation and its two-sided p-value: (rho, p).

    Exact permutation p (all n! orderings) for n <= 8, where the t approximation is poor; scipy's
    t approximation above. (nan, nan) for fewer than 3 pairs or a constant variable.
    """
    x, y = finite_pairs(x, y)
    n = x.size
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    rx, ry = st.rankdata(x), st.rankdata(y)
    rho = float(np.corrcoef(rx, ry)[0, 1])  # Spearman 1904: Pearson correlation of the ranks
    if n <= 8:
        perms = np.array(list(itertools.permutations(range(n))))
        ryp = ry[perms]
        rxc = rx - rx.mean()
        rypc = ryp - ryp.mean(axis=1, keepdims=True)
        r = (rypc @ rxc) / (np.linalg.norm(rxc) * np.linalg.norm(rypc, axis=1))
        p = float(np.mean(np.abs(r) >= abs(rho) - 1e-12))
    else:
        p = float(st.spearmanr(x, y).pvalue)
    return rho, p


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


# ---------------------------------------------------------------------------------------------- bootstrap

def _percentile_ci(samples: np.ndarray, level: float) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return math.nan, math.nan
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(samples, [alpha, 1.0 - alpha])   # Efron & Tibshirani 1993, percentile interval
    return float(lo), float(hi)


def median_difference(a, b, *, n_boot: int = N_BOOT, seed: int = 0,
                      level: float = LEVEL) -> tuple[float, tuple[float, float]]:
    """median(a) - median(b) with a percentile bootstrap CI (each arm resampled independently).
    (nan, (nan, nan)) if either arm is empty."""
    a, b = finite(a), finite(b)
    if a.size == 0 or b.size == 0:
        return math.nan, (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    ma = np.median(a[rng.integers(0, a.size, (n_boot, a.size))], axis=1)
    mb = np.median(b[rng.integers(0, b.size, (n_boot, b.size))], axis=1)
    return float(np.median(a) - np.median(b)), _percentile_ci(ma - mb, level)


def bootstrap_mean(x, *, geometric: bool = False, n_boot: int = N_BOOT, seed: int = 0,
                   level: float = LEVEL) -> tuple[float, tuple[float, float]]:
    """Mean of x (or its geometric mean exp(mean(log x)), for ratios) with a percentile bootstrap CI.
    Geometric: non-positive values are dropped with the non-finite ones. (nan, (nan, nan)) if empty."""
    x = finite(x)
    if geometric:
        x = np.log(x[x > 0])
    if x.size == 0:
        return math.nan, (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    boot = x[rng.integers(0, x.size, (n_boot, x.size))].mean(axis=1)
    est, (lo, hi) = float(x.mean()), _percentile_ci(boot, level)
    if geometric:
        return math.exp(est), (math.exp(lo), math.exp(hi))
    return est, (lo, hi)


def dispersion_ratio(initial, final, *, n_boot: int = N_BOOT, seed: int = 0,
                     level: float = LEVEL) -> tuple[float, tuple[float, float]]:
    """R = sd(log final) / sd(log initial) for paired positive values, with a percentile bootstrap CI
    (runs resampled as pairs). R -> 0 when values converge to one value, R ~ 1 when they keep their
    initial spread. Pairs with a non-positive or non-finite member are dropped; nan for < 3 pairs or
    no initial spread; resamples with no initial spread are skipped.
    """
    i, f = finite_pairs(initial, final)
    keep = (i > 0) & (f > 0)
    li, lf = np.log(i[keep]), np.log(f[keep])
    if li.size < 3 or np.std(li, ddof=1) == 0:
        return math.nan, (math.nan, math.nan)
    est = float(np.std(lf, ddof=1) / np.std(li, ddof=1))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, li.size, (n_boot, li.size))
    si, sf = np.std(li[idx], axis=1, ddof=1), np.std(lf[idx], axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = np.where(si > 0, sf / si, np.nan)
    return est, _percentile_ci(boot, level)


# ---------------------------------------------------------------------------------------------- regression

@dataclass(frozen=True)
class SlopeFit:
    slope: float
    intercept: float
    ci: tuple[float, float]   # t-based CI of the slope at `level`
    stderr: float
    n: int


def loglog_slope(x, y, *, level: float = LEVEL) -> SlopeFit:
    """Least-squares slope of log y on log x with a t-based CI (n - 2 degrees of freedom).

    Pairs with a non-positive or non-finite member are dropped; nan fields for fewer than 3 pairs or
    no spread in x. With exactly collinear points the CI collapses to the slope.
    """
    x, y = finite_pairs(x, y)
    keep = (x > 0) & (y > 0)
    lx, ly = np.log(x[keep]), np.log(y[keep])
    n = lx.size
    if n < 3 or np.ptp(lx) == 0:
        return SlopeFit(math.nan, math.nan, (math.nan, math.nan), math.nan, n)
    fit = st.linregress(lx, ly)
    half = st.t.ppf(0.5 + level / 2.0, n - 2) * fit.stderr   # slope ± t_{n-2, 1-α/2} · SE (OLS)
    return SlopeFit(float(fit.slope), float(fit.intercept),
                    (float(fit.slope - half), float(fit.slope + half)), float(fit.stderr), n)


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
