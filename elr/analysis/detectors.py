"""Detectors on per-epoch series: destabilisation episodes and whether they recur periodically,
drop-and-recovery events, their coincidence, and the detectors' sensitivity to effects injected into a run.

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

from elr.analysis.stats import robust_noise


def finite_prefix(y) -> np.ndarray:
    """The series up to (excluding) its first non-finite value, as float64."""
    y = np.asarray(y, dtype=np.float64).ravel()
    bad = np.flatnonzero(~np.isfinite(y))
    return y[: bad[0]] if bad.size else y


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


# ------------------------------------------------------------------------------------------ destabilisation episodes
#
# Lobacheva et al. (NeurIPS 2021, arXiv 2106.15739) §3: once the train loss is near 0, weight decay
# shrinks the scale-invariant norm rho, the ELR eta/rho^2 grows until a step is too large; the train
# loss spikes, rho jumps up, the ELR drops, and a new cycle begins. The period drifts over a run (a
# CPU ConvNetSI: ~13 epochs early, ~23 a thousand epochs later), so regularity is judged *locally*
# (successive intervals), not by one coefficient of variation. Loss, norm and ELR are tested jointly,
# as one test per run: under the seed's rule the ELR is a function of the norm.

# Converged: the first epoch whose train loss is <= 0.1 x the median loss of the first 3 epochs. The
# first epochs sit near ln(#classes) (2.3 for CIFAR-10; epoch 1 can be higher still after a large first
# step, hence a median of 3); a tenth of that (~0.23) is a run that fits most of its training set, the
# regime where the gradient fades and weight decay takes over the norm (Lobacheva et al. 2021 §3).
CONVERGED_FRACTION = 0.1
CONVERGED_BASE = 3
# Below this many epochs after convergence, MIN_EPISODES episodes with measurable intervals cannot occur.
MIN_LENGTH = 20
# The episode leads with the norm: log rho must rise above its drift by >= EPISODE_K robust sds of its
# increments about that drift (one-sided, see `_noise_scales`) within e..e+2, and above its e-1 value (a
# jump: a loss blip while the norm decays fast only slows the decay for an epoch, which can be many sds
# above the drift where the norm is otherwise smooth); and log ELR fall below *its* drift by >= EPISODE_K
# of its own sds in the same epochs. 5 one-sided sds: p <= 3e-7 per epoch for Gaussian noise, ~3e-3 for
# the 3-epoch sum of a random walk's steps (red noise).
EPISODE_K = 5.0
# The loss confirms: max(l[e], l[e+1]) - l[e-1] >= max(ln 1.5, LOSS_K robust sds of the log loss). Not
# every episode is a x10-x50 spike from a re-converged loss: one that starts while the loss is still
# up from the last (the norm then has less to regain) raises it x2-x3 (ln 2-ln 3 = 0.7-1.1, below the
# ln 2 and 5-sd bar of a loss-led test at the CPU runs' log-loss noise of 0.2). 3 sds: each of the two
# differences (sd sqrt(2)·sigma) passes by chance with p ~0.017, so the norm and ELR gates carry the test.
LOSS_K = 3.0
MIN_LOSS_JUMP = math.log(1.5)
# Loss jump: within e..e+1 (2 epochs) of e-1; norm jump and ELR drop: within e..e+2 (3 epochs). Real
# episodes spread over 1-2 logged epochs (the loss rises in one epoch, the norm keeps rising one more).
LOSS_SPAN = 2
NORM_SPAN = 3
# Between episodes log rho falls steadily (weight decay, ~2·eta·lambda per step) and log ELR rises; a
# jump or a drop is measured against that drift: the rolling median of the series' increments over 15
# epochs, long against an episode's 1-3 jump epochs (the median stays on the drift) and short against
# the run (the decay rate, proportional to the lr, is followed as it changes). An ELR "drop" is thus a
# fall below where the drift would have taken it, not necessarily below the previous epoch's value.
DRIFT_WINDOW = 15
# Floor of the log-norm increment noise: between episodes the norm is so smooth (increments vary by
# ~1e-4) that float32 logging and epoch averaging would count as jumps; with the floor a norm jump is
# >= EPISODE_K x 1e-3 = 0.5% above the drift, well below a destabilisation's (several % and more).
# The ELR's floor is twice that: at a fixed lr, log ELR = log lr - 2 log rho.
NORM_NOISE_FLOOR = 1e-3
ELR_NOISE_FLOOR = 2e-3
# A cross-entropy train loss of exactly 0 (float32 round-off: resolution ~1e-7 of order-1 logits) is
# floored here before taking logs; a norm or ELR <= 0 is invalid and ends the analysed prefix.
LOSS_FLOOR = 1e-7
# Candidate epochs at most 3 apart (chained) are one episode, placed at its largest one-epoch loss rise
# (see `_merge`): an episode's loss rise and norm rise span up to NORM_SPAN epochs, so its neighbours
# also pass the tests.
MERGE_GAP = 3
# The closest two episodes are reported in practice, and the spacing the surrogates keep: MERGE_GAP +
# LOSS_SPAN = 5 epochs. derived: a spike at e makes e-1 a candidate too (its loss window e-1..e reaches the
# spike, its norm window the jump), so an episode's candidates span e-1..e and the next one's first
# candidate e'-1 must be > e + MERGE_GAP, i.e. e' - e >= MERGE_GAP + 2 (down to MERGE_GAP only for an
# episode without that leading candidate: none in 200 generated Poisson runs, whose smallest interval
# found is 5). Surrogates placing episodes closer than the detector reports them would look less regular
# than random times do in its output: with MERGE_GAP as the spacing, p < 0.05 in 14.5% of 200 generated
# Poisson-time runs (8% with MIN_SPACING; tests/test_calibration.py).
MIN_SPACING = MERGE_GAP + LOSS_SPAN
# At least 4 episodes (3 intervals, 2 successive ratios): fewer cannot show regularity.
MIN_EPISODES = 4
# Local irregularity: median over successive intervals of |ln(d_{i+1}/d_i)|. Intervals of a Poisson
# process are i.i.d. exponential, so ln(d_{i+1}/d_i) is standard logistic (the log of an F(2, 2)
# variate) and |.| has median ln 3 = 1.10 (P(|L| <= x) = tanh(x/2)); a period drifting by 2x over ~10
# cycles with +-1-2 epoch jitter gives 0.1-0.3. 0.5 (successive intervals typically within x1.65)
# separates the two: one Poisson ratio falls below it with P = tanh(0.25) = 0.245, the median of
# several rarely does, and the surrogate test is the gate for the few that do.
MAX_IRREGULARITY = 0.5
# Surrogates: the observed number of episodes at random epochs (see `_episode_p`). No re-detection is
# needed, so they are cheap: 1999 give a smallest p of 1/2000 = 0.0005, which survives Holm across the
# study's 8 ELR runs (0.05 / 8 = 0.00625) with room for Monte Carlo error.
N_SURROGATES = 1999
ALPHA = 0.05
# A modest real episode, as seen in the CPU runs (runs/05-elr-lr3-wd0.005 and the constant-lr
# convnet probes: loss x10-x50, norm +3-30% per episode): the train loss x10 at the episode epoch,
# the factor decaying as 10^exp(-(t-e)/1) (x2.3 one epoch later, x1.4 two later), and the norm raised
# by a step from e on (a level shift of log rho), so the ELR (∝ 1/rho^2) lowered by twice its log from e
# on. The step is a modest episode *for the run*: norm_step here (3%) or, if larger,
# exp(TEMPLATE_DRIFT_MULTIPLE x the run's typical per-epoch |log-norm drift| after convergence) - 1
# (the median over post-convergence epochs of |rolling median of the log-norm increments|, see
# `sensitivity_template`): a real episode regains what weight decay took since the last one, at least a
# couple of epochs' decay, and a step below one epoch's decay would be no jump in that run at all.
EPISODE_TEMPLATE = {"loss_factor": 10.0, "loss_decay": 1.0, "norm_step": 0.03}
TEMPLATE_DRIFT_MULTIPLE = 2.0
# Episode sensitivity: 20 injected trains per run (Monte Carlo resolution 1/20 = 0.05; binomial sd
# <= 0.11), each tested with 199 surrogates (smallest p = 0.005 < ALPHA; the decision is p < ALPHA alone).
SENSITIVITY_TRIALS = 20
SENSITIVITY_SURROGATES = 199
# Injected periods: the first interval log-uniform in [8, longest that leaves MIN_EPISODES in the
# window]; 8 epochs leave >= 2x the template's ~3-epoch loss spike between episodes, beyond MERGE_GAP.
# The period then drifts geometrically over the window by a factor log-uniform in [1/2, 2].
SENSITIVITY_PERIOD_MIN = 8
SENSITIVITY_DRIFT = 2.0
# Interval jitter of the injected trains: a lognormal factor of sd 0.15 gives a local irregularity (median
# |ln d_{i+1}/d_i|) of ~0.14, as in the real periodic runs (0.17 in the first cpu reference's run 05); a
# jitter-free train (irregularity ~0.04) would overstate what the detector finds in real runs.
SENSITIVITY_JITTER = 0.15


@dataclass(frozen=True)
class Episodes:
    periodic: bool
    episodes: np.ndarray          # indices (positions in the input arrays) of episode starts
    converged: int | None         # index where the train loss first converged (None: never)
    period: float | None          # median interval between episodes, epochs
    irregularity: float | None    # median |ln(d_{i+1}/d_i)| over successive intervals d
    surrogate_p: float | None     # None when not computed (criteria already failed)
    analysable: bool              # False if the run cannot show episodes (never converged / too short)
    reason: str


def _joint_prefix(train_loss, si_norm, elr) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three series cut to their common length, then to the first index where any is non-finite or
    the norm or ELR is <= 0; the loss floored at LOSS_FLOOR. Returned as logs (l, r, q)."""
    ys = [np.asarray(y, dtype=np.float64).ravel() for y in (train_loss, si_norm, elr)]
    n = min(y.size for y in ys)
    loss, rho, q = (y[:n] for y in ys)
    bad = ~(np.isfinite(loss) & np.isfinite(rho) & np.isfinite(q) & (rho > 0) & (q > 0))
    idx = np.flatnonzero(bad)
    n = int(idx[0]) if idx.size else n
    return np.log(np.maximum(loss[:n], LOSS_FLOOR)), np.log(rho[:n]), np.log(q[:n])


def _converged(loss_log: np.ndarray, fraction: float = CONVERGED_FRACTION) -> int | None:
    if loss_log.size < CONVERGED_BASE:
        return None
    base = float(np.median(loss_log[:CONVERGED_BASE]))       # median of logs = log of the median (odd n)
    hit = np.flatnonzero(loss_log <= base + math.log(fraction))
    return int(hit[0]) if hit.size else None


def _rolling_median(x: np.ndarray, w: int) -> np.ndarray:
    """Centred rolling median over w (odd) along the last axis, the window truncated at the ends (the
    median of the values there: padding with the end value, as scipy's "nearest" mode does, would make
    the first and last w // 2 drifts the end increment itself whenever that one is extreme)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim > 1:   # scipy's fast running median exists only for 1-D input: a (1, w) window is ~1000x slower
        return np.stack([_rolling_median(row, w) for row in x.reshape(-1, x.shape[-1])]).reshape(x.shape)
    n, h = x.size, w // 2
    out = median_filter(x, size=w, mode="nearest") if n >= w else x.copy()
    for i in sorted(set(range(min(h, n))) | set(range(max(0, n - h), n))):
        out[i] = np.median(x[max(0, i - h): i + h + 1])
    return out


def _excess(x: np.ndarray) -> np.ndarray:
    """Increments of x minus their rolling median over DRIFT_WINDOW (the drift), per row; column e-1 is
    epoch e."""
    dx = np.diff(x, axis=-1)
    return dx - _rolling_median(dx, min(DRIFT_WINDOW, dx.shape[-1] | 1))


def _one_sided_scale(ex: np.ndarray, floor: float) -> float:
    """1.4826 x the median of |ex| over the entries <= 0, floored. derived: for noise symmetric about
    the drift this is Hampel's (1974) 1.4826 x MAD (the lower half's absolute deviations have the same
    median as all of them), and jumps on the other side, a large share of the increments in a run with
    an episode every few epochs, do not enter it (they would inflate a MAD)."""
    low = ex[ex <= 0]
    return max(1.4826 * float(np.median(-low)) if low.size else 0.0, floor)


def _noise_scales(l: np.ndarray, r: np.ndarray, q: np.ndarray, k: float = EPISODE_K) -> tuple[float, float, float]:
    """(sigma_l, sigma_r, sigma_q) of one analysed window.

    sigma_r: the one-sided scale (`_one_sided_scale`) of the log-norm increments' excess over their
    drift, on the side away from jumps (excess <= 0), floored at NORM_NOISE_FLOOR; sigma_q: the same for
    the log ELR on the side away from drops (excess >= 0), floored at ELR_NOISE_FLOOR.
    sigma_l: stats.robust_noise of the log loss over the quiet increments only, those more than
    NORM_SPAN + 1 epochs from a norm jump (excess >= k x sigma_r): in a run with an episode every few
    epochs the spikes and their decays are a large share of the loss increments and would inflate the
    MAD (all increments are used if fewer than MIN_LENGTH are quiet).
    """
    ex = _excess(r)
    sigma_r = _one_sided_scale(ex, NORM_NOISE_FLOOR)
    sigma_q = _one_sided_scale(-_excess(q), ELR_NOISE_FLOOR)
    dl = np.diff(l)
    jumps = np.flatnonzero(ex >= k * sigma_r)
    near = np.zeros(dl.size, dtype=bool)
    for j in range(-NORM_SPAN - 1, NORM_SPAN + 2):              # within NORM_SPAN + 1 of a jump
        near[np.clip(jumps + j, 0, dl.size - 1)] = True
    d = dl[~near] if np.count_nonzero(~near) >= MIN_LENGTH else dl
    if d.size < 2:
        return 0.0, sigma_r, sigma_q
    # as stats.robust_noise, on the chosen increments: 1.4826 · MAD(diff) / sqrt(2)
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2.0)), sigma_r, sigma_q


def _span_max(ex: np.ndarray, n: int) -> np.ndarray:
    """(rows, n): at epoch e >= 1, the max over j < NORM_SPAN of ex[e-1] + ... + ex[e-1+j] (the summed
    excess from epoch e to e+j; truncated at the end); -inf at e = 0."""
    rows = ex.shape[0]
    out = np.full((rows, n), -np.inf)
    acc = np.zeros((rows, n - 1))
    for j in range(NORM_SPAN):
        acc[:, : n - 1 - j] += ex[:, j:]
        part = np.full((rows, n - 1), -np.inf)
        part[:, : n - 1 - j] = acc[:, : n - 1 - j]
        out[:, 1:] = np.maximum(out[:, 1:], part)
    return out


def _candidates(l: np.ndarray, r: np.ndarray, q: np.ndarray, sigma_l: float, sigma_r: float, sigma_q: float,
                k: float = EPISODE_K) -> np.ndarray:
    """Boolean (rows, n) mask of epochs e (>= 1) that pass the three episode tests; rows are series
    sharing the noise scales (see `_noise_scales`)."""
    rows, n = l.shape
    # loss: max(l[e], l[e+1]) - l[e-1] >= max(ln 1.5, LOSS_K·sigma_l)   (the window truncated at the end)
    ahead = np.full((rows, n, LOSS_SPAN), -np.inf)
    for j in range(LOSS_SPAN):
        ahead[:, : n - j, j] = l[:, j:]
    rise = np.full((rows, n), -np.inf)
    rise[:, 1:] = ahead.max(axis=2)[:, 1:] - l[:, :-1]
    loss_ok = rise >= max(MIN_LOSS_JUMP, LOSS_K * sigma_l)
    # the norm above its drift, and higher than at e-1 (a jump, not a pause in the decay)
    norm_ok = (_span_max(_excess(r), n) >= k * sigma_r) & (_span_max(np.diff(r, axis=-1), n) > 0)
    elr_ok = _span_max(-_excess(q), n) >= k * sigma_q           # the ELR below its drift
    return loss_ok & norm_ok & elr_ok


def _merge(mask: np.ndarray, l: np.ndarray) -> list[np.ndarray]:
    """Per row, one epoch per episode. Candidates more than MERGE_GAP apart start a new episode (a chain
    of closer ones is one); its epoch is the one with the largest one-epoch rise of the log loss among
    the candidates e and their e+1 (the loss rise is tested over e..e+1, so the epoch before a spike
    often passes too; the largest rise is the spike's onset, where the norm also jumps)."""
    rows, n = mask.shape
    dl = np.full((rows, n + 1), -np.inf)
    dl[:, 1:n] = np.diff(l, axis=1)                             # dl[:, e] = l[e] - l[e-1]
    ri, ci = np.nonzero(mask)                                    # row-major: sorted by row, then epoch
    out = [np.array([], dtype=np.int64) for _ in range(rows)]
    if ri.size == 0:
        return out
    best = np.where(dl[ri, ci + 1] > dl[ri, ci], ci + 1, ci)  # e or e+1, whichever the loss jumps at
    new = np.ones(ri.size, dtype=bool)
    new[1:] = (ri[1:] != ri[:-1]) | (np.diff(ci) > MERGE_GAP)
    group = np.cumsum(new)
    order = np.lexsort((-dl[ri, best], group))                  # by group, the largest rise first
    first = order[np.concatenate([[True], np.diff(group[order]) > 0])]
    for row in range(rows):
        out[row] = np.sort(best[first][ri[first] == row]).astype(np.int64)
    return out


def _irregularities(ep: np.ndarray) -> np.ndarray:
    """Per row of sorted episode epochs (rows, m >= 3): median |ln(d_{i+1}/d_i)| over successive intervals."""
    d = np.diff(ep, axis=-1).astype(np.float64)
    return np.median(np.abs(np.diff(np.log(d), axis=-1)), axis=-1)


def _irregularity(ep: np.ndarray) -> float:
    """Median |ln(d_{i+1}/d_i)| over the successive episode intervals d; +inf with < 2 intervals."""
    if ep.size < 3:
        return math.inf
    return float(_irregularities(np.asarray(ep)[None, :])[0])


def _search(l, r, q, sigma_l: float, sigma_r: float, sigma_q: float, k: float = EPISODE_K) -> list[np.ndarray]:
    l = np.atleast_2d(l)
    return _merge(_candidates(l, np.atleast_2d(r), np.atleast_2d(q), sigma_l, sigma_r, sigma_q, k), l)


def _placements(n: int, k: int, m: int, rng: np.random.Generator) -> np.ndarray | None:
    """(m, k) sorted episode epochs drawn uniformly from all placements of k episodes at positions
    1..n-1 of an analysed window (where the detector can place one) with consecutive ones >= MIN_SPACING
    apart; None if k do not fit. derived: k sorted distinct draws from n - 1 - (k-1)(MIN_SPACING-1) slots,
    the i-th shifted by i·(MIN_SPACING-1) + 1, are in one-to-one correspondence with those placements."""
    slots = (n - 1) - (k - 1) * (MIN_SPACING - 1)
    if k < 1 or slots < k:
        return None
    if slots == k:
        pick = np.broadcast_to(np.arange(k), (m, k))
    else:
        pick = np.sort(np.argpartition(rng.random((m, slots)), k - 1, axis=1)[:, :k], axis=1)
    return pick + (np.arange(k) * (MIN_SPACING - 1) + 1)


def _episode_p(n: int, n_episodes: int, irregularity: float, *, n_surrogates: int, seed: int) -> float:
    """(1 + #{surrogates with irregularity <= observed}) / (n_surrogates + 1).

    A surrogate: the observed number of episodes placed at random epochs of the analysed window of n
    epochs, uniformly over all placements the detector could report (see `_placements`, MIN_SPACING).

    Why this null: the claim is about the *timing* of the episodes the run has, so the null keeps what is
    observed (these episodes, their number, the window, the spacing the detector imposes) and breaks only
    their order in time. The null used before, the series' increments shuffled and episodes re-detected,
    let the surrogate series drift and form dense trains of candidate epochs, which merging at MERGE_GAP
    spaces almost evenly: its surrogates looked regular and p was inflated, and it tested the detection
    along with the timing. Conditioning on the count also makes the test cheap (no re-detection).
    Limits: episodes with a refractory time longer than MIN_SPACING but random otherwise are more
    regular than this null (MAX_IRREGULARITY is the guard there); and the merge chain thins episodes a
    little beyond MIN_SPACING, so for episodes at Poisson times p < 0.05 in ~7.5% of runs (tests/
    test_calibration.py; the MAX_IRREGULARITY gate brings the false-positive rate to ~0.08 of 200).
    """
    if n_episodes < 3:
        return 1.0
    rng = np.random.default_rng(seed)
    batch = max(1, 2_000_000 // max(1, n))                      # bound a batch to ~16 MB of float64
    hits = 0
    for lo in range(0, n_surrogates, batch):
        ep = _placements(n, n_episodes, min(batch, n_surrogates - lo), rng)
        if ep is None:
            return 1.0
        hits += int(np.count_nonzero(_irregularities(ep) <= irregularity + 1e-12))
    return (1 + hits) / (n_surrogates + 1)


def episodes(train_loss, si_norm, elr, *, n_surrogates: int = N_SURROGATES, seed: int = 0,
             alpha: float = ALPHA) -> Episodes:
    """Destabilisation episodes after convergence, and whether they recur periodically.

    Analysed: the joint finite prefix (see `_joint_prefix`) from the converged index (first train loss
    <= CONVERGED_FRACTION x median of the first CONVERGED_BASE epochs) on. An episode at e: log rho rises
    above its rolling-median drift by >= EPISODE_K x the one-sided robust sd of its increments about that
    drift (floored at NORM_NOISE_FLOOR), and above its e-1 value, within e..e+2; log ELR falls below its
    own drift by >= EPISODE_K x its sd (floored at ELR_NOISE_FLOOR) within e..e+2; the log loss rises by
    >= max(ln 1.5, LOSS_K x its robust noise) from e-1 to e or e+1. Candidates <= MERGE_GAP apart are one
    episode, at its largest one-epoch loss rise. Periodic iff >= MIN_EPISODES episodes, local irregularity
    <= MAX_IRREGULARITY and surrogate p < alpha (see `_episode_p`: the same number of episodes at random
    epochs; run only when the rest pass). Not analysable (never periodic): no convergence, or fewer than
    MIN_LENGTH epochs after it.
    """
    none = np.array([], dtype=np.int64)
    l, r, q = _joint_prefix(train_loss, si_norm, elr)
    if l.size < CONVERGED_BASE:
        return Episodes(False, none, None, None, None, None, False,
                        f"too short: {l.size} finite epochs < {CONVERGED_BASE}")
    c = _converged(l)
    if c is None:
        return Episodes(False, none, None, None, None, None, False,
                        f"never converged: train loss never <= {CONVERGED_FRACTION:g} x its first-epochs median "
                        f"{math.exp(float(np.median(l[:CONVERGED_BASE]))):.3g}")
    lw, rw, qw = l[c:], r[c:], q[c:]
    if lw.size < MIN_LENGTH:
        return Episodes(False, none, c, None, None, None, False,
                        f"too short: {lw.size} epochs after convergence (index {c}) < {MIN_LENGTH}")
    ep = _search(lw, rw, qw, *_noise_scales(lw, rw, qw))[0]
    out = ep + c
    period = float(np.median(np.diff(ep))) if ep.size >= 2 else None
    irr = _irregularity(ep)
    irr_out = irr if math.isfinite(irr) else None
    head = f"{ep.size} episodes after convergence at index {c}"
    if ep.size < MIN_EPISODES:
        return Episodes(False, out, c, period, irr_out, None, True, f"{head}; needs >= {MIN_EPISODES}")
    if irr > MAX_IRREGULARITY:
        return Episodes(False, out, c, period, irr, None, True,
                        f"{head} but irregular: local irregularity {irr:.2f} > {MAX_IRREGULARITY:g}")
    p = _episode_p(lw.size, ep.size, irr, n_surrogates=n_surrogates, seed=seed)
    periodic = p < alpha
    verdict = "periodic" if periodic else "not periodic: as many episodes at random epochs are as regular"
    return Episodes(periodic, out, c, period, irr, p, True,
                    f"{verdict}: {head}, median period {period:g} epochs, local irregularity {irr:.2f} <= "
                    f"{MAX_IRREGULARITY:g}, surrogate p {p:.3g} ({n_surrogates} placements of {ep.size} episodes "
                    f"at random epochs; alpha {alpha:g})")


def inject_episodes(train_loss, si_norm, elr, times, *, template: dict = EPISODE_TEMPLATE
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Copies of the three series with an episode added at each index in `times`: the loss multiplied
    by loss_factor^exp(-(t-e)/loss_decay) for t >= e, the norm multiplied by (1 + norm_step) and the
    ELR divided by (1 + norm_step)^2 for all t >= e (persistent steps; ELR ∝ 1/rho^2 at fixed lr).
    Times outside [0, len) are ignored; non-finite values stay non-finite."""
    loss = np.asarray(train_loss, dtype=np.float64).ravel().copy()
    rho = np.asarray(si_norm, dtype=np.float64).ravel().copy()
    q = np.asarray(elr, dtype=np.float64).ravel().copy()
    t = np.arange(loss.size)
    log_loss = np.zeros(loss.size)
    steps = np.zeros(max(rho.size, q.size))
    step = math.log1p(template["norm_step"])
    for e in np.asarray(times, dtype=np.int64).ravel():
        if not 0 <= e < steps.size:
            continue
        after = t >= e
        log_loss[after] += math.log(template["loss_factor"]) * np.exp(-(t[after] - e) / template["loss_decay"])
        steps[e:] += step
    loss *= np.exp(log_loss)
    rho *= np.exp(steps[: rho.size])
    q *= np.exp(-2.0 * steps[: q.size])
    return loss, rho, q


def sensitivity_template(train_loss, si_norm, elr) -> dict | None:
    """EPISODE_TEMPLATE with its norm step raised, where the run's norm drifts fast, to
    exp(TEMPLATE_DRIFT_MULTIPLE x typical |drift|) - 1: typical |drift| is the median over the
    post-convergence epochs of |rolling median (DRIFT_WINDOW) of the log-norm increments|. None when
    the run never converged or has fewer than MIN_LENGTH epochs after it."""
    l, r, _ = _joint_prefix(train_loss, si_norm, elr)
    c = _converged(l)
    if c is None or l.size - c < MIN_LENGTH:
        return None
    dr = np.diff(r[c:])
    drift = float(np.median(np.abs(_rolling_median(dr, min(DRIFT_WINDOW, dr.size | 1)))))
    step = max(EPISODE_TEMPLATE["norm_step"], math.expm1(TEMPLATE_DRIFT_MULTIPLE * drift))
    return {**EPISODE_TEMPLATE, "norm_step": step}


def _injection_times(n: int, rng: np.random.Generator, min_episodes: int = MIN_EPISODES) -> np.ndarray | None:
    """Episode positions in a window of n epochs (positions 1..n-NORM_SPAN, so that e-1 and e..e+2 are
    in it): random phase, first interval log-uniform in [SENSITIVITY_PERIOD_MIN, longest that leaves
    min_episodes], geometric drift by a factor log-uniform in [1/SENSITIVITY_DRIFT, SENSITIVITY_DRIFT], and
    each interval jittered by a factor exp(N(0, SENSITIVITY_JITTER^2)) as real destabilisations are."""
    last = n - NORM_SPAN
    # derived: phase <= p0 and min_episodes - 1 intervals <= SENSITIVITY_DRIFT x p0 fit in [1, last]
    hi = (last - 1) / (1 + (min_episodes - 1) * SENSITIVITY_DRIFT)
    if hi < SENSITIVITY_PERIOD_MIN:
        return None
    for _ in range(20):
        p0 = math.exp(rng.uniform(math.log(SENSITIVITY_PERIOD_MIN), math.log(hi)))
        g = math.exp(rng.uniform(-math.log(SENSITIVITY_DRIFT), math.log(SENSITIVITY_DRIFT)))
        t = 1.0 + rng.uniform(0.0, p0)
        out = []
        while t <= last:
            out.append(int(round(t)))
            t += p0 * g ** (t / n) * math.exp(SENSITIVITY_JITTER * rng.standard_normal())
        if len(out) >= min_episodes:
            return np.array(out, dtype=np.int64)
    return None


def episode_sensitivity(train_loss, si_norm, elr, *, n_trials: int = SENSITIVITY_TRIALS, seed: int = 0,
                        n_surrogates: int = SENSITIVITY_SURROGATES, template: dict | None = None
                        ) -> float | None:
    """Fraction of n_trials in which `episodes` calls the run periodic after a drifting-period train of
    template episodes (see `_injection_times`; template: `sensitivity_template` of the run unless given)
    is injected into its own post-convergence series. Meaningful for a run without episodes of its own:
    in one that has them the injected train mixes with the real one. None when the run is not analysable
    (never converged, or too short to hold MIN_EPISODES injected episodes at SENSITIVITY_PERIOD_MIN or
    more apart)."""
    l, r, q = _joint_prefix(train_loss, si_norm, elr)
    c = _converged(l)
    if c is None or l.size - c < MIN_LENGTH:
        return None
    loss, rho, e = np.exp(l), np.exp(r), np.exp(q)
    if template is None:
        template = sensitivity_template(loss, rho, e)
    rng = np.random.default_rng(seed)
    found = 0
    for i in range(n_trials):
        times = _injection_times(l.size - c, rng)
        if times is None:
            return None
        res = episodes(*inject_episodes(loss, rho, e, times + c, template=template),
                       n_surrogates=n_surrogates, seed=seed + i)
        found += res.periodic
    return found / n_trials


# Drop sensitivity: 50 injected drops per run (resolution 0.02, binomial sd <= 0.07); the injected drop
# falls in one epoch and regains linearly over 5 (a loss spike's aftermath in the CPU runs: 1-5 epochs).
DROP_SENSITIVITY_TRIALS = 50
DROP_RECOVERY = 5


def drop_sensitivity(test_acc, *, depth: float | None = None, n_trials: int = DROP_SENSITIVITY_TRIALS,
                     seed: int = 0) -> float | None:
    """Fraction of n_trials in which `drop_events` finds a drop-and-recovery injected at a random epoch
    of the run's own test accuracy (one per trial; found: an event's bottom within COINCIDENCE_WINDOW of
    the injected bottom). depth defaults to DROP + NOISE_K x the series' robust noise: the smallest
    drop the detector is meant to find, above its threshold max(DROP, NOISE_K x noise) by
    min(DROP, NOISE_K x noise), so that the epoch's own noise rarely hides it. The drop:
    acc[b + j] -= depth x (1 - j / DROP_RECOVERY) for j < DROP_RECOVERY, clipped at 0. None if the
    series is too short to hold a drop with WITHIN epochs before it and its regain after it."""
    a = finite_prefix(test_acc)
    lo, hi = WITHIN, a.size - DROP_RECOVERY - 1
    if hi <= lo:
        return None
    if depth is None:
        noise = robust_noise(a)
        depth = DROP + NOISE_K * (noise if math.isfinite(noise) else 0.0)
    rng = np.random.default_rng(seed)
    shape = depth * (1.0 - np.arange(DROP_RECOVERY) / DROP_RECOVERY)
    found = 0
    for b in rng.integers(lo, hi, n_trials):
        x = a.copy()
        x[b: b + DROP_RECOVERY] = np.maximum(x[b: b + DROP_RECOVERY] - shape, 0.0)
        found += any(abs(ev.bottom - b) <= COINCIDENCE_WINDOW for ev in drop_events(x))
    return found / n_trials
