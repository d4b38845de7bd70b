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
