"""elr.detectors on synthetic signals whose answer is known by construction."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elr import detectors as D


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

