"""elr.detectors on synthetic signals whose answer is known by construction."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elr import detectors as D


def elr_sawtooth(n, period, seed=0, noise=0.05):
    """Log-linear rise over a period, then collapse (the ELR in Lobacheva et al. 2021's periodic regime)."""
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    return np.exp(np.log(1e-3) + 2.0 * (t % period) / period + noise * rng.standard_normal(n))


def loss_spike_train(n, period, offset=3, seed=0):
    """A train loss near 0.01 spiking to ~0.5 every period, decaying over 5 epochs."""
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    return 0.01 + 0.5 * np.exp(-((t - offset) % period) / 5.0) * np.exp(0.03 * rng.standard_normal(n))


# ---------------------------------------------------------------------------------------------- periodicity

def test_sawtooth_found_at_its_period_with_slow_rise_sharp_fall():
    y = elr_sawtooth(300, 25)
    r = D.periodicity(y)
    assert r.periodic, r.reason
    assert r.period == pytest.approx(25, abs=1)
    expected = np.arange(24, 300, 25)                          # last epoch before each collapse
    expected = expected[(expected >= 30) & (expected < 299)]    # first 10% skipped; an end is no peak
    assert len(r.peaks) == len(expected) and np.all(np.abs(r.peaks - expected) <= 1)
    assert r.asymmetry > 0.5                                    # slow rise, sharp fall
    assert r.cv < 0.1 and r.surrogate_p < 0.05


def test_loss_spikes_found_with_sharp_rise_slow_fall():
    r = D.periodicity(loss_spike_train(300, 30))
    assert r.periodic, r.reason
    assert r.period == pytest.approx(30, abs=1)
    assert np.all((r.peaks - 3) % 30 == 0)                      # exactly at the spikes
    assert r.asymmetry < -0.5


@pytest.mark.parametrize("seed", range(10))
def test_white_noise_is_not_periodic(seed):
    r = D.periodicity(np.random.default_rng(seed).standard_normal(500))
    assert not r.periodic, r.reason


@pytest.mark.parametrize("noise", [0.0, 1e-3])
def test_smooth_decay_is_not_periodic(noise):
    t = np.arange(400)
    y = 2.3 * np.exp(-t / 40) + 0.05 + noise * np.random.default_rng(0).standard_normal(t.size)
    r = D.periodicity(y)
    assert not r.periodic, r.reason


def test_surrogate_check_rejects_noise_that_passes_the_other_criteria():
    # With a low prominence bar and no regularity bar, white noise always has enough "spikes";
    # only the surrogate test stands between it and a periodic verdict: it may pass ~alpha of the time.
    passed = sum(D.periodicity(np.random.default_rng(s).standard_normal(200), k=1.0, max_cv=np.inf,
                               n_surrogates=99).periodic for s in range(40))
    assert passed <= 6                                          # binomial(40, 0.05): P(> 6) ≈ 0.01


def test_random_walk_rarely_periodic():
    # red noise, once detrended, shows quasi-regular bumps (shuffled surrogates alone pass ~16% of these
    # walks); the random-walk surrogates bring that back to about alpha
    passed = sum(D.periodicity(np.cumsum(np.random.default_rng(s).standard_normal(300)),
                               n_surrogates=99).periodic for s in range(100))
    assert passed <= 10                                         # binomial(100, 0.05): P(> 10) ≈ 0.01


@pytest.mark.parametrize("seed", [2, 3])
def test_jittered_spikes_are_not_regular_enough(seed):
    # spikes at intervals drawn from 10..50 epochs: more regular than chance (surrogate p < 0.05 for these
    # seeds) but interval CV ~0.44 > MAX_CV: quasi-periodic, not periodic
    rng = np.random.default_rng(seed)
    n, t, spikes = 600, 30, []
    while t < n - 5:
        spikes.append(t)
        t += int(rng.integers(10, 51))
    e = np.arange(n)
    y = 0.01 + sum(np.where(e >= s, 0.5 * np.exp(-(e - s) / 3.0), 0.0) for s in spikes)
    y = y * np.exp(0.03 * rng.standard_normal(n))
    r = D.periodicity(y)
    assert not r.periodic and "irregular" in r.reason
    assert D.periodicity(y, max_cv=np.inf).surrogate_p < 0.05


def test_long_series_have_no_spurious_spikes():
    # 9,000 epochs: with a fixed 5-sd bar, noise on the ramps adds 3-6 spikes that break the regularity
    z = elr_sawtooth(9000, 300, seed=1)
    expected = np.arange(299, 8999, 300)
    expected = expected[expected >= 900]
    found = D.spikes(z)
    # the top of a noisy ramp rising 0.0067 per epoch against noise 0.05 is located to within ~15 epochs
    assert len(found) == len(expected) and np.all(np.abs(found - expected) <= 20)


def test_short_constant_and_nan_series_are_handled():
    r = D.periodicity(elr_sawtooth(15, 3))
    assert not r.periodic and r.reason.startswith("too short")
    assert not D.periodicity(np.ones(100)).periodic
    assert not D.periodicity([]).periodic
    y = elr_sawtooth(300, 25)
    y[200:] = np.nan                                            # a diverged run: analysed up to the NaN
    r = D.periodicity(y)
    assert r.periodic and r.peaks.max() < 200
    assert D.spikes(np.ones(5)).size == 0


@given(period=st.integers(8, 40), seed=st.integers(0, 10_000))
@settings(max_examples=8)
def test_sawtooth_period_recovered(period, seed):
    y = elr_sawtooth(12 * period, period, seed=seed)
    r = D.periodicity(y, n_surrogates=49, seed=seed)
    assert r.periodic, r.reason
    assert r.period == pytest.approx(period, abs=1)


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
    assert np.std(d, ddof=1) / np.mean(d) > D.MAX_CV
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
    assert D.episodes(loss, r2, e2).episodes.size == 0          # norm steps alone
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
