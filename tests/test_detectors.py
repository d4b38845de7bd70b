"""elr.analysis.detectors on synthetic signals whose answer is known by construction."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elr.analysis import detectors as D
from elr.analysis import stats


# ---------------------------------------------------------------------------------------------- drop and recovery

def flat_with_dip(n=120, dip=60, depth=0.15, recover=5, noise=0.002, seed=0):
    rng = np.random.default_rng(seed)
    acc = np.full(n, 0.8) + noise * rng.standard_normal(n)
    for j in range(recover):
        acc[dip + j] -= depth * (1 - j / recover)               # linear regain over `recover` epochs
    return acc


def test_drop_and_recovery_found_at_the_right_epochs():
    ev = D.drop_events(flat_with_dip())
    assert len(ev) == 1
    e = ev[0]
    assert (e.start, e.bottom, e.recovered) == (59, 60, 65)
    assert e.depth == pytest.approx(0.15, abs=0.01)


def test_drop_without_recovery_is_not_an_event():
    acc = np.full(120, 0.8)
    acc[60:] = 0.5                                              # a collapse
    assert D.drop_events(acc) == []
    acc = flat_with_dip()
    acc[62:] = np.nan                                           # diverged while down
    assert D.drop_events(acc) == []


def test_slow_decline_small_dip_late_recovery_and_noise_are_not_events():
    t = np.arange(200)
    assert D.drop_events(0.9 - 0.002 * t) == []                 # 1 point per 5 epochs: not sharp
    assert D.drop_events(flat_with_dip(depth=0.03)) == []       # 3 points: below the 5-point bar
    assert D.drop_events(flat_with_dip(n=200, recover=80)) == []  # regained after 80 > 50 epochs
    noisy = 0.8 + 0.02 * np.random.default_rng(1).standard_normal(500)
    assert D.drop_events(noisy) == []                           # a 5-point dip is 2.5 sd: noise gate
    assert D.drop_events([0.5, 0.1]) == [] and D.drop_events([]) == []


@given(dip=st.integers(10, 150), depth=st.floats(0.08, 0.5), recover=st.integers(1, 40))
@settings(max_examples=40)
def test_planted_dip_found(dip, depth, recover):
    acc = flat_with_dip(n=200, dip=dip, depth=depth, recover=recover, noise=0.0)
    ev = D.drop_events(acc)
    assert len(ev) == 1
    assert ev[0].bottom == dip and ev[0].start == dip - 1 and ev[0].depth == pytest.approx(depth)
    assert ev[0].recovered == dip + np.flatnonzero(acc[dip:] >= 0.8 - D.TOLERANCE)[0]   # back within 1 point


@pytest.mark.parametrize("recover_within", [5, D.RECOVER_WITHIN])
def test_recovery_counts_up_to_the_last_epoch_of_its_window(recover_within):
    """A one-epoch fall to a floor held until the regain: regained exactly recover_within epochs after the
    bottom is an event (the window is (b, b + recover_within], docstring), one epoch later is not."""
    for late, found in ((0, True), (1, False)):
        acc = np.full(recover_within + 40, 0.8)
        acc[20:20 + recover_within + late] = 0.6                # bottom at 20, back at 20 + recover_within + late
        ev = D.drop_events(acc, within=1, recover_within=recover_within)   # level = the epoch before: no slide
        assert [(e.bottom, e.recovered) for e in ev] == ([(20, 20 + recover_within)] if found else []), late


# ---------------------------------------------------------------------------------------------- coincidence

def test_coincidence_with_spikes():
    spikes = np.arange(50, 500, 50)
    events = [D.DropEvent(s, s + 1, s + 5, 0.1) for s in spikes[:6]]
    co = D.coincidence({"a": events}, {"a": spikes}, {"a": 500}, seed=1)
    assert (co.n_events, co.n_coincident, co.fraction) == (6, 6, 1.0)
    assert co.p < 0.01                                          # 6 random placements rarely all hit
    far = [D.DropEvent(s + 20, s + 21, s + 25, 0.1) for s in spikes[:6]]
    co = D.coincidence({"a": far}, {"a": spikes}, {"a": 500})
    assert co.fraction == 0.0 and co.p == 1.0
    assert D.coincidence({}, {}, {}).fraction is None
    assert D.coincides(D.DropEvent(10, 12, 15, 0.1), [14]) and not D.coincides(D.DropEvent(10, 12, 15, 0.1), [15])


# ---------------------------------------------------------------------------------------------- episodes

def quiet_run(n=300, seed=0, noise=0.2):
    """Loss 2.4 -> 0.03 (converged at index ~33), log jitter `noise`; norm -0.5%/epoch; ELR 0.3 / rho^2."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    loss = (0.03 + 2.4 * np.exp(-t / 15)) * np.exp(noise * rng.standard_normal(n))
    rho = 10.0 * np.exp(-0.005 * t)
    return loss, rho, 0.3 / rho**2


def test_inject_episodes_follows_the_template():
    loss, rho, elr = quiet_run()
    l2, r2, e2 = D.inject_episodes(loss, rho, elr, [100, 150])
    assert l2[100] / loss[100] == pytest.approx(10.0)
    assert l2[101] / loss[101] == pytest.approx(10.0 ** np.exp(-1.0))
    assert np.array_equal(l2[:100], loss[:100]) and np.array_equal(r2[:100], rho[:100])
    assert r2[120] / rho[120] == pytest.approx(1.03) and r2[200] / rho[200] == pytest.approx(1.03**2)
    assert e2[200] / elr[200] == pytest.approx(1.03**-4)        # ELR ∝ 1/rho^2, steps persist
    assert loss[100] == quiet_run()[0][100]                     # inputs untouched


def test_episodes_found_at_the_injected_epochs():
    loss, rho, elr = quiet_run()
    times = np.arange(60, 290, 20)
    r = D.episodes(*D.inject_episodes(loss, rho, elr, times))
    assert r.analysable and r.periodic, r.reason
    assert np.array_equal(r.episodes, times)
    assert r.period == 20 and r.irregularity == 0.0 and r.surrogate_p < 0.05
    assert 30 <= r.converged <= 40


def test_drifting_period_is_periodic_though_its_global_cv_is_not():
    # intervals growing 8 -> 32 epochs with +-1 jitter: interval CV > MAX_CV, local irregularity ~0.1
    rng = np.random.default_rng(1)
    times, t = [], 50.0
    while t < 580:
        times.append(int(t))
        t += 8 * 4 ** ((t - 50) / 530) + rng.integers(-1, 2)
    d = np.diff(times)
    assert np.std(d, ddof=1) / np.mean(d) > 0.35        # above any global-CV bar that keeps out Poisson times
    r = D.episodes(*D.inject_episodes(*quiet_run(n=600), times))
    assert r.periodic and r.irregularity < 0.2, r.reason


def test_alternating_intervals_are_irregular():
    times = np.cumsum([50] + [8, 30] * 7)
    r = D.episodes(*D.inject_episodes(*quiet_run(), times))
    assert not r.periodic and "irregular" in r.reason and r.surrogate_p is None
    assert r.irregularity == pytest.approx(np.log(30 / 8))


def test_episodes_need_all_three_signs():
    loss, rho, elr = quiet_run()
    times = np.arange(60, 290, 20)
    l2, r2, e2 = D.inject_episodes(loss, rho, elr, times)
    assert D.episodes(l2, rho, elr).episodes.size == 0          # loss spikes alone
    # norm steps alone: at a log-loss jitter of 0.2 the 3-sd loss bar (0.6) is passed by chance in ~3% of
    # epochs, so a few of the 11 steps (each a candidate over 3 epochs) are confirmed: seed 0, 4 (irregular)
    assert D.episodes(loss, r2, e2).episodes.size <= 4 and not D.episodes(loss, r2, e2).periodic
    quiet, rho_q, elr_q = quiet_run(noise=0.05)                 # ln 1.5 is 5.7 sd of a loss difference
    assert D.episodes(quiet, *D.inject_episodes(quiet, rho_q, elr_q, times)[1:]).episodes.size == 0
    assert D.episodes(l2, r2, elr).episodes.size == 0           # no ELR drop
    assert D.episodes(l2, r2, e2, n_surrogates=19).periodic is False   # smallest p 0.05 is not < 0.05


def test_episodes_edge_cases():
    loss, rho, elr = quiet_run()
    times = np.arange(60, 290, 20)
    l2, r2, e2 = D.inject_episodes(loss, rho, elr, times)
    cut = l2.copy()
    cut[170] = np.inf                                           # diverged: analysed up to index 170
    r = D.episodes(cut, r2, e2)
    assert r.episodes.max() < 170 and r.episodes.size == 6
    bad_norm = r2.copy()
    bad_norm[170] = 0.0                                         # a norm <= 0 ends the prefix too
    assert np.array_equal(D.episodes(l2, bad_norm, e2).episodes, r.episodes)
    assert np.array_equal(D.episodes(l2, r2[:170], e2).episodes, r.episodes)   # common length
    zero = l2.copy()
    zero[200:205] = 0.0                                         # float32 loss underflow: floored, no crash
    assert D.episodes(zero, r2, e2).analysable
    short = D.episodes(l2[:45], r2[:45], e2[:45])
    assert not short.analysable and short.reason.startswith("too short") and short.converged is not None
    assert not D.episodes([], [], []).analysable and not D.episodes([1.0, 0.5], [1, 1], [1, 1]).analysable
    flat = D.episodes(np.full(300, 2.3), r2, e2)
    assert not flat.analysable and flat.converged is None and "never converged" in flat.reason


def test_rolling_median_truncates_its_window_at_the_ends():
    # an extreme first increment (the last of the initial transient) must not become the first drifts
    x = np.r_[5.0, np.full(30, -1.0)]
    m = D._rolling_median(x, 15)
    assert np.all(m == -1.0)
    x = np.random.default_rng(0).standard_normal(40)
    expected = [np.median(x[max(0, i - 7): i + 8]) for i in range(40)]
    assert np.allclose(D._rolling_median(x, 15), expected)
    assert np.allclose(D._rolling_median(np.stack([x, 2 * x]), 15), [expected, 2 * np.array(expected)])


def test_episode_at_the_window_start_is_found():
    # the first epochs after convergence: the drift there is estimated from the epochs that exist
    loss, rho, elr = quiet_run()
    c = D.episodes(loss, rho, elr).converged
    times = c + np.array([2, 22, 42, 62, 82])
    r = D.episodes(*D.inject_episodes(loss, rho, elr, times))
    assert np.array_equal(r.episodes, times), r.reason


def test_a_pause_in_the_norm_decay_is_no_jump():
    # a loss spike while the norm's decay merely slows (the norm still falls) is not an episode, however
    # far the norm is above its drift; nor is a norm that rises above its drift but no ELR drop below its own
    loss, rho, elr = quiet_run()
    times = np.arange(60, 290, 20)
    l2, _, _ = D.inject_episodes(loss, rho, elr, times)
    dr = np.full(300, -0.02)                                    # a norm decaying 2% per epoch ...
    dr[times] = -0.002                                          # ... paused to 0.2% at each spike: +1.8% vs drift
    r2 = 10.0 * np.exp(np.cumsum(dr))
    assert D.episodes(l2, r2, 0.3 / r2**2).episodes.size == 0
    dr[times] = 0.002                                           # the same, rising 0.2%: a (small) jump
    r2 = 10.0 * np.exp(np.cumsum(dr))
    assert np.array_equal(D.episodes(l2, r2, 0.3 / r2**2).episodes, times)
    _, r3, _ = D.inject_episodes(loss, rho, elr, times)
    assert D.episodes(l2, r3, elr * np.exp(0.01 * np.arange(300))).episodes.size == 0


def test_elr_drop_is_measured_against_its_drift():
    # an lr rising 6% per epoch (as under an ELR rule, in a steep stretch): the ELR rises 7% per epoch between
    # episodes, and an episode's 3% norm step (ELR -5.9%) leaves it still rising (+1.1%), though 5.9%
    # below its drift: a drop, which a fall below the previous epoch's value would not see
    loss, rho, elr = quiet_run()
    times = np.arange(60, 290, 20)
    l2, r2, e2 = D.inject_episodes(loss, rho, elr, times)
    e2 = e2 * np.exp(0.06 * np.arange(300))
    q = np.log(e2)
    assert np.all(np.minimum.reduce([q[times], q[times + 1], q[times + 2]]) > q[times - 1])   # no absolute fall
    r = D.episodes(l2, r2, e2)
    assert r.periodic and np.array_equal(r.episodes, times), r.reason


# ---------------------------------------------------------------------------------------------- surrogates

def test_placements_are_uniform_and_keep_the_spacing():
    rng = np.random.default_rng(0)
    ep = D._placements(200, 12, 500, rng)
    d = np.diff(ep, axis=1)
    assert ep.shape == (500, 12) and d.min() >= D.MIN_SPACING and ep.min() >= 1 and ep.max() <= 199
    # n = 2 + 2·MIN_SPACING + 1 leaves 4 placements of 3 episodes: (1|2, .., ..) etc.; each ~1/4 of draws
    n = 2 * D.MIN_SPACING + 3
    ep = D._placements(n, 3, 4000, rng)
    _, counts = np.unique(ep, axis=0, return_counts=True)
    assert counts.size == 4 and np.all(np.abs(counts / 4000 - 0.25) < 0.03)
    one = D._placements(n - 1, 3, 10, rng)                     # exactly one placement left
    assert np.all(one == [1, 1 + D.MIN_SPACING, 1 + 2 * D.MIN_SPACING])
    assert D._placements(n - 2, 3, 10, rng) is None             # none


def test_surrogate_p_is_uniform_under_its_null():
    # trains drawn from the null itself: p <= 0.05 in about 5% of them (exact up to ties and Monte Carlo)
    rng = np.random.default_rng(1)
    ps = np.array([D._episode_p(250, 15, D._irregularity(ep), n_surrogates=199, seed=i)
                   for i, ep in enumerate(D._placements(250, 15, 300, rng))])
    assert 0.02 <= np.mean(ps <= 0.05) <= 0.09 and 0.4 <= np.mean(ps <= 0.5) <= 0.6
    # a strictly periodic train is more regular than every placement: the smallest p
    assert D._episode_p(250, 15, 0.0, n_surrogates=1999, seed=0) == pytest.approx(1 / 2000)
    assert D._episode_p(250, 2, 0.0, n_surrogates=99, seed=0) == 1.0



# ---------------------------------------------------------------------------------------------- drop boundaries
# Noise-free constructed series: robust_noise is 0 wherever most increments are 0, so the bar is DROP alone.

def test_drop_at_the_second_epoch_of_the_shortest_series():
    # 3 epochs are enough (n < 3 is the only too-short case) and scanning starts at index 1, whose level is
    # epoch 0 alone: 0.8 -> 0.6 -> 0.8 is a 0.2 drop from start 0, bottom 1, back at 2
    ev = D.drop_events([0.8, 0.6, 0.8], noise_k=0.0)     # 3 values: their MAD noise is the dip itself
    assert [(e.start, e.bottom, e.recovered) for e in ev] == [(0, 1, 2)]
    assert ev[0].depth == pytest.approx(0.2)
    ev = D.drop_events([0.8, 0.6] + [0.8] * 20)          # default gates: noise 0, level median(a[0:1])
    assert [(e.start, e.bottom, e.recovered) for e in ev] == [(0, 1, 2)]


def test_a_drop_exactly_at_the_bar_is_an_event():
    # acc[b] <= level - drop (docstring): 0.75 - 0.5 == 0.25 exactly in binary floating point
    acc = np.full(30, 0.75)
    acc[10] = 0.5
    assert [(e.start, e.bottom, e.recovered) for e in D.drop_events(acc, drop=0.25)] == [(9, 10, 11)]
    assert D.drop_events(acc, drop=0.25 + 1e-9) == []


def test_values_exactly_at_level_minus_tolerance_count_as_at_level():
    # start: the last epoch before b with acc >= level - tolerance; recovered: the first after b with the same
    at = 0.8 - D.TOLERANCE                                   # the same float the detector compares with
    acc = np.full(20, 0.8)
    acc[9], acc[10], acc[11] = at, 0.6, at                   # level at b = 10: median(0.8 x 4, at) = 0.8
    ev = D.drop_events(acc)
    assert [(e.start, e.bottom, e.recovered) for e in ev] == [(9, 10, 11)]


def test_scan_moves_one_epoch_past_a_drop_that_does_not_recover_in_its_window():
    # b = 10 (0.6) is not back within 2 epochs (0.6, 0.77); b = 11 (0.6, level still 0.8) is, at 13; b = 12
    # (0.77) is no drop: the event is found only from b = 11, and spans start 9 .. bottom 10 .. recovered 13
    acc = np.r_[np.full(10, 0.8), 0.6, 0.6, 0.77, np.full(7, 0.8)]
    ev = D.drop_events(acc, recover_within=2)
    assert [(e.start, e.bottom, e.recovered) for e in ev] == [(9, 10, 13)]
    assert ev[0].depth == pytest.approx(0.2)


def test_back_to_back_drops_are_two_events_each_with_its_own_bottom():
    # 0.6 at 10, back at 11, 0.5 at 12, back at 13: the scan resumes at recovered + 1 = 12, and the first
    # event's bottom is sought only up to its recovery (not the deeper 12)
    acc = np.r_[np.full(10, 0.8), 0.6, 0.8, 0.5, np.full(10, 0.8)]
    ev = D.drop_events(acc)
    assert [(e.start, e.bottom, e.recovered) for e in ev] == [(9, 10, 11), (11, 12, 13)]
    assert [e.depth for e in ev] == pytest.approx([0.2, 0.3])


def test_drop_sensitivity_window_of_injection_epochs():
    # b is drawn from [WITHIN, n - DROP_RECOVERY - 1): at n = 12 only b = 5 (drop 5..9, back at 10), at n = 11
    # none. An injected 0.2 drop on a flat 0.8 is found every time (its noise, 0.042, puts the bar at 0.17).
    flat = np.full(12, 0.8)
    assert D.drop_sensitivity(flat, depth=0.2) == 1.0
    assert D.drop_sensitivity(flat[:11], depth=0.2) is None


def test_drop_sensitivity_counts_a_bottom_exactly_coincidence_window_away():
    # n = 12: b = 5. A natural dip to 0.55 at 7 makes the event's bottom 7 (0.55 - 0.12 < 0.6): 2 epochs
    # from the injected bottom, within COINCIDENCE_WINDOW = 2, so found in every trial
    acc = np.full(12, 0.8)
    acc[7] = 0.55
    assert D.drop_sensitivity(acc, depth=0.2) == 1.0


def test_drop_sensitivity_default_depth_on_a_noiseless_series():
    # noise 0: depth = DROP + NOISE_K x 0 = DROP, the bar itself (0.8 - (0.8 - 0.05) = 0.05 + 4e-17 >= 0.05)
    flat = np.full(12, 0.8)
    assert D.drop_sensitivity(flat) == D.drop_sensitivity(flat, depth=D.DROP) == 1.0


def test_drop_sensitivity_default_seed_is_zero():
    # n = 13, b in {5, 6}: b = 6 leaves no epoch >= 0.79 after its regain (0.7, 0.7 at 11, 12), so the fraction
    # is the share of b = 5 among the 50 draws of the documented generator, default_rng(seed=0)
    acc = np.r_[np.full(11, 0.8), 0.7, 0.7]
    expected = np.mean(np.random.default_rng(0).integers(5, 7, D.DROP_SENSITIVITY_TRIALS) == 5)
    assert D.drop_sensitivity(acc, depth=0.2) == D.drop_sensitivity(acc, depth=0.2, seed=0) == expected
    assert expected != np.mean(np.random.default_rng(1).integers(5, 7, D.DROP_SENSITIVITY_TRIALS) == 5)


# ---------------------------------------------------------------------------------------------- coincidence null

def _one_event_run():
    # run of 10 epochs, event start 4 .. bottom 5 (span 1), one spike at 5, window 2: observed coincident.
    # Null: start uniform in [0, 10 - 1) = 0..8, coincident iff 5 in [start - 2, start + 1 + 2], i.e. start
    # 2..7: probability 6/9 (the spike at the window's upper end at start 2, at its lower end at start 7)
    return {"a": [D.DropEvent(4, 5, 8, 0.1)]}, {"a": [5]}, {"a": 10}


def test_coincidence_p_matches_the_hand_counted_null():
    n_perm = 9999                                        # binomial sd of p ~0.005
    co = D.coincidence(*_one_event_run(), n_perm=n_perm, seed=3)
    assert (co.n_events, co.n_coincident, co.fraction) == (1, 1, 1.0)
    assert co.p == pytest.approx(6 / 9, abs=0.02)
    # two such runs, both coincident: the null counts coincident events over both, p = P(both) = (6/9)^2
    ev, sp, n = _one_event_run()
    co = D.coincidence({**ev, "b": ev["a"]}, {**sp, "b": sp["a"]}, {**n, "b": 10}, n_perm=n_perm, seed=3)
    assert (co.n_events, co.n_coincident) == (2, 2)
    assert co.p == pytest.approx((6 / 9) ** 2, abs=0.02)


def test_coincidence_uses_the_given_window_for_the_observed_count():
    ev, _, n = _one_event_run()
    co = D.coincidence(ev, {"a": [6]}, n, window=0)      # 6 is outside [4, 5]: nothing observed, p = 1
    assert (co.n_coincident, co.fraction, co.p) == (0, 0.0, 1.0)


def test_coincidence_without_events_or_without_spikes():
    none = D.Coincidence(0, 0, None, None)
    assert D.coincidence({}, {}, {}) == none
    assert D.coincidence({"a": []}, {"a": [5]}, {"a": 10}) == none
    ev, _, n = _one_event_run()
    assert D.coincidence(ev, {}, n) == D.Coincidence(1, 0, 0.0, 1.0)    # a run with no spikes recorded


def test_coincidence_defaults_999_permutations_and_seed_zero():
    co = D.coincidence(*_one_event_run())
    assert co.p * 1000 == pytest.approx(round(co.p * 1000), abs=1e-9)   # p on the 1/(999 + 1) grid
    assert co == D.coincidence(*_one_event_run(), n_perm=999, seed=0)
    assert co.p != D.coincidence(*_one_event_run(), seed=1).p


# ---------------------------------------------------------------------------------------------- episodes: every return

def _fields(r):
    return (r.periodic, r.episodes.tolist(), r.converged, r.period, r.irregularity, r.surrogate_p, r.analysable)


def _assert_empty_int_episodes(r):
    assert isinstance(r.episodes, np.ndarray) and r.episodes.size == 0 and r.episodes.dtype == np.int64


def test_episodes_not_analysable_returns_every_field():
    r = D.episodes([1.0, 0.5], [1, 1], [1, 1])              # 2 finite epochs < CONVERGED_BASE
    assert _fields(r) == (False, [], None, None, None, None, False)
    assert r.reason == "too short: 2 finite epochs < 3"
    _assert_empty_int_episodes(r)
    # exactly CONVERGED_BASE epochs is not too short: base median 0.5, 0.2 > 0.05, so never converged
    r = D.episodes([1.0, 0.5, 0.2], [1, 1, 1], [1, 1, 1])
    assert _fields(r) == (False, [], None, None, None, None, False)
    assert r.reason == "never converged: train loss never <= 0.1 x its first-epochs median 0.5"
    _assert_empty_int_episodes(r)
    # converged at index 3 (0.05 <= 0.1 x 1), then MIN_LENGTH - 1 = 19 epochs: too short; 20 epochs: analysable
    loss = np.r_[1.0, 1.0, 1.0, np.full(20, 0.05)]
    rho = 10.0 * np.exp(-0.005 * np.arange(23))
    r = D.episodes(loss[:22], rho[:22], 0.3 / rho[:22] ** 2)
    assert _fields(r) == (False, [], 3, None, None, None, False)
    assert r.reason == "too short: 19 epochs after convergence (index 3) < 20"
    _assert_empty_int_episodes(r)
    r = D.episodes(loss, rho, 0.3 / rho**2)                 # a constant loss never rises: no episode
    assert _fields(r) == (False, [], 3, None, None, None, True)
    assert r.reason == "0 episodes after convergence at index 3; needs >= 4"
    _assert_empty_int_episodes(r)


def test_episodes_period_and_irregularity_with_fewer_than_min_episodes():
    loss, rho, elr = quiet_run()                             # converges at index 36
    r = D.episodes(*D.inject_episodes(loss, rho, elr, [100]))
    assert _fields(r) == (False, [100], 36, None, None, None, True)       # no interval: no period
    r = D.episodes(*D.inject_episodes(loss, rho, elr, [100, 150]))
    assert _fields(r) == (False, [100, 150], 36, 50.0, None, None, True)  # one interval: no irregularity
    r = D.episodes(*D.inject_episodes(loss, rho, elr, [100, 150, 180]))
    assert _fields(r)[:4] == (False, [100, 150, 180], 36, 40.0)           # median of 50, 30
    assert r.irregularity == pytest.approx(np.log(50 / 30))
    assert (r.surrogate_p, r.analysable) == (None, True)
    assert r.reason == "3 episodes after convergence at index 36; needs >= 4"


def test_exactly_min_episodes_reach_the_surrogate_test():
    loss, rho, elr = quiet_run()
    r = D.episodes(*D.inject_episodes(loss, rho, elr, [100, 120, 140, 160]))
    assert _fields(r) == (True, [100, 120, 140, 160], 36, 20.0, 0.0, 1 / 2000, True)   # the smallest p
    assert r.reason.startswith("periodic: 4 episodes after convergence at index 36, median period 20 epochs")


def test_irregular_and_not_periodic_verdicts_keep_their_fields():
    times = np.cumsum([50] + [8, 30] * 7)          # 14 of them in 300 epochs: 7 intervals of 8, 6 of 30: median 8
    r = D.episodes(*D.inject_episodes(*quiet_run(), times))
    assert (r.periodic, r.period, r.surrogate_p, r.analysable) == (False, 8.0, None, True)
    loss, rho, elr = quiet_run()
    r = D.episodes(*D.inject_episodes(loss, rho, elr, np.arange(60, 290, 20)), n_surrogates=19)
    assert (r.periodic, r.surrogate_p, r.analysable) == (False, 1 / 20, True)
    assert r.reason.startswith("not periodic: as many episodes at random epochs are as regular: 12 episodes")


def test_episodes_default_seed_is_zero():
    # 4 episodes at intervals 20, 25, 20 (irregularity ln 1.25): p is not at its floor, so depends on the seed
    l2, r2, e2 = D.inject_episodes(*quiet_run(), [100, 120, 145, 165])
    p0 = D.episodes(l2, r2, e2, seed=0).surrogate_p
    assert D.episodes(l2, r2, e2).surrogate_p == p0 != D.episodes(l2, r2, e2, seed=1).surrogate_p


def test_surrogate_p_with_three_episodes_counts_ties_over_all_batches():
    # n = 250, 3 episodes >= MIN_SPACING = 5 apart: C(241, 3) = 2,303,960 placements, of which equally spaced
    # (irregularity 0): sum over d = 5..124 of (249 - 2d) = 14,400, a share of 0.00625. 8001 surrogates run
    # as a batch of 8000 and one of 1: p ~ 0.00625 (sd ~0.0009), the ties at irregularity 0 counted.
    p = D._episode_p(250, 3, 0.0, n_surrogates=8001, seed=0)
    assert 0.0035 < p < 0.009
    assert D._episode_p(250, 3, 0.0, n_surrogates=99, seed=0) < 0.1      # 3 episodes are tested (~1 hit in 99)
    assert D._episode_p(10, 3, 0.0, n_surrogates=99, seed=0) == 1.0      # 3 do not fit in 10 epochs


def test_surrogate_p_when_a_single_placement_exists():
    # n = 2·MIN_SPACING + 2 holds 3 episodes only at 1, 6, 11 (irregularity 0): every surrogate ties with an
    # observed irregularity 0, so p = (1 + 5) / (5 + 1) = 1
    assert D._episode_p(2 * D.MIN_SPACING + 2, 3, 0.0, n_surrogates=5, seed=0) == 1.0


def test_finite_prefix_cuts_at_the_first_non_finite_and_returns_float64():
    assert D.finite_prefix([0.5, 0.25, np.nan, 0.75, np.inf, 1.0]).tolist() == [0.5, 0.25]
    assert D.finite_prefix([[0.5], [np.inf]]).tolist() == [0.5]
    y = D.finite_prefix(np.array([0.1, 0.2], dtype=np.float32))      # torch logs float32
    assert y.dtype == np.float64 and y.tolist() == [float(np.float32(0.1)), float(np.float32(0.2))]
    assert D.finite_prefix([1, 2]).dtype == np.float64


def test_merge_places_one_epoch_per_chain_of_close_candidates():
    # log loss 0, +1 from 10, +0.5 from 21, +2 at 29 alone. Candidates 10 and 13 are MERGE_GAP = 3 apart: one
    # episode, at 10 (the rise of 1); 20 starts a new one placed at 21 (its e+1 rises 0.5, e itself 0); 25,
    # 5 after 20, ties e and e+1 (both 0): stays at 25; 29, 4 after 25, is the window's last epoch (no e+1):
    # stays at 29. Indices come back as int64.
    n = 30
    l = np.zeros((1, n))
    l[0, 10:] += 1.0
    l[0, 21:] += 0.5
    l[0, 29] += 2.0
    mask = np.zeros((1, n), dtype=bool)
    mask[0, [10, 13, 20, 25, 29]] = True
    (out,) = D._merge(mask, l)
    assert out.tolist() == [10, 21, 25, 29] and out.dtype == np.int64


def test_a_norm_that_only_holds_still_is_no_jump():
    # a norm decaying 2% per epoch that holds exactly still (increment 0) at each spike: 2% above its drift,
    # but not above its e-1 value ("above its e-1 value", docstring): no episode
    loss, rho, elr = quiet_run()
    times = np.arange(60, 290, 20)
    l2, _, _ = D.inject_episodes(loss, rho, elr, times)
    dr = np.full(300, -0.02)
    dr[times] = 0.0
    r2 = 10.0 * np.exp(np.cumsum(dr))
    assert np.all(np.diff(np.log(r2))[times - 1] == 0.0)
    assert D.episodes(l2, r2, 0.3 / r2**2).episodes.size == 0


# ---------------------------------------------------------------------------------------------- helpers' contracts

def test_a_spike_exactly_window_epochs_before_the_start_coincides():
    # [start - window, bottom + window] is closed at both ends: event 10..12, window 2 -> spikes 8..14
    ev = D.DropEvent(10, 12, 15, 0.1)
    assert D.coincides(ev, [8]) and D.coincides(ev, [14])
    assert not D.coincides(ev, [7]) and not D.coincides(ev, [15])


def test_joint_prefix_returns_float64_logs_and_ends_at_an_elr_of_zero():
    # torch logs float32: the logs are taken in float64 of the float32 values (float32 logs carry ~1e-7 error)
    x = np.array([2.3, 0.7, 0.05, 0.3], dtype=np.float32)
    for got in D._joint_prefix(x, x, x):
        assert got.dtype == np.float64 and np.array_equal(got, np.log(x.astype(np.float64)))
    # an ELR <= 0 is invalid and ends the prefix (docstring), an ELR of exactly 0 included
    ones = np.ones(5)
    q = np.array([1.0, 1.0, 0.0, 1.0, 1.0])
    assert [y.size for y in D._joint_prefix(ones, ones, q)] == [2, 2, 2]


def test_converged_at_exactly_a_tenth_and_with_exactly_the_base_epochs():
    # "train loss <= 0.1 x the median of the first 3": 0.1 x 1 is log(0.1) == 0 + log(0.1) exactly, so it counts
    assert D._converged(np.log(np.r_[1.0, 1.0, 1.0, 0.1, 0.1])) == 3
    assert D._converged(np.log(np.r_[1.0, 1.0, 1.0, 0.11])) is None
    # 3 epochs are enough to converge (median 1, the third at 0.05): episodes says too short *after* index 2
    assert D._converged(np.log([1.0, 1.0, 0.05])) == 2
    r = D.episodes([1.0, 1.0, 0.05], [1, 1, 1], [1, 1, 1])
    assert r.converged == 2 and r.reason == "too short: 1 epochs after convergence (index 2) < 20"


def test_rolling_median_of_integers_of_nd_input_and_of_a_series_as_long_as_its_window():
    # integers: a truncated end window of even length has a half-integer median (median of 0, 1 is 0.5)
    m = D._rolling_median(np.array([0, 1, 5, 5, 5, 5]), 3)
    assert m.tolist() == [0.5, 1.0, 5.0, 5.0, 5.0, 5.0]
    # any number of leading axes: each last-axis row is filtered alone and the shape is kept
    x = np.random.default_rng(2).standard_normal((2, 3, 20))
    m = D._rolling_median(x, 5)
    assert m.shape == x.shape
    for i in range(2):
        for j in range(3):
            assert np.array_equal(m[i, j], [np.median(x[i, j, max(0, e - 2): e + 3]) for e in range(20)])
    # n == w: the middle entry's window is the whole series (the only entry not at a truncated end)
    x = np.random.default_rng(3).standard_normal(15)
    assert np.array_equal(D._rolling_median(x, 15), [np.median(x[max(0, e - 7): e + 8]) for e in range(15)])


def test_one_sided_scale_is_hampels_sd_for_gaussian_noise_and_counts_zeros_as_low():
    # derived (docstring): 1.4826 x the median |ex| over ex <= 0 estimates the sd of symmetric Gaussian noise
    z = np.random.default_rng(0).standard_normal(100_000)
    assert D._one_sided_scale(3.0 * z, 0.0) == pytest.approx(3.0, rel=0.02)
    assert D._one_sided_scale(3.0 * z, 10.0) == 10.0                      # floored
    # entries exactly 0 are on the low side: |ex| of {0, 0, 0, -1} has median 0 (not 1 over {-1} alone)
    assert D._one_sided_scale(np.array([0.0, 0.0, 0.0, -1.0, 2.0]), 0.0) == 0.0
    assert D._one_sided_scale(np.array([-1.0, -1.0, 0.0, 2.0]), 0.0) == pytest.approx(1.4826)


def _blips(n, at, size):
    """A log norm flat at 0 but for one-epoch blips of `size` at epochs at + 1 (increment `at` rises by size,
    increment at + 1 falls back): exact increments, so the excess over the drift (median 0) is size exactly."""
    r = np.zeros(n)
    r[np.asarray(at) + 1] = size
    return r


def _loss_noise_without(dl, jumps):
    # the documented rule: robust_noise of the increments more than NORM_SPAN + 1 = 4 from every norm jump, or
    # of all of them if fewer than MIN_LENGTH are that quiet
    near = {i for j in jumps for i in range(j - 4, j + 5) if 0 <= i < dl.size}
    quiet = [i for i in range(dl.size) if i not in near]
    d = dl[quiet] if len(quiet) >= D.MIN_LENGTH else dl
    return stats.robust_noise(np.r_[0.0, np.cumsum(d)])        # the series whose increments are d


@pytest.mark.parametrize("n, jumps", [
    (60, [1, 30]),              # near the start: increments 0..5 (clipped at 0) and 26..34 left out
    (60, [57]),                 # near the end: 53..58 (clipped at the last increment)
    (57, [4, 13, 22, 31]),      # 0..35 left out, exactly MIN_LENGTH = 20 quiet: those are used
    (56, [4, 13, 22, 31]),      # 19 quiet: all increments are used
])
def test_noise_scales_loss_noise_leaves_out_increments_near_a_norm_jump(n, jumps):
    # a norm jump is an excess >= k x sigma_r: here exactly at that bar (sigma_r at its floor: the rest is flat)
    rng = np.random.default_rng(n + len(jumps))
    l = np.r_[0.0, np.cumsum(-0.05 + 0.1 * rng.standard_normal(n - 1))]     # a falling log loss: median dl != 0
    r = _blips(n, jumps, D.EPISODE_K * D.NORM_NOISE_FLOOR)
    sigma_l, sigma_r, sigma_q = D._noise_scales(l, r, np.zeros(n))
    assert (sigma_r, sigma_q) == (D.NORM_NOISE_FLOOR, D.ELR_NOISE_FLOOR)
    assert sigma_l == pytest.approx(_loss_noise_without(np.diff(l), jumps), rel=1e-9)
    all_used = n == 56
    assert (sigma_l == pytest.approx(stats.robust_noise(l), rel=1e-9)) == all_used   # leaving out matters


def test_noise_scales_elr_sd_is_twice_the_norms_at_a_fixed_lr():
    # log ELR = log lr - 2 log rho: the ELR's excess below its drift is twice the norm's above it, so its
    # one-sided scale (away from drops) is twice the norm's (away from jumps), jumps every 10 epochs or not
    rng = np.random.default_rng(4)
    dr = -0.005 + 0.01 * rng.standard_normal(299)
    dr[::10] += 0.1
    r = np.r_[0.0, np.cumsum(dr)]
    _, sigma_r, sigma_q = D._noise_scales(np.zeros(300), r, np.log(0.3) - 2.0 * r)
    assert sigma_r > 5 * D.NORM_NOISE_FLOOR and sigma_q == pytest.approx(2.0 * sigma_r, rel=1e-9)


def test_span_max_sums_the_excess_over_up_to_three_epochs_per_row():
    # brute force of the docstring: at e >= 1, max over j < NORM_SPAN of ex[e-1] + ... + ex[e-1+j] (truncated)
    ex = np.random.default_rng(5).standard_normal((2, 9))
    got = D._span_max(ex, 10)
    assert got.shape == (2, 10) and np.all(got[:, 0] == -np.inf)
    for row in range(2):
        for e in range(1, 10):
            sums = [ex[row, e - 1: e + j].sum() for j in range(D.NORM_SPAN) if e - 1 + j < 9]
            assert got[row, e] == pytest.approx(max(sums), abs=1e-12)
    assert D._span_max(np.ones((1, 5)), 6).tolist() == [[-np.inf, 3.0, 3.0, 3.0, 2.0, 1.0]]


def _step_window(n, e, loss_step, norm_step, elr_step):
    """One row, flat but for steps at epoch e (l, r up; q down): exact increments, drift (median) 0."""
    l, r, q = np.zeros((1, n)), np.zeros((1, n)), np.zeros((1, n))
    l[0, e:], r[0, e:], q[0, e:] = loss_step, norm_step, -elr_step
    return l, r, q


def test_candidates_exactly_at_each_bar_pass_and_just_below_fail():
    # loss rise >= max(ln 1.5, LOSS_K sigma_l), norm excess >= k sigma_r, ELR excess below >= k sigma_q: all ">="
    bars = (D.MIN_LOSS_JUMP, D.EPISODE_K * D.NORM_NOISE_FLOOR, D.EPISODE_K * D.ELR_NOISE_FLOOR)
    scales = (0.0, D.NORM_NOISE_FLOOR, D.ELR_NOISE_FLOOR)
    mask = D._candidates(*_step_window(30, 15, *bars), *scales)
    assert np.flatnonzero(mask[0]).tolist() == [14, 15]             # e and e-1 (its window e-1..e+1 holds e)
    for i in range(3):
        below = list(bars)
        below[i] = np.nextafter(bars[i], 0.0)
        assert not D._candidates(*_step_window(30, 15, *below), *scales).any(), i


def test_candidates_at_the_last_epoch_need_a_loss_rise_there():
    # the loss window e..e+1 is truncated at the end: at e = n-1 only l[n-1] - l[n-2] counts, and no rise is
    # no candidate however large the norm jump and ELR drop
    bars = (1.0, 0.05, 0.1)
    scales = (0.0, D.NORM_NOISE_FLOOR, D.ELR_NOISE_FLOOR)
    assert np.flatnonzero(D._candidates(*_step_window(30, 29, *bars), *scales)[0]).tolist() == [28, 29]
    assert not D._candidates(*_step_window(30, 29, 0.0, *bars[1:]), *scales).any()


def test_search_uses_its_k():
    # norm and ELR steps of 3 x their sds: found at k = 2.5, not at the default EPISODE_K = 5
    l, r, q = _step_window(30, 15, 1.0, 3 * D.NORM_NOISE_FLOOR, 3 * D.ELR_NOISE_FLOOR)
    assert D._search(l, r, q, 0.0, D.NORM_NOISE_FLOOR, D.ELR_NOISE_FLOOR)[0].size == 0
    assert D._search(l, r, q, 0.0, D.NORM_NOISE_FLOOR, D.ELR_NOISE_FLOOR, k=2.5)[0].tolist() == [15]


# ---------------------------------------------------------------------------------------------- sensitivity

def test_placements_of_one_episode_are_uniform_over_the_window():
    # k = 1 fits wherever the detector can place an episode, positions 1..n-1, each equally likely
    ep = D._placements(10, 1, 9000, np.random.default_rng(0))
    assert ep.shape == (9000, 1)
    _, counts = np.unique(ep, return_counts=True)
    assert np.unique(ep).tolist() == list(range(1, 10)) and np.all(np.abs(counts / 9000 - 1 / 9) < 0.015)


def test_placements_take_the_slots_of_the_k_smallest_uniform_keys():
    # derived: each row's k slots are those of its k smallest i.i.d. uniform keys, so every k-subset of the
    # slots is equally likely; checked against a full argsort of the same keys, at a k (100 of 400 slots)
    # where a partial selection that is not exactly the k smallest shows
    n, k, m = 400 + 99 * (D.MIN_SPACING - 1) + 1, 100, 2000
    keys = np.random.default_rng(7).random((m, 400))
    expected = np.sort(np.argsort(keys, axis=1)[:, :k], axis=1) + np.arange(k) * (D.MIN_SPACING - 1) + 1
    assert np.array_equal(D._placements(n, k, m, np.random.default_rng(7)), expected)


def test_inject_episodes_at_epoch_zero_overlapping_and_out_of_range():
    loss, rho, elr = quiet_run()
    l2, r2, e2 = D.inject_episodes(loss, rho, elr, [0])                 # [0, len): epoch 0 is a valid time
    assert l2[0] / loss[0] == pytest.approx(10.0) and np.allclose(r2 / rho, 1.03) and np.allclose(e2 / elr, 1.03**-2)
    # times outside [0, len) are skipped, not the end of the list
    for got, want in zip(D.inject_episodes(loss, rho, elr, [-1, 400, 100, 300]),
                         D.inject_episodes(loss, rho, elr, [100])):
        assert np.array_equal(got, want)
    # overlapping episodes multiply: at 101, x10 from its own and x10^exp(-1) from 100's decay
    l2, r2, _ = D.inject_episodes(loss, rho, elr, [100, 101])
    assert l2[101] / loss[101] == pytest.approx(10.0 ** (1 + np.exp(-1.0)))
    assert r2[101] / rho[101] == pytest.approx(1.03**2)
    # loss_decay is the e-folding time of the factor's exponent: 10^exp(-(t-e)/2)
    slow = {**D.EPISODE_TEMPLATE, "loss_decay": 2.0}
    l2, _, _ = D.inject_episodes(loss, rho, elr, [100], template=slow)
    assert l2[102] / loss[102] == pytest.approx(10.0 ** np.exp(-1.0))
    assert l2[101] / loss[101] == pytest.approx(10.0 ** np.exp(-0.5))


def test_sensitivity_template_none_when_not_analysable():
    loss, rho, elr = quiet_run()
    assert D.sensitivity_template(np.full(300, 2.3), rho, elr) is None          # never converged
    # converged at index 3, then MIN_LENGTH - 1 = 19 epochs: None; MIN_LENGTH = 20: the template (slow norm)
    loss = np.r_[1.0, 1.0, 1.0, np.full(20, 0.05)]
    rho = 10.0 * np.exp(-0.005 * np.arange(23))
    assert D.sensitivity_template(loss[:22], rho[:22], 0.3 / rho[:22] ** 2) is None
    assert D.sensitivity_template(loss, rho, 0.3 / rho**2) == D.EPISODE_TEMPLATE


def test_injection_times_fit_the_window_and_draw_phase_period_and_drift_as_documented():
    # positions 1..n - NORM_SPAN, >= MIN_EPISODES of them, increasing by at least ~half the shortest period
    for n in (100, 600):
        for s in range(300):
            t = D._injection_times(n, np.random.default_rng(s))
            assert t.dtype == np.int64 and t.size >= D.MIN_EPISODES
            assert t[0] >= 1 and t[-1] <= n - D.NORM_SPAN and np.all(np.diff(t) >= 2), (n, s)
    # the phase is uniform in [0, p0] with p0 >= SENSITIVITY_PERIOD_MIN: at n = 100 (p0 <= 13.7) the first
    # position is 1 in ~5% of trains and reaches 1 + 8 and more in others
    first = np.array([D._injection_times(100, np.random.default_rng(s))[0] for s in range(300)])
    assert first.min() == 1 and first.max() >= 1 + D.SENSITIVITY_PERIOD_MIN
    # drift: log d_i = log p0 + (t_i / n) log g + jitter, log g uniform in [-ln 2, ln 2] (mean 0, sd 0.40):
    # the fitted slopes of 300 trains centre on 0 and spread to both sides (fitted with the jitter: sd ~0.45)
    slopes = []
    for s in range(300):
        t = D._injection_times(600, np.random.default_rng(s))
        slopes.append(np.polyfit(t[:-1] / 600, np.log(np.diff(t)), 1)[0])
    q10, q90 = np.quantile(slopes, [0.1, 0.9])
    assert abs(np.mean(slopes)) < 0.08 and q10 < -0.4 and q90 > 0.4


def test_injection_times_need_a_window_of_60_epochs():
    # derived: hi = (n - NORM_SPAN - 1) / (1 + (MIN_EPISODES - 1) x SENSITIVITY_DRIFT) >= SENSITIVITY_PERIOD_MIN
    # iff n >= 8 x 7 + 4 = 60; at n = 60 the first interval is 8 exactly and a train fits in the first try
    n_min = D.SENSITIVITY_PERIOD_MIN * (1 + (D.MIN_EPISODES - 1) * D.SENSITIVITY_DRIFT) + D.NORM_SPAN + 1
    assert n_min == 60
    for s in range(20):
        assert D._injection_times(59, np.random.default_rng(s)) is None
        assert D._injection_times(60, np.random.default_rng(s)).size >= D.MIN_EPISODES
    # a train of exactly min_episodes is accepted (">= min_episodes"): rare for 4 (~1 train in 1000 at n = 60),
    # ~16% of trains for min_episodes = 2 at its own threshold window, 8 x 3 + 4 = 28 epochs
    assert D._injection_times(27, np.random.default_rng(0), min_episodes=2) is None
    sizes = [D._injection_times(28, np.random.default_rng(s), min_episodes=2).size for s in range(100)]
    assert min(sizes) == 2 and 5 <= sizes.count(2) <= 30


def test_episode_sensitivity_is_the_share_of_injected_trains_found_periodic():
    # the documented procedure by hand: trial i injects the template at _injection_times(window, rng) + c, rng =
    # default_rng(seed) drawn in turn, and asks episodes(..., n_surrogates, seed = seed + i). With 39 surrogates
    # (smallest p 0.025) a train is periodic only if no surrogate is as regular, so the verdicts are mixed and
    # depend on the trains' times, the surrogates' seeds and their number
    loss, rho, elr = quiet_run(n=120)
    c = D.episodes(loss, rho, elr).converged
    template = D.sensitivity_template(loss, rho, elr)
    fractions = []
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        found = [D.episodes(*D.inject_episodes(loss, rho, elr, D._injection_times(120 - c, rng) + c,
                                               template=template), n_surrogates=39, seed=seed + i).periodic
                 for i in range(12)]
        assert 0 < sum(found) < 12
        fractions.append(D.episode_sensitivity(loss, rho, elr, n_trials=12, seed=seed, n_surrogates=39))
        assert fractions[-1] == np.mean(found)
    assert fractions[0] != fractions[1]                              # 7/12 and 5/12
    assert D.episode_sensitivity(loss, rho, elr, n_trials=12, n_surrogates=39) == fractions[0]   # default seed 0
