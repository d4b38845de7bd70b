"""elr.analysis.claims: each claim's aggregation over per-run analyses, with planted effects and planted nulls.

The per-run analysis (elr.analysis.inspect.analyse: theory, episodes, drops) is tested in test_inspect.py and the
detectors in test_detectors.py / test_calibration.py; here the analyses are given, so each claim's rule
(what holds, what refutes, what stays inconclusive) is tested on its own. The last tests run the real
chain (analyse -> evaluate_all) on run directories, degenerate ones included.
"""

import json
import math

import numpy as np
import pytest

from elr.analysis import claims
from elr import runs
from elr.runs import Run, load_runs
from elr.analysis.verdict import HELD, INCONCLUSIVE, REFUTED, Verdict

import fakeruns


class FakeRun(Run):
    """A Run held in memory: the attributes the claims read, without a directory."""

    def __init__(self, name, group, *, lr=0.1, wd=5e-4, acc=0.5, epochs=100, labels=None, schedule=None,
                 diverged=False, test_subset=1000):
        self.name, self.path, self.initial = name, None, None
        self.config = {"lr": lr, "weight_decay": wd, "momentum": 0.0, "optimizer": "sgd", "test_subset": test_subset,
                       "schedule": schedule or ("elr" if group == "elr" else "constant"),
                       "labels": {"group": group, "config_id": name, **(labels or {})}}
        accs = acc if isinstance(acc, (list, np.ndarray)) else np.full(epochs, acc)
        self.metrics = [{"epoch": i + 1, "step": 8 * (i + 1), "test_acc": float(a)} for i, a in enumerate(accs)]
        self.summary = {"diverged": diverged, "finished": not diverged}


def analysis(**kw):
    """A per-run analysis with neutral defaults (the keys inspect.analyse returns and the claims read)."""
    a = {"periodic": False, "episodes": [], "period_epochs": None, "stationary": False, "tau_epochs": 10.0,
         "n_tau": 10.0, "angle_rms_over_predicted": None, "theory_applies": True, "weight_decay": 5e-4,
         "momentum": 0.0, "epochs": 100,
         "initial": {"elr": None, "lr": None, "rho": None},
         "final": {"elr": 1e-3, "lr": 0.1, "rho": 10.0, "G": 1.0, "test_acc": 0.5, "train_loss": 0.01},
         "predicted": {"elr": 1e-3, "rho": 10.0, "eta": 0.1, "angle": 0.01},
         "stationarity": {"stationary": False, "drift_ratio": -0.5, "whole_cycles": False, "window": [75, 100],
                          "reason": ""},
         "angle": {"rms": None, "predicted": None, "ratio": None},
         "episode_detail": {"analysable": True, "surrogate_p": None, "sensitivity": 0.9, "irregularity": None,
                            "converged_epoch": 10, "reason": ""},
         "drops": {"transient_end_epoch": 10, "events": [], "sensitivity": 0.9}}
    for k, v in kw.items():
        if isinstance(v, dict) and isinstance(a.get(k), dict):
            a[k] = {**a[k], **v}
        else:
            a[k] = v
    return a


GRID = [(lr0, wd) for lr0 in (0.03, 0.3, 3.0, 30.0) for wd in (5e-4, 5e-3)]


def elr_arm(**acc_by_cell):
    return [FakeRun(f"elr-{lr0:g}-{wd:g}", "elr", lr=lr0, wd=wd, acc=acc_by_cell.get("acc", 0.5)) for lr0, wd in GRID]


def controls(periodic_found=True, smooth_found=False):
    runs = [FakeRun("control-periodic", "control", lr=1.0, wd=5e-3, labels={"control": "periodic"}),
            FakeRun("control-smooth", "control", lr=0.3, wd=0.0, labels={"control": "smooth"})]
    an = {"control-periodic": analysis(periodic=periodic_found, episodes=[20, 31, 43, 56] if periodic_found else [],
                                       drops={"events": [[20, 21, 24, 0.1]] if periodic_found else []}),
          "control-smooth": analysis(periodic=smooth_found, theory_applies=False)}
    return runs, an


# ---------------------------------------------------------------------------------------------- H1

def h1_study(final_elr, stationary=lambda i: True):
    runs = elr_arm()
    an = {r.name: analysis(stationary=stationary(i), final={"elr": final_elr(*GRID[i])},
                           initial={"elr": 1e-3}) for i, r in enumerate(runs)}
    return runs, an


def test_h1_theory_fixed_point_refutes_one_value_and_recovers_the_exponents():
    rng = np.random.default_rng(0)
    # docs/science.md: ELR* = lr0^0.4 (2 lam)^0.6 G^-1.2, with 5% measurement noise
    runs, an = h1_study(lambda lr0, wd: lr0**0.4 * (2 * wd) ** 0.6 * 3.0**-1.2 * math.exp(0.05 * rng.standard_normal()))
    v = claims.evaluate_h1(runs, an)
    assert v.verdict == REFUTED, v.reason
    fit = v.details["fit"]
    assert fit["lr0"]["slope"] == pytest.approx(0.4, abs=0.05) and fit["weight_decay"]["slope"] == pytest.approx(0.6, abs=0.1)


def test_h1_one_common_value_holds():
    rng = np.random.default_rng(1)
    runs, an = h1_study(lambda lr0, wd: 2e-3 * math.exp(0.02 * rng.standard_normal()))
    v = claims.evaluate_h1(runs, an)
    assert v.verdict == HELD, v.reason


def test_h1_needs_stationary_runs_and_reports_the_seeds_observation():
    runs, an = h1_study(lambda lr0, wd: 1.5e-3, stationary=lambda i: i < 3)
    v = claims.evaluate_h1(runs, an)
    assert v.verdict == INCONCLUSIVE and "3 of 8 ELR runs measured stationary" in v.reason
    # the five non-stationary runs moved from 1e-3 to 1.5e-3: "barely moved" (less than 2x)
    assert v.details["observation"]["n_moving"] == 5 and v.details["observation"]["n_barely"] == 5
    runs, an = h1_study(lambda lr0, wd: 5e-3, stationary=lambda i: False)
    assert claims.evaluate_h1(runs, an).details["observation"]["n_barely"] == 0   # moved 5x


# ---------------------------------------------------------------------------------------------- H2

def h2_study(ps=(), sensitivity=0.9, **control_kw):
    runs = elr_arm()
    an = {r.name: analysis() for r in runs}
    for r, p in zip(runs, ps):
        an[r.name] = analysis(periodic=p < 0.05, episodes=[30, 42, 55, 69], period_epochs=13.0,
                              episode_detail={"surrogate_p": p})
    for r in runs:
        an[r.name]["episode_detail"]["sensitivity"] = sensitivity
    c_runs, c_an = controls(**control_kw)
    return runs + c_runs, {**an, **c_an}


def test_h2_periodic_run_holds_after_holm_across_runs():
    v = claims.evaluate_h2(*h2_study(ps=[0.004]))
    assert v.verdict == HELD and v.statistic == 1, v.reason
    assert v.p == pytest.approx(8 * 0.004)                  # Holm's smallest = Bonferroni over the 8 ELR runs
    # p = 0.01 passes alone but not after Holm over 8 runs (0.08): nothing periodic, and with sensitive
    # runs the claim is refuted rather than held
    v = claims.evaluate_h2(*h2_study(ps=[0.01]))
    assert v.statistic == 0 and v.verdict == REFUTED, v.reason


def test_h2_refuted_only_where_the_detector_could_see_it():
    assert claims.evaluate_h2(*h2_study(sensitivity=0.9)).verdict == REFUTED
    v = claims.evaluate_h2(*h2_study(sensitivity=0.5))
    assert v.verdict == INCONCLUSIVE and "not seen" in v.reason


@pytest.mark.parametrize("kw, why", [({"periodic_found": False}, "periodic control shows nothing"),
                                     ({"smooth_found": True}, "smooth control shows the effect")])
def test_h2_a_detector_that_fails_a_control_decides_nothing(kw, why):
    v = claims.evaluate_h2(*h2_study(ps=[0.001], **kw))
    assert v.verdict == INCONCLUSIVE and why in v.reason


def test_h2_without_controls_is_inconclusive():
    runs, an = h2_study(ps=[0.001])
    v = claims.evaluate_h2([r for r in runs if r.group != "control"], an)
    assert v.verdict == INCONCLUSIVE and "no periodic control" in v.reason


def test_h2_association_with_high_lr_and_low_l2():
    runs = elr_arm()
    an = {r.name: analysis() for r in runs}
    for r in runs:   # periodic exactly at high lr0 (3, 30) and low L2
        if r.config["lr"] >= 3 and r.config["weight_decay"] == 5e-4:
            an[r.name] = analysis(periodic=True, episodes=[1, 2, 3, 4], episode_detail={"surrogate_p": 0.001})
    c_runs, c_an = controls()
    v = claims.evaluate_h2(runs + c_runs, {**an, **c_an})
    assoc = v.details["association"]
    # U by hand: lr0 3 beats four and ties one (4.5), 30 beats five and ties one (5.5); each of the four
    # L2 = 5e-3 runs beats both periodic runs' 5e-4 (8) and the two other 5e-4 runs tie them (2)
    assert v.verdict == HELD and assoc["n_periodic"] == 2 and assoc["lr0_U"] == 10 and assoc["wd_U"] == 10


# ---------------------------------------------------------------------------------------------- H3

def h3_study(elr_acc, base_acc, epochs=50):
    runs = [FakeRun(f"e{i}", "elr", acc=a, epochs=epochs) for i, a in enumerate(elr_acc)]
    runs += [FakeRun(f"b{i}", "baseline", acc=a, epochs=epochs) for i, a in enumerate(base_acc)]
    return runs, {}


def test_h3_final_accuracy_is_the_final_tenth_median_not_the_last_epoch():
    acc = np.full(100, 0.6)
    acc[-1] = 0.1                                           # a collapse in the very last epoch
    run = FakeRun("x", "elr", acc=acc)
    assert claims.final_accuracy(run) == pytest.approx(0.6)
    assert claims.final_accuracy(FakeRun("d", "elr", acc=acc, diverged=True)) == pytest.approx(0.1)  # chance


def test_h3_planted_advantage_holds_equal_arms_refute_noisy_arms_stay_open():
    rng = np.random.default_rng(0)
    v = claims.evaluate_h3(*h3_study(0.6 + 0.01 * rng.standard_normal(8), 0.4 + 0.01 * rng.standard_normal(8)))
    assert v.verdict == HELD and v.effect == pytest.approx(0.2, abs=0.02), v.reason
    assert v.details["margin"] == pytest.approx(math.sqrt(0.5 * 0.5 / 1000), rel=0.05)  # binomial sd, n = 1000
    v = claims.evaluate_h3(*h3_study(0.5 + 0.002 * rng.standard_normal(8), 0.5 + 0.002 * rng.standard_normal(8)))
    assert v.verdict == REFUTED, v.reason                  # the CI excludes an advantage of 1.6 points
    v = claims.evaluate_h3(*h3_study(0.5 + 0.1 * rng.standard_normal(8), 0.5 + 0.1 * rng.standard_normal(8)))
    assert v.verdict == INCONCLUSIVE, v.reason
    assert 0 <= v.details["power"]["p_held"] < 0.5         # a 5-point advantage is hard to see at this spread


# ---------------------------------------------------------------------------------------------- H4

def h4_study(event_runs, sensitivity=0.9, **control_kw):
    runs = [FakeRun(f"r{i}", "baseline") for i in range(6)]
    an = {r.name: analysis(drops={"sensitivity": sensitivity,
                                  "events": [[50, 51, 55, 0.1]] if i < event_runs else []}) for i, r in enumerate(runs)}
    c_runs, c_an = controls(**control_kw)
    return runs + c_runs, {**an, **c_an}


def test_h4_counts_runs_with_events_controls_excluded():
    v = claims.evaluate_h4(*h4_study(2))
    assert v.verdict == HELD and v.statistic == 2, v.reason        # the periodic control's event not counted
    assert claims.evaluate_h4(*h4_study(1)).verdict == REFUTED
    assert claims.evaluate_h4(*h4_study(1, sensitivity=0.3)).verdict == INCONCLUSIVE
    v = claims.evaluate_h4(*h4_study(3, periodic_found=False))
    assert v.verdict == INCONCLUSIVE and "positive control" in v.reason


# ---------------------------------------------------------------------------------------------- H5

def h5_study(ratios, stationary=True):
    runs = [FakeRun(f"s{i}", "sgd") for i in range(len(ratios))]
    an = {r.name: analysis(stationary=stationary, angle_rms_over_predicted=x, angle={"rms": 0.01 * x, "predicted": 0.01},
                           stationarity={"stationary": stationary, "whole_cycles": True}) for r, x in zip(runs, ratios)}
    return runs, an


def test_h5_rms_angle_at_prediction_holds_off_by_3x_refuted_unstationary_skipped():
    assert claims.evaluate_h5(*h5_study([0.95, 1.02, 0.98, 1.05])).verdict == HELD
    assert claims.evaluate_h5(*h5_study([2.9, 3.1, 3.0, 3.2])).verdict == REFUTED
    v = claims.evaluate_h5(*h5_study([1.0, 1.0, 1.0, 1.0], stationary=False))
    assert v.verdict == INCONCLUSIVE and len(v.details["not_stationary"]) == 4


def test_h5_interval_is_the_95_percent_t_interval_of_the_log_ratios():
    """Independent of the t quantile the claim uses: at each end of a 95% t interval on the log ratios, the
    two-sided one-sample t test (scipy.stats.ttest_1samp) has p = 0.05 exactly."""
    from scipy import stats as st

    ratios = [0.9, 1.12, 1.0, 1.21, 0.95]
    v = claims.evaluate_h5(*h5_study(ratios))
    lo, hi = v.details["ratio_ci"]
    assert v.effect == pytest.approx(math.exp(np.mean(np.log(ratios))), rel=1e-12)
    for end in (lo, hi):
        assert st.ttest_1samp(np.log(ratios), math.log(end)).pvalue == pytest.approx(0.05, rel=1e-6)


# ---------------------------------------------------------------------------------------------- H6

def h6_study(elr_acc, sgd_acc):
    runs = []
    for (lr0, wd), ea, sa in zip(GRID, elr_acc, sgd_acc):
        runs.append(FakeRun(f"elr-lr{lr0:g}-wd{wd:g}", "elr", lr=lr0, wd=wd, acc=ea))
        runs.append(FakeRun(f"sgd-twin-lr{lr0:g}-wd{wd:g}", "sgd", lr=lr0 / 6.3, wd=wd, acc=sa,
                            labels={"twin": f"elr-lr{lr0:g}-wd{wd:g}", "lr0": lr0}))
    return runs, {}


def test_h6_flat_elr_arm_against_a_varying_sgd_arm_holds_and_the_reverse_refutes():
    flat = [0.50, 0.51, 0.50, 0.51, 0.49, 0.50, 0.50, 0.49]
    varying = [0.20, 0.25, 0.45, 0.40, 0.50, 0.50, 0.15, 0.10]   # GRID order: (lr0, wd) pairs
    v = claims.evaluate_h6(*h6_study(flat, varying))
    # two cells hold the same value in both arms (0.50/0.49, 0.50/0.50): swapping them ties the observed
    # statistic, so 4 of the 256 exchanges reach it
    assert v.verdict == HELD and v.p == pytest.approx(4 / 256), v.reason
    assert v.details["null_size"] == 256 and set(v.details["per_weight_decay"]) == {"0.0005", "0.005"}
    assert 0 <= v.details["power_double_spread"] <= 1 and "power of this test" in v.reason
    v = claims.evaluate_h6(*h6_study(varying, flat))
    assert v.verdict == REFUTED, v.reason


def test_h6_spread_difference_against_a_hand_computation():
    a = np.array([0.5, 0.6, 0.7, 0.5, 0.5, 0.5])
    b = np.array([0.1, 0.6, 0.9, 0.4, 0.5, 0.6])
    groups = [np.array([0, 1, 2]), np.array([3, 4, 5])]
    # sd(0.1, 0.6, 0.9) = 0.40415, sd(0.5, 0.6, 0.7) = 0.1, sd(0.4, 0.5, 0.6) = 0.1, sd(0.5 x3) = 0
    assert claims._spread_difference(a, b, groups) == pytest.approx(((0.404145 - 0.1) + (0.1 - 0.0)) / 2, rel=1e-5)


# ---------------------------------------------------------------------------------------------- all claims

def fixed_evaluator(cid, verdict, p):
    """An evaluator that returns one given verdict and p, whatever the runs: for testing evaluate_all alone."""
    return lambda runs, an: Verdict(cid, "c", verdict, None, p, None, None, [], "r")


def test_held_on_raw_p_but_not_after_holm_becomes_inconclusive(monkeypatch):
    for cid, verdict, p in [("H1", "inconclusive", None), ("H2", "held", 0.03), ("H3", "held", 0.01),
                            ("H4", "refuted", None), ("H5", "held", None), ("H6", "inconclusive", 0.5)]:
        monkeypatch.setitem(claims.EVALUATORS, cid, fixed_evaluator(cid, verdict, p))
    out = {v.id: v for v in claims.evaluate_all([], {})}
    assert out["H3"].p_corrected["holm"] == pytest.approx(0.03) and out["H3"].verdict == "held"
    assert out["H2"].p_corrected["holm"] == pytest.approx(0.06) and out["H2"].verdict == "inconclusive"
    assert "Holm" in out["H2"].reason and out["H5"].verdict == "held" and out["H5"].p_corrected == {}


def test_degenerate_runs_never_crash(tmp_path):
    """The real chain, analyse -> evaluate_all, on run directories a study can hold after a crash or in an
    old format (no epoch-0 record, no RMS angle): every claim inconclusive, JSON-clean, no exception."""
    fakeruns.write_run(tmp_path, "one-epoch", epochs=1)
    fakeruns.write_run(tmp_path, "two-epochs", group="baseline", epochs=2)
    fakeruns.write_run(tmp_path, "diverged-at-1", epochs=50, diverged_epoch=1)
    fakeruns.write_run(tmp_path, "unfinished", group="baseline", epochs=30, finished=False)
    fakeruns.write_run(tmp_path, "dict-lr", epochs=40, series={"lr": [{"a": 0.1, "b": 0.3}] * 40})
    (tmp_path / "empty").mkdir()
    fakeruns.runs.write_json(tmp_path / "empty" / "config.json", fakeruns.config(group="elr", lr=0.1, weight_decay=1e-3))
    runs = load_runs(tmp_path)
    assert len(runs) == 6
    vs = claims.evaluate_all(runs)
    assert [v.id for v in vs] == ["H1", "H2", "H3", "H4", "H5", "H6"]
    assert all(v.verdict == INCONCLUSIVE for v in vs), [(v.id, v.verdict, v.reason) for v in vs]
    for v in vs:
        json.dumps(v.to_json(), allow_nan=False)
    assert claims.evaluate_all([])[0].verdict == INCONCLUSIVE


def test_h6_interval_is_95_percent_of_the_test_split_noise(monkeypatch):
    """Independent of the bootstrap: with spreads far above the noise, the spread difference is linear in the
    accuracies, so its interval is +-1.96 sd, sd^2 = sum_i (d diff / d acc_i)^2 p_i (1 - p_i) / n_test (the delta
    method; d sd(x) / d x_i = (x_i - mean) / ((n - 1) sd(x))). 40,000 draws put the Monte-Carlo error of the
    half width at ~0.5% (measured here: +0.7%); a 93.75% interval is 5% narrower."""
    monkeypatch.setattr(claims, "H6_N_BOOT", 40_000)
    elr = [0.50, 0.62, 0.55, 0.70, 0.45, 0.58, 0.51, 0.66]
    sgd = [0.20, 0.25, 0.45, 0.40, 0.80, 0.50, 0.15, 0.10]
    runs, an = h6_study(elr, sgd)
    n_test = 100_000                                            # noise sd <= 0.16 points: the linear regime
    for r in runs:
        r.config["test_subset"] = n_test
    v = claims.evaluate_h6(runs, an)
    a, b = np.array(elr), np.array(sgd)
    groups = [np.arange(0, 8, 2), np.arange(1, 8, 2)]            # GRID order alternates the two λ
    var = 0.0
    for g in groups:
        for x, sign in ((b, 1.0), (a, -1.0)):
            xs = x[g]
            grad = (xs - xs.mean()) / ((xs.size - 1) * np.std(xs, ddof=1)) / len(groups)
            var += float(np.sum(grad**2 * xs * (1 - xs) / n_test))
    lo, hi = v.ci
    assert (hi - lo) / 2 == pytest.approx(1.959964 * math.sqrt(var), rel=0.02)
    assert (lo + hi) / 2 == pytest.approx(v.effect, abs=0.1 * math.sqrt(var))


# ------------------------------------------------------------------------------------------- chance
def test_a_diverged_runs_chance_level_is_its_datas(tmp_path, monkeypatch):
    path = fakeruns.write_run(tmp_path, "hundred", epochs=20, diverged_epoch=10)
    labels = np.arange(100).repeat(2)
    np.savez(tmp_path / "c100.npz", x_train=np.zeros((200, 4, 4, 3), np.uint8), y_train=labels,
             x_test=np.zeros((100, 4, 4, 3), np.uint8), y_test=np.arange(100))

    def with_config(**changes):
        config = {**json.loads((path / runs.CONFIG).read_text()), **changes}
        runs.write_json(path / runs.CONFIG, config)
        return runs.Run(path)

    assert claims.chance(with_config(data="synthetic")) == pytest.approx(0.1)
    run = with_config(data=f"npz:{tmp_path / 'c100.npz'}")
    assert claims.chance(run) == pytest.approx(0.01)
    assert claims.final_accuracy(run) == pytest.approx(0.01)
    monkeypatch.chdir(tmp_path)                                        # a relative npz:PATH, as the cpu study's
    assert claims.chance(with_config(data="npz:c100.npz")) == pytest.approx(0.01)
    config = json.loads((path / runs.CONFIG).read_text())
    assert claims.chance(with_config(data="npz:gone.npz", env={**config["env"], "num_classes": 100})) == \
        pytest.approx(0.01)                                            # recorded by the trainer: that count
    assert claims.chance(with_config(data="npz:gone.npz", env={})) == pytest.approx(1 / claims.N_CLASSES)
    assert claims.chance(with_config(data="npz:gone.npz", env={}, num_classes=100)) == \
        pytest.approx(0.01)                                            # a config that states it at the top level


# ------------------------------------------------------------------------------- the claims' small parts, alone
def test_interval_verdict_holds_inside_refutes_entirely_outside_and_a_touching_interval_stays_open():
    lo, hi = -1.0, 1.0
    cases = {(-1.0, 1.0): HELD,             # both ends inclusive: an interval equal to the margin is inside it
             (-0.5, 0.5): HELD,
             (-2.0, 0.0): INCONCLUSIVE,     # straddles lo
             (0.5, 3.0): INCONCLUSIVE,      # straddles hi
             (-3.0, -1.0): INCONCLUSIVE,    # touches lo: not entirely outside
             (1.0, 3.0): INCONCLUSIVE,      # touches hi
             (-3.0, -2.0): REFUTED,
             (2.0, 3.0): REFUTED,
             (-3.0, 3.0): INCONCLUSIVE}
    assert {ci: claims._interval_verdict(ci, lo, hi) for ci in cases} == cases
    assert claims._interval_verdict(None, lo, hi) == INCONCLUSIVE


def test_percentages_read_as_the_report_prints_them():
    assert [claims._pc(x) for x in (0.1234, 0.0, 1.0)] == ["12.3%", "0.0%", "100.0%"]
    assert [claims._pc(x) for x in (None, math.nan, math.inf)] == ["n/a"] * 3


def test_only_the_elr_arm_and_the_controls_pay_for_the_episode_sensitivity(monkeypatch):
    asked = {}
    monkeypatch.setattr(claims, "analyse", lambda run, sensitivity: asked.setdefault(run.name, sensitivity))
    runs = [FakeRun(g, g) for g in ("elr", "control", "sgd", "baseline")]
    assert set(claims.analyses(runs)) == {"elr", "control", "sgd", "baseline"}
    assert asked == {"elr": True, "control": True, "sgd": False, "baseline": False}


def test_drop_events_go_back_from_epochs_to_positions_field_by_field():
    a = analysis(drops={"events": [[12, 15, 21, 0.25], [40, 41, 43, 0.5]]})
    assert claims._events(a) == [claims.detectors.DropEvent(11, 14, 20, 0.25),
                                 claims.detectors.DropEvent(39, 40, 42, 0.5)]


def _spread_by_hand(a, b, groups):
    """mean over λ groups of sd(SGD) - sd(ELR), with the standard library's sample sd (n - 1)."""
    import statistics
    return statistics.fmean(statistics.stdev([b[i] for i in g]) - statistics.stdev([a[i] for i in g]) for g in groups)


def _exchange_p_by_hand(a, b, groups):
    """Every subset of cells swapped, one at a time: the fraction with a spread difference >= the observed."""
    import itertools
    cells = [int(i) for g in groups for i in g]
    observed = _spread_by_hand(a, b, groups)
    hits = total = 0
    for swap in itertools.product((False, True), repeat=len(cells)):
        x, y = list(a), list(b)
        for i, s in zip(cells, swap):
            if s:
                x[i], y[i] = b[i], a[i]
        hits += _spread_by_hand(x, y, groups) >= observed - 1e-12
        total += 1
    return hits / total, total


def test_h6_exchange_p_is_the_enumerated_swap_distribution():
    rng = np.random.default_rng(3)
    groups = [np.array([0, 1, 2]), np.array([3, 4, 5, 6])]
    for scale in (1.0, 3.0):    # equal spreads, and an SGD arm spread 3x wider
        a, b = rng.normal(size=7), scale * rng.normal(size=7)
        diff = claims._spread_difference(a, b, groups)
        assert isinstance(diff, float) and diff == pytest.approx(_spread_by_hand(a, b, groups), abs=1e-12)
        p, n = claims._exchange_p(a, b, groups)
        assert (p, n) == pytest.approx(_exchange_p_by_hand(a, b, groups), abs=1e-12)


def test_h6_power_is_the_documented_simulation():
    """_h6_power's procedure restated (per λ, ELR cells ~ N(0, sd), SGD cells ~ N(0, 2 sd), default_rng(0), drawn
    in that order), with the exchange p computed by enumeration: the same fraction of p < 0.05."""
    groups, sds, n_sim = [np.array([0, 1, 2]), np.array([3, 4, 5])], [0.02, 0.05], 30
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(n_sim):
        a, b = np.zeros(6), np.zeros(6)
        for g, sd in zip(groups, sds):
            a[g] = sd * rng.standard_normal(g.size)
            b[g] = 2 * sd * rng.standard_normal(g.size)
        hits += _exchange_p_by_hand(a, b, groups)[0] < 0.05
    power = claims._h6_power(sds, groups, 6, n_sim=n_sim)
    assert power == hits / n_sim and 0 < power < 1


# ------------------------------------------------------------------------------- the planted study, word for word
def test_the_planted_studys_verdicts_are_the_reviewed_ones(tmp_path):
    """Every claim on the planted study (tests/planted.py, all six decided; ~2 s): each verdict's statistic, p,
    CI, runs, details (what the report reads) and reason (what a reader reads) equal the reviewed snapshot
    tests/planted_verdicts.json. ELR_UPDATE_SNAPSHOTS=1 rewrites it: review the diff."""
    import planted
    from elr.analysis.report import verdict_json

    planted.write_planted_study(tmp_path)
    runs = load_runs(tmp_path)
    verdicts = claims.evaluate_all(runs)
    assert {v.id: v.verdict for v in verdicts} == {"H1": REFUTED, "H2": HELD, "H3": HELD, "H4": HELD, "H5": HELD,
                                                  "H6": HELD}
    planted.check_or_update(planted.VERDICTS, planted.jsonable([verdict_json(v) for v in verdicts]))


# ------------------------------------------------------------------- edges and branches the planted study misses
def test_synthetic_data_counts_elr_datas_classes_and_an_npz_is_never_unpickled(tmp_path, monkeypatch):
    import elr.training.data

    run = FakeRun("r", "elr")
    run.config["data"] = "synthetic"
    monkeypatch.setattr(elr.training.data, "SYNTHETIC_CLASSES", 7)       # read from there, not assumed to be 10
    assert claims.num_classes(run) == 7
    # labels stored as a pickled object array: np.load(allow_pickle=False) refuses it, so the count is unknown
    np.savez(tmp_path / "obj.npz", y_train=np.array([1, 2, 99], dtype=object))
    run.config["data"] = f"npz:{tmp_path / 'obj.npz'}"
    assert claims.num_classes(run) == claims.N_CLASSES


def test_h2_rows_survive_an_analysis_without_episode_detail_and_a_flag_without_a_test():
    runs, an = h2_study(ps=[0.004])
    an[runs[1].name] = analysis(periodic=True, episode_detail=None)     # flagged, but never tested: not periodic
    v = claims.evaluate_h2(runs, an)
    row = v.details["runs"][runs[1].name]
    assert row["reason"] == "" and row["periodic"] is False and row["analysable"] is False and row["p_holm"] is None


def h4_edges(*, epochs, transient, sensitivity):
    runs = [FakeRun(f"r{i}", "baseline") for i in range(4)]
    an = {r.name: analysis(epochs=epochs, drops={"transient_end_epoch": transient, "sensitivity": sensitivity,
                                                 "events": []}) for r in runs}
    c_runs, c_an = controls()
    return runs + c_runs, {**an, **c_an}


def test_h4_edges_of_analysable_and_sensitive_runs():
    need = claims.H4_MIN_EPOCHS
    assert claims.H4_MIN_RUNS == 4
    # exactly H4_MIN_EPOCHS after the transient, exactly the minimum sensitivity, exactly H4_MIN_RUNS runs: refuted
    v = claims.evaluate_h4(*h4_edges(epochs=10 + need, transient=10, sensitivity=claims.MIN_SENSITIVITY))
    assert v.verdict == REFUTED and len(v.runs) == 4 and "; no events; " in v.reason, v.reason
    v = claims.evaluate_h4(*h4_edges(epochs=need, transient=None, sensitivity=0.9))   # no transient found: from 0
    assert v.verdict == REFUTED and len(v.runs) == 4, v.reason
    v = claims.evaluate_h4(*h4_edges(epochs=10 + need - 1, transient=10, sensitivity=0.9))
    assert v.verdict == INCONCLUSIVE and v.runs == [], v.reason
    v = claims.evaluate_h4(*h4_edges(epochs=100, transient=10, sensitivity=claims.MIN_SENSITIVITY - 1e-9))
    assert v.verdict == INCONCLUSIVE and "too few runs" in v.reason


def test_h4_coincidence_reads_episode_epochs_as_positions():
    """An event at epochs [50, 51, 55] covers positions 49..50; with the 2-epoch window an episode counts at
    positions 47..52, i.e. epochs 48..53: both edges coincide, one epoch beyond either does not."""
    assert claims.detectors.COINCIDENCE_WINDOW == 2
    def coincident(episodes):
        runs = [FakeRun(f"r{i}", "baseline") for i in range(len(episodes))]
        an = {r.name: analysis(episodes=ep, drops={"events": [[50, 51, 55, 0.1]]}) for r, ep in zip(runs, episodes)}
        v = claims.evaluate_h4(runs, an)
        return v.details["n_events"], v.details["n_coincident"]

    assert coincident([[48], [53]]) == (2, 2)      # both edges of the window
    assert coincident([[47], [54]]) == (2, 0)      # one epoch beyond either


def test_h4_the_smooth_controls_drops_are_reported_not_held_against_the_detector():
    runs, an = h4_study(3, periodic_found=False)
    an["control-smooth"]["drops"]["events"] = [[30, 31, 33, 0.1]]
    v = claims.evaluate_h4(runs, an)
    assert v.details["controls"]["smooth"]["found"] is True and v.details["controls"]["smooth"]["expected"] is None
    assert v.verdict == INCONCLUSIVE
    assert v.reason.startswith("the drop detector failed its positive control (the periodic control shows nothing). ")


def test_h5_edges_diverged_runs_the_minimum_count_and_each_verdicts_words():
    runs, an = h5_study([1.0, 1.02, 0.98, 1.01])
    runs[0].summary["diverged"] = True                # stationary with an angle, but diverged: left out
    v = claims.evaluate_h5(runs, an)
    assert v.runs == ["s1", "s2", "s3"] and v.details["not_stationary"] == ["s0"] and v.verdict == HELD
    assert claims.H5_MIN_RUNS == 3                   # exactly the minimum decides
    v = claims.evaluate_h5(*h5_study([1.0, 1.0]))
    assert v.verdict == INCONCLUSIVE and v.runs == ["s0", "s1"]
    assert v.reason == ("2 stationary SGD runs with weight decay (0 more not measured stationary or without the RMS "
                        "angle); needs >= 3")
    assert claims.evaluate_h5(*h5_study([2.9, 3.1, 3.0])).reason.startswith("the CI lies entirely outside [0.8, 1.25]")
    assert claims.evaluate_h5(*h5_study([0.5, 1.0, 2.0])).reason.startswith("the CI straddles [0.8, 1.25]")
    assert claims.evaluate_h5(*h5_study([1.0, 1.01, 0.99])).reason.startswith("the CI lies inside [0.8, 1.25]")


def test_holm_at_exactly_alpha_demotes_and_says_both_ps(monkeypatch):
    for cid, verdict, p in [("H1", "inconclusive", None), ("H2", "held", 0.025), ("H3", "inconclusive", 0.5),
                            ("H4", "refuted", None), ("H5", "held", None), ("H6", "inconclusive", None)]:
        monkeypatch.setitem(claims.EVALUATORS, cid, fixed_evaluator(cid, verdict, p))
    monkeypatch.setattr(claims, "analyses", lambda runs: pytest.fail("analyses recomputed although given"))
    out = {v.id: v for v in claims.evaluate_all([], {})}
    assert out["H2"].p_corrected["holm"] == 0.05 and out["H2"].verdict == INCONCLUSIVE   # 2 x 0.025: Holm's h = α
    assert out["H2"].reason.startswith("p = 0.025 < 0.05 alone, but Holm-corrected p = 0.05 >= 0.05 across")


def test_h2_edges_of_holm_sensitivity_and_the_association():
    # one run at p = 0.05 / 8 among 8 analysable: Holm's adjusted p is 0.05 exactly, which is not < α
    runs, an = h2_study(ps=[0.05 / 8])
    an[runs[0].name]["periodic"] = True
    v = claims.evaluate_h2(runs, an)
    assert v.details["runs"][runs[0].name]["p_holm"] == 0.05 and v.statistic == 0 and v.verdict != HELD
    # no periodic run: the association is not testable, and says so
    assert v.details["association"] == {"summary": "Association with lr0 / L2 not testable: 0 periodic and 8 "
                                                   "non-periodic analysable runs.", "n_periodic": 0, "n_other": 8}
    # exactly H2_MIN_RUNS runs at exactly the minimum sensitivity call the episodes absent; unknown is not enough
    assert claims.H2_MIN_RUNS == 4
    runs, an = h2_study()
    for i, r in enumerate(runs[:8]):
        an[r.name]["episode_detail"]["sensitivity"] = claims.MIN_SENSITIVITY if i < 4 else 0.5
    assert claims.evaluate_h2(runs, an).verdict == REFUTED
    an[runs[0].name]["episode_detail"]["sensitivity"] = None
    assert claims.evaluate_h2(runs, an).verdict == INCONCLUSIVE
    # a control analysed without episode detail still gets a row
    runs, an = h2_study(ps=[0.004])
    an["control-smooth"]["episode_detail"] = None
    assert claims.evaluate_h2(runs, an).details["controls"]["smooth"]["reason"] == ""


def test_h3_too_few_runs_and_the_decision_rules_edges(monkeypatch):
    v = claims.evaluate_h3(*h3_study([0.8, 0.81, 0.82], [0.6, 0.61, 0.62]))
    assert v.verdict == INCONCLUSIVE and v.runs == ["e0", "e1", "e2", "b0", "b1", "b2"]
    assert v.reason == ("3 ELR and 3 baseline runs (test split 1000 images); the one-sided Mann–Whitney test needs "
                        ">= 4 per arm to reach p < 0.05")
    assert v.details["elr_acc"] == {"e0": 0.8, "e1": 0.81, "e2": 0.82}
    v = claims.evaluate_h3(*h3_study([0.8, 0.8, 0.8, 0.8], []))        # the margin still comes from the runs there are
    assert v.details["margin"] == pytest.approx(math.sqrt(0.8 * 0.2 / 1000)) and v.verdict == INCONCLUSIVE
    study = h3_study([0.8, 0.81, 0.82, 0.83], [0.6, 0.61, 0.62, 0.63])
    margin = claims.evaluate_h3(*study).details["margin"]
    # p exactly α does not hold; a CI ending exactly at the margin does not refute
    monkeypatch.setattr(claims.stats, "mann_whitney_greater", lambda a, b: (10.0, claims.ALPHA))
    monkeypatch.setattr(claims.stats, "hodges_lehmann", lambda a, b: (0.0, (-0.05, margin), 0.95))
    v = claims.evaluate_h3(*study)
    assert v.verdict == INCONCLUSIVE
    assert v.reason.startswith(f"p >= 0.05 but the CI still allows an ELR advantage of {100 * margin:.3g} pts or more")
    monkeypatch.setattr(claims.stats, "hodges_lehmann", lambda a, b: (0.0, (-0.05, margin * 0.99), 0.95))
    v = claims.evaluate_h3(*study)
    assert v.verdict == REFUTED
    assert v.reason.startswith(f"p >= 0.05 and the CI excludes an ELR advantage of {100 * margin:.3g} pts or more")


def test_formatting_helpers_and_a_verdicts_defaults():
    assert [claims._fmt(x) for x in (None, math.nan, 0.012345, 3)] == ["n/a", "n/a", "0.0123", "3"]
    assert [claims._pts(x) for x in (None, math.nan, math.inf, 0.0123)] == ["n/a", "n/a", "n/a", "1.23 pts"]
    v = claims._verdict("H1", HELD)
    assert v.reason == "" and v.runs == [] and v.details == {} and v.ci is None


def test_diverged_reads_the_summary_and_defaults_to_not():
    run = FakeRun("r", "elr")
    run.summary = {"finished": True}                  # an older summary without the key
    assert claims.diverged(run) is False
    run.summary = None
    assert claims.diverged(run) is False
    run.summary = {"diverged": True}
    assert claims.diverged(run) is True


def test_control_check_checks_each_control_with_its_own_detector():
    runs, an = controls()
    ok, problem, results = claims.control_check(runs, an, positive=lambda a: True, negative=lambda a: False)
    assert ok and problem == "" and results["periodic"]["found"] is True and results["smooth"]["found"] is False
    ok, problem, _ = claims.control_check(runs, an, positive=lambda a: False, negative=lambda a: True)
    assert not ok and problem == "the periodic control shows nothing; the smooth control shows the effect"
    smooth_only = [r for r in runs if r.name == "control-smooth"]       # a missing control stops nothing else
    ok, problem, results = claims.control_check(smooth_only, an, positive=lambda a: True, negative=lambda a: False)
    assert problem == "no periodic control in this study" and set(results) == {"smooth"}
    ok, problem, _ = claims.control_check([], an, positive=lambda a: True, negative=lambda a: False)
    assert problem == "no periodic control in this study; no smooth control in this study"


def test_test_split_size_from_the_accuracies_resolution_when_the_config_does_not_say():
    runs = [FakeRun("a", "elr", acc=[0.5, 0.504, 0.512], test_subset=None),
            FakeRun("b", "elr", acc=[0.6, 0.6], test_subset=None)]
    assert claims.test_split_size(runs) == 250                        # every accuracy a multiple of 1/250
    assert claims.test_split_size([FakeRun("c", "elr", acc=[0.5, 0.5], test_subset=None)]) is None


def test_h1_unknown_moves_the_minimum_fit_the_lr0_statistic_and_each_verdicts_words(monkeypatch):
    # non-stationary runs without an epoch-0 record: how far they moved is unknown, and said so
    monkeypatch.setattr(claims, "predicted_elr", lambda run: np.full(10, 2e-3))   # a theory line for every run
    runs, an = h1_study(lambda lr0, wd: 1.5e-3, stationary=lambda i: i < 3)
    for r in runs[3:5]:
        an[r.name]["initial"]["elr"] = None
    v = claims.evaluate_h1(runs, an)
    assert v.reason.endswith("; 2 more have no epoch-0 record, so how far they moved is unknown."), v.reason
    assert v.runs == [r.name for r in runs[:3]] and v.details["observation"]["n_moving"] == 3
    assert v.details["runs"][3]["predicted_move"] is None and v.details["runs"][5]["predicted_move"] == \
        pytest.approx(math.log(2.0))
    # exactly len(predictors) + 3 = 5 stationary runs spanning both lr0 and λ: the fit decides
    rng = np.random.default_rng(2)
    runs, an = h1_study(lambda lr0, wd: 2e-3 * math.exp(0.5 * rng.standard_normal()), stationary=lambda i: i < 5)
    v = claims.evaluate_h1(runs, an)
    assert v.details["fit"] is not None and len(v.runs) == 5
    assert v.verdict == INCONCLUSIVE and v.reason.startswith(
        "a CI straddles the band, or only one of lr0 / λ varies among the stationary runs ±0.1."), v.reason
    v = claims.evaluate_h1(*h1_study(lambda lr0, wd: 2e-3, stationary=lambda i: True))
    assert v.verdict == HELD and v.reason.startswith("both slopes' CIs inside ±0.1.")
    # only λ varies among the stationary runs (one lr0): the statistic is the λ slope
    runs, an = h1_study(lambda lr0, wd: 1e-3 * (wd / 5e-4) ** 0.6 * math.exp(0.01 * rng.standard_normal()),
                        stationary=lambda i: GRID[i][0] == 0.3)
    for r in runs:                                                    # four stationary runs: lr0 0.3, two λ
        if an[r.name]["stationary"]:
            an[r.name + "-2"] = an[r.name]
    extra = [FakeRun(r.name + "-2", "elr", lr=r.config["lr"], wd=r.config["weight_decay"]) for r in runs
             if an[r.name]["stationary"]]
    v = claims.evaluate_h1(runs + extra, an)
    assert set(v.details["fit"]) == {"weight_decay"} and v.statistic == v.details["fit"]["weight_decay"]["slope"]


def test_h6_edges_minimum_cells_words_power_and_a_noise_floor_at_perfect_accuracy():
    flat = [0.50, 0.51, 0.50, 0.51, 0.49, 0.50, 0.50, 0.49]
    # two lr0 per λ: too few cells
    v = claims.evaluate_h6(*h6_study(flat[:4], flat[:4]))
    assert v.verdict == INCONCLUSIVE and v.details["cells"] and len(v.runs) == 8
    assert v.reason == "4 ELR/plain-SGD cell pairs; needs >= 3 lr0 values at some λ (the study's third arm)"
    # exactly three lr0 per λ decide
    v = claims.evaluate_h6(*h6_study(flat[:6], [0.2, 0.25, 0.45, 0.4, 0.5, 0.5]))
    assert v.details["null_size"] == 2 ** 6 and v.details["per_weight_decay"]
    # equal spreads: no reduction, none excluded
    noise = [0.50, 0.40, 0.55, 0.45, 0.60, 0.42, 0.48, 0.52]
    v = claims.evaluate_h6(*h6_study(noise, noise[::-1]))
    assert v.verdict == INCONCLUSIVE and v.reason.startswith("no significant reduction, but one is not excluded. ")
    # the reported power is the documented simulation at the ELR arm's sample sds (n - 1)
    import statistics
    groups = [np.array(g) for g in ([0, 2, 4, 6], [1, 3, 5, 7])]   # cells by λ, in GRID order
    sds = [statistics.stdev([noise[i] for i in g]) for g in groups]
    assert v.details["power_double_spread"] == claims._h6_power(sds, groups, 8)
    # with λ groups of unequal size the n - 1 matters (equal sizes scale every cell alike: the test is scale-free)
    uneven = [0.622, 0.623, 0.506, 0.414, 0.322, 0.453, 0.463]    # 4 cells at λ 5e-4, 3 at 5e-3
    v = claims.evaluate_h6(*h6_study(uneven, uneven[::-1]))
    groups = [np.array(g) for g in ([0, 2, 4, 6], [1, 3, 5])]
    sds = [statistics.stdev([uneven[i] for i in g]) for g in groups]
    assert v.details["power_double_spread"] == claims._h6_power(sds, groups, 7) == 0.285
    assert claims._h6_power([statistics.pstdev([uneven[i] for i in g]) for g in groups], groups, 7) == 0.2775
    v = claims.evaluate_h6(*h6_study([0.20, 0.25, 0.45, 0.40, 0.50, 0.50, 0.15, 0.10], flat))
    assert v.verdict == REFUTED and v.reason.startswith(
        "the ELR arm's spread is at least as large as plain SGD's beyond test-split noise. ")
    # accuracies of exactly 0 and 1 still carry the noise floor of one test image: the interval has a width
    v = claims.evaluate_h6(*h6_study([1.0, 0.0] * 4, [0.0, 1.0] * 4))
    assert v.ci[1] - v.ci[0] > 0


def test_h1_collinear_lr0_and_lambda_leave_the_slopes_undetermined():
    """lr0 and λ moving together among the stationary runs: OLS cannot separate them (nan), the report gets no
    CI (None, not [nan, nan]) and the claim stays open."""
    cells = [(0.03, 5e-4)] * 3 + [(0.3, 5e-3)] * 2
    runs = [FakeRun(f"c{i}", "elr", lr=lr0, wd=wd) for i, (lr0, wd) in enumerate(cells)]
    an = {r.name: analysis(stationary=True, final={"elr": 1e-3 * (1 + i)}, initial={"elr": 1e-3})
          for i, r in enumerate(runs)}
    v = claims.evaluate_h1(runs, an)
    assert v.verdict == INCONCLUSIVE and {k: f["ci"] for k, f in v.details["fit"].items()} == \
        {"lr0": None, "weight_decay": None}
