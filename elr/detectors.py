"""Detectors on per-epoch series: periodic (sawtooth) spikes, drop-and-recovery events, coincidence.

Pure functions of 1-D numpy arrays indexed by epoch position (index 0 = the first recorded epoch).
Non-finite values: a series is analysed up to its first non-finite value (a diverged run's record
ends there); a series too short for a detector gives a negative result whose `reason` says so,
never an exception. The defaults below are fixed before any study data is seen; each says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import median_filter
from scipy.signal import find_peaks

from elr.stats import robust_noise

# ---------------------------------------------------------------------------------------------- periodic spikes

# A spike must stand out by 5 robust noise sds (more for long series, see `prominence_k`): in a few
# hundred epochs of Gaussian noise the expected number of peaks that prominent is below one, so noise
# rarely supplies the MIN_CYCLES + 1 peaks needed.
PROMINENCE_K = 5.0
# At least 3 full cycles (4 spikes): two intervals cannot show regularity, three can.
MIN_CYCLES = 3
# Coefficient of variation of the spike intervals: spikes at random times (a Poisson process) give
# CV ~ 1; a period drifting by ±30% over the run gives ~0.2. 0.35 separates the two with margin.
MAX_CV = 0.35
# The first 10% of epochs are the initial transient (loss falling from ln 10), not the regime studied.
SKIP_FRACTION = 0.1
# Rolling-median detrending window: a quarter of the analysed series, so any period that can show
# MIN_CYCLES cycles (period <= n / 3) is mostly kept in the residual while the slow trend is removed.
DETREND_FRACTION = 0.25
# Below this many analysed epochs, 4 spikes with measurable intervals cannot be told from noise.
MIN_LENGTH = 20
# Surrogates, two kinds, both must be beaten (the larger p counts):
#  - the residual shuffled in time: keeps its values (spikes included) but not their order, so white
#    noise, or spikes at random times, do not pass;
#  - the series' epoch-to-epoch increments shuffled and summed again (a random walk with the same
#    steps), detrended the same way: red noise, which detrending turns into quasi-regular bumps, and
#    jumps at random times do not pass.
N_SURROGATES = 199     # smallest attainable p = 1/200 = 0.005
ALPHA = 0.05
# Noise floor relative to the series' range: a noiseless smooth series would otherwise have a noise
# scale of float round-off and call round-off wiggles spikes.
RELATIVE_FLOOR = 1e-6


@dataclass(frozen=True)
class Periodicity:
    periodic: bool
    peaks: np.ndarray                 # indices (into the input series) of the prominent spikes
    period: float | None              # median spike interval, in epochs
    cv: float | None                  # coefficient of variation of the spike intervals
    asymmetry: float | None           # (rise - fall) / (rise + fall) durations: +1 slow rise, sharp fall
    surrogate_p: float | None         # None when the surrogate test was not needed (already negative)
    reason: str
    noise: float | None = None        # the robust noise scale used for the prominence threshold


def finite_prefix(y) -> np.ndarray:
    """The series up to (excluding) its first non-finite value, as float64."""
    y = np.asarray(y, dtype=np.float64).ravel()
    bad = np.flatnonzero(~np.isfinite(y))
    return y[: bad[0]] if bad.size else y


def _window(n: int, window_fraction: float = DETREND_FRACTION) -> int:
    w = max(5, int(round(window_fraction * n)))
    return w if w % 2 else w + 1


def detrend(y: np.ndarray, *, log: bool | None = None, window_fraction: float = DETREND_FRACTION) -> np.ndarray:
    """Residual of y (on log scale if log, or if log is None and y > 0 everywhere) about its centred
    rolling median over window_fraction of the series: spikes are multiplicative in loss, norm and ELR,
    so a log scale makes one spike's size comparable across a run's decades. A 2-D y is detrended
    row by row (rows are series)."""
    y = np.asarray(y, dtype=np.float64)
    if log is None:
        log = bool(np.all(y > 0))
    z = np.log(y) if log else y
    w = _window(z.shape[-1], window_fraction)
    if z.ndim == 1:
        return z - median_filter(z, size=w, mode="nearest")
    # scipy's fast running median exists only for 1-D input: a 2-D (1, w) window is ~1000x slower
    return np.stack([row - median_filter(row, size=w, mode="nearest") for row in z])


def _noise(rows: np.ndarray) -> np.ndarray:
    """Per-row robust noise scale (stats.robust_noise), floored relative to the row's range."""
    d = np.diff(rows, axis=-1)
    mad = np.median(np.abs(d - np.median(d, axis=-1, keepdims=True)), axis=-1)
    sigma = 1.4826 * mad / math.sqrt(2.0)          # as stats.robust_noise (Hampel 1974 MAD scale)
    return np.maximum(np.maximum(sigma, RELATIVE_FLOOR * np.ptp(rows, axis=-1)), np.finfo(np.float64).tiny)


def prominence_k(n: int, k: float = PROMINENCE_K) -> float:
    """The prominence threshold in noise sds for a series of n epochs: k, raised for long series to the
    universal threshold of the noise of a difference, sqrt(2) · sqrt(2 ln n) (Donoho & Johnstone 1994):
    a peak's prominence is a difference of two noisy values, and the largest of n of those grows with n."""
    return max(k, 2.0 * math.sqrt(math.log(max(n, 2))))


def _spikes(r: np.ndarray, k: float) -> tuple[np.ndarray, float]:
    """Peaks of residual r with prominence >= prominence_k(len(r), k) · robust noise."""
    noise = float(_noise(r))
    return find_peaks(r, prominence=prominence_k(r.size, k) * noise)[0], noise


def _cv(peaks: np.ndarray, min_cycles: int) -> float:
    """CV of the intervals between peaks; +inf with fewer than min_cycles intervals."""
    if peaks.size < min_cycles + 1:
        return math.inf
    d = np.diff(peaks).astype(np.float64)
    return float(np.std(d, ddof=1) / np.mean(d))


def _asymmetry(r: np.ndarray, peaks: np.ndarray) -> float | None:
    """Sawtooth asymmetry over the cycles between consecutive peaks: fall = peak -> trough epochs,
    rise = trough -> next peak epochs; (median rise - median fall) / (median rise + median fall)."""
    if peaks.size < 2:
        return None
    troughs = np.array([a + int(np.argmin(r[a:b + 1])) for a, b in zip(peaks[:-1], peaks[1:])])
    rise = np.median(peaks[1:] - troughs)
    fall = np.median(troughs - peaks[:-1])
    return float((rise - fall) / (rise + fall))


def spikes(y, *, k: float = PROMINENCE_K, skip_fraction: float = SKIP_FRACTION,
           log: bool | None = None) -> np.ndarray:
    """Indices (into y) of prominent spikes, whether or not they are periodic (empty if too short)."""
    y = finite_prefix(y)
    start = int(math.floor(skip_fraction * y.size))
    if y.size - start < MIN_LENGTH:
        return np.array([], dtype=np.int64)
    return _spikes(detrend(y[start:], log=log), k)[0] + start


def periodicity(y, *, k: float = PROMINENCE_K, min_cycles: int = MIN_CYCLES, max_cv: float = MAX_CV,
                skip_fraction: float = SKIP_FRACTION, n_surrogates: int = N_SURROGATES,
                alpha: float = ALPHA, seed: int = 0, log: bool | None = None) -> Periodicity:
    """Periodic (sawtooth) spikes in y, epochs along the axis.

    Periodic iff, after the first skip_fraction of epochs and rolling-median detrending: at least
    min_cycles + 1 peaks of prominence >= prominence_k(n, k) · robust noise (stats.robust_noise), the CV of their
    intervals <= max_cv, and the surrogate p < alpha (see `surrogate_p`; each surrogate's spikes are
    found with its own noise scale). The surrogates run only when the other criteria pass.
    """
    none = np.array([], dtype=np.int64)
    y = finite_prefix(y)
    start = int(math.floor(skip_fraction * y.size))
    n = y.size - start
    if n < MIN_LENGTH:
        return Periodicity(False, none, None, None, None, None,
                           f"too short: {n} analysable epochs < {MIN_LENGTH}")
    z = y[start:]
    if np.ptp(z) == 0:
        return Periodicity(False, none, None, None, None, None, "constant series")
    r = detrend(z, log=log)
    peaks, noise = _spikes(r, k)
    cv = _cv(peaks, min_cycles)
    out_peaks = peaks + start
    period = float(np.median(np.diff(peaks))) if peaks.size >= 2 else None
    asym = _asymmetry(r, peaks)
    cv_out = cv if math.isfinite(cv) else None
    if peaks.size < min_cycles + 1:
        return Periodicity(False, out_peaks, period, cv_out, asym, None,
                           f"{peaks.size} spikes of prominence >= {prominence_k(n, k):.3g} x noise ({noise:.3g}); "
                           f"needs >= {min_cycles + 1} ({min_cycles} cycles)", noise)
    if cv > max_cv:
        return Periodicity(False, out_peaks, period, cv, asym, None,
                           f"{peaks.size} spikes but irregular: interval CV {cv:.2f} > {max_cv:g}", noise)
    p = surrogate_p(z, r, cv, k=k, min_cycles=min_cycles, n_surrogates=n_surrogates, seed=seed, log=log)
    periodic = p < alpha
    verdict = "periodic" if periodic else "not periodic: surrogates are as regular"
    return Periodicity(periodic, out_peaks, period, cv, asym, p,
                       f"{verdict}: {peaks.size} spikes, period {period:g} epochs, interval CV {cv:.2f} "
                       f"<= {max_cv:g}, surrogate p {p:.3g} ({n_surrogates} of each kind; alpha {alpha:g})",
                       noise)


def _as_regular(rows: np.ndarray, cv: float, k: float, min_cycles: int) -> int:
    """How many rows have spikes at least as regular (interval CV <= cv) as observed."""
    kk = prominence_k(rows.shape[-1], k)
    return sum(_cv(find_peaks(row, prominence=kk * s)[0], min_cycles) <= cv for row, s in zip(rows, _noise(rows)))


def surrogate_p(z: np.ndarray, r: np.ndarray, cv: float, *, k: float = PROMINENCE_K,
                min_cycles: int = MIN_CYCLES, n_surrogates: int = N_SURROGATES, seed: int = 0,
                log: bool | None = None) -> float:
    """max over the two surrogate kinds of (1 + #{surrogates with interval CV <= cv}) / (n + 1).

    z: the analysed series, r: its detrended residual, cv: the observed spike-interval CV.
    Surrogates are made in batches of rows (one vectorised shuffle, detrend and noise scale per batch).
    """
    rng = np.random.default_rng(seed)
    if log is None:
        log = bool(np.all(z > 0))
    zz = np.log(z) if log else z
    steps = np.diff(zz)
    batch = max(1, 2_000_000 // max(1, z.size))    # bound a batch to ~16 MB of float64
    hits_shuffle = hits_walk = 0
    for lo in range(0, n_surrogates, batch):
        n = min(batch, n_surrogates - lo)
        shuffled = rng.permuted(np.broadcast_to(r, (n, r.size)), axis=1)
        walks = zz[0] + np.concatenate([np.zeros((n, 1)), np.cumsum(
            rng.permuted(np.broadcast_to(steps, (n, steps.size)), axis=1), axis=1)], axis=1)
        hits_shuffle += _as_regular(shuffled, cv, k, min_cycles)
        hits_walk += _as_regular(detrend(walks, log=False), cv, k, min_cycles)
    return (1 + max(hits_shuffle, hits_walk)) / (n_surrogates + 1)


# ---------------------------------------------------------------------------------------------- drop and recovery

# A "sharp drop": at least 5 accuracy points (fraction 0.05) lost within 5 epochs ...
DROP = 0.05
WITHIN = 5
# ... and regained to within 1 point of the pre-drop level within 50 epochs of the bottom: quick
# against runs of hundreds to 10,000 epochs, slow enough for a loss spike's aftermath.
RECOVER_WITHIN = 50
TOLERANCE = 0.01
# The drop must also exceed 4 robust noise sds of the accuracy series, so that on a small, noisy test
# split ordinary epoch-to-epoch jitter is not called a drop: measured from the median of the WITHIN
# epochs before it (sd ~1.1 noise sds), a 4-sd dip has one-sided p ~2e-4 per epoch.
NOISE_K = 4.0


@dataclass(frozen=True)
class DropEvent:
    start: int        # last index before the fall still at the pre-drop level (within TOLERANCE of it)
    bottom: int       # index of the lowest accuracy between start and recovery
    recovered: int    # first index after the bottom back at the pre-drop level minus TOLERANCE
    depth: float      # pre-drop level - accuracy[bottom], as a fraction


def drop_events(acc, *, drop: float = DROP, within: int = WITHIN, recover_within: int = RECOVER_WITHIN,
                tolerance: float = TOLERANCE, noise_k: float = NOISE_K) -> list[DropEvent]:
    """Drop-and-recovery events in a test-accuracy series (fractions in [0, 1], one per epoch).

    An event: an epoch b with acc[b] <= level - max(drop, noise_k · robust noise), where level (the
    pre-drop level) is the median accuracy of the `within` epochs before b (robust to one noisy high),
    and an epoch r in (b, b + recover_within] with acc[r] >= level - tolerance. Events do not overlap
    (scanning resumes after r). A drop that never recovers (a collapse, a divergence) is not an event.
    Indices are positions in `acc`.
    """
    a = finite_prefix(acc)
    n = a.size
    if n < 3:
        return []
    noise = robust_noise(a)
    threshold = max(drop, noise_k * noise) if math.isfinite(noise) else drop
    events: list[DropEvent] = []
    b = 1
    while b < n:
        lo = max(0, b - within)
        level = float(np.median(a[lo:b]))
        if level - a[b] < threshold:
            b += 1
            continue
        after = np.flatnonzero(a[b + 1: b + 1 + recover_within] >= level - tolerance)
        if after.size == 0:
            b += 1
            continue
        r = b + 1 + int(after[0])
        s = lo + int(np.flatnonzero(a[lo:b] >= level - tolerance)[-1])   # exists: half are >= the median
        bottom = s + int(np.argmin(a[s:r + 1]))
        events.append(DropEvent(int(s), int(bottom), int(r), float(level - a[bottom])))
        b = r + 1
    return events


# ---------------------------------------------------------------------------------------------- coincidence

# A drop "coincides" with a spike if a spike lies in [start - 2, bottom + 2] epochs: a loss spike and
# the accuracy dip it causes are logged in the same or adjacent epochs.
COINCIDENCE_WINDOW = 2


def coincides(event: DropEvent, spike_idx, window: int = COINCIDENCE_WINDOW) -> bool:
    """Whether any spike index lies in [event.start - window, event.bottom + window]."""
    s = np.asarray(spike_idx)
    return bool(np.any((s >= event.start - window) & (s <= event.bottom + window)))


@dataclass(frozen=True)
class Coincidence:
    n_events: int
    n_coincident: int
    fraction: float | None    # n_coincident / n_events; None without events
    p: float | None           # Monte Carlo p of a fraction this high with events placed at random epochs


def coincidence(events_by_run: dict, spikes_by_run: dict, lengths: dict, *,
                window: int = COINCIDENCE_WINDOW, n_perm: int = 999, seed: int = 0) -> Coincidence:
    """How many drop events coincide with a spike of the same run, and whether more than chance.

    Null: each event (its start..bottom span kept) placed uniformly at random in its run; p =
    (1 + #{permutations with >= as many coincident events}) / (n_perm + 1).
    """
    items = [(e, np.asarray(spikes_by_run.get(run, []), dtype=np.int64), int(lengths[run]))
             for run, evs in events_by_run.items() for e in evs]
    if not items:
        return Coincidence(0, 0, None, None)
    observed = sum(coincides(e, s, window) for e, s, _ in items)
    rng = np.random.default_rng(seed)
    null = np.zeros(n_perm, dtype=np.int64)
    for e, s, n in items:
        span = e.bottom - e.start
        starts = rng.integers(0, max(1, n - span), n_perm)
        if s.size:
            lo, hi = starts - window, starts + span + window
            # derived: a spike in [lo, hi] iff the count of spikes <= hi exceeds the count < lo
            null += np.searchsorted(np.sort(s), hi, side="right") > np.searchsorted(np.sort(s), lo, side="left")
    p = (1 + int(np.sum(null >= observed))) / (n_perm + 1)
    return Coincidence(len(items), int(observed), observed / len(items), float(p))
