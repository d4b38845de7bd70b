"""elr.claims on synthetic run directories (tests/fakeruns.py) with planted effects and planted nulls."""

import json
import math

import numpy as np
import pytest

from elr import claims
from elr.runs import load_runs
from elr.verdict import HELD, INCONCLUSIVE, REFUTED, Verdict

import fakeruns


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    fakeruns.write_study(root)
    return load_runs(root)


@pytest.fixture(scope="module")
def verdicts(study):
    return claims.evaluate_all(study)


def relax(init, final, epochs, rate=20.0):
    """ELR relaxing log-exponentially from init to final (an SI norm settling)."""
    e = np.arange(epochs)
    return np.exp(np.log(final) + (np.log(init) - np.log(final)) * np.exp(-e / rate))


# ---------------------------------------------------------------------------------------------- all claims

def test_evaluate_all_on_a_planted_study(verdicts):
    assert [v.id for v in verdicts] == ["H1", "H2", "H3", "H4", "H5"]
    got = {v.id: v.verdict for v in verdicts}
    # the study follows the equilibrium theory: ELR* grows as √(ηλ), so H1 fails and H5 holds
    assert got == {"H1": REFUTED, "H2": HELD, "H3": HELD, "H4": HELD, "H5": HELD}, \
        {v.id: v.reason for v in verdicts}
    with_p = [v for v in verdicts if v.p is not None]
    assert {v.id for v in with_p} == {"H2", "H3"}
    p1, p2 = sorted(v.p for v in with_p)                       # two p's: the corrections by hand
    holm = {p1: min(1.0, 2 * p1), p2: max(min(1.0, 2 * p1), p2)}
    bh = {p1: min(2 * p1, p2), p2: p2}
    for v in with_p:
        assert v.p_corrected == pytest.approx({"holm": holm[v.p], "bh": bh[v.p]})
    for v in verdicts:
        assert v.p_corrected == {} or v.p is not None
        assert v.seed_finding and v.claim and v.reason
        d = json.loads(json.dumps(v.to_json(), allow_nan=False))   # strict JSON for verdicts.json
        assert Verdict.from_json(d).verdict == v.verdict


def test_details_carry_what_the_report_plots(verdicts, study):
    h1, h2, h3, h4, h5 = verdicts
    elr_names = {r.name for r in study if r.group == "elr"}
    assert set(h1.details["runs"]) == elr_names
    assert set(h1.details["runs"]["elr-0"]) >= {"lr0", "wd", "initial_elr", "final_elr", "equilibrated", "tau_epochs"}
    # lr0 0.03, L2 1e-3: tau = 1/(4·3e-5·100 steps) = 83 epochs, 3 tau > 200 epochs run
    assert h1.details["runs"]["elr-6"]["tau_epochs"] == pytest.approx(83.3, rel=1e-3)
    assert not h1.details["runs"]["elr-6"]["equilibrated"] and "elr-6" not in h1.runs
    saw = h2.details["runs"]["elr-0"]
    assert saw["periodic"] and saw["series"]["elr"]["period"] == pytest.approx(20, abs=1)
    assert set(saw["series"]) == {"train_loss", "si_norm", "elr"}
    assert {"lr0_p", "wd_p"} <= set(h2.details["association"])
    assert h3.details["baseline_acc"]["base-7"] == pytest.approx(0.1)   # diverged: chance
    assert set(h3.details) >= {"elr_acc", "baseline_acc", "elr_best", "baseline_best"}
    ev = h4.details["runs"]["elr-0"]["events"]
    assert ev and all(e[1] in range(61, 201, 20) for e in ev)          # dips at the collapses (epoch = index + 1)
    assert h4.details["coincide_fraction"] == 1.0 and h4.details["params"]["drop"] == 0.05
    assert h5.details["slope"] == pytest.approx(0.5, abs=0.05) and len(h5.details["slope_ci"]) == 2
    assert {"run", "eta", "wd", "momentum", "eta_lambda", "measured_angle", "predicted_angle",
            "elr_star"} <= set(h5.details["points"][0])


# ---------------------------------------------------------------------------------------------- H1

H1_GRID = [(1.0, 1e-2), (0.3, 1e-2), (0.1, 1e-2), (0.03, 1e-2), (0.5, 3e-2), (0.05, 3e-2)]


def h1_runs(root, final, wd_scale=1.0, epochs=200):
    for i, (lr0, wd) in enumerate(H1_GRID):
        init = lr0 / 100
        fin = final(lr0, wd, init) * np.exp(0.02 * np.random.default_rng(i).standard_normal())
        fakeruns.write_run(root, f"elr-{i}", lr=lr0, weight_decay=wd * wd_scale, epochs=epochs,
                           series={"elr": relax(init, fin, epochs)}, seed=i)
    return load_runs(root)


def test_h1_planted_convergence_holds(tmp_path):
    v = claims.evaluate_h1(h1_runs(tmp_path, lambda lr0, wd, init: 1e-3))
    assert v.verdict == HELD, v.reason
    assert v.ci[1] < claims.H1_MARGIN and len(v.runs) == 6 and v.p is None


def test_h1_elr_that_barely_moves_is_refuted(tmp_path):
    v = claims.evaluate_h1(h1_runs(tmp_path, lambda lr0, wd, init: init * 1.1))   # the seed's finding
    assert v.verdict == REFUTED, v.reason
    assert v.effect == pytest.approx(1.0, abs=0.1) and v.statistic == pytest.approx(1.0)   # rank-perfect with lr0


def test_h1_partial_convergence_at_the_margin_is_inconclusive(tmp_path):
    # final = init^0.2 (up to a constant): a fifth of the initial log spread is left, R ≈ the margin
    v = claims.evaluate_h1(h1_runs(tmp_path, lambda lr0, wd, init: 1e-3 * (init / 1e-3) ** claims.H1_MARGIN))
    assert v.verdict == INCONCLUSIVE and v.ci[0] < claims.H1_MARGIN < v.ci[1], v.reason


def test_h1_too_few_equilibrated_runs_is_inconclusive(tmp_path):
    # L2 1e-5: tau = 1/(4ηλ) steps is at least 2,500 epochs here, against 200 run
    v = claims.evaluate_h1(h1_runs(tmp_path, lambda lr0, wd, init: 1e-3, wd_scale=1e-3))
    assert v.verdict == INCONCLUSIVE
    assert "0 of 6 ELR runs equilibrated" in v.reason and v.runs == []


def test_h1_settled_lr_required(tmp_path):
    # a cosine-like schedule still moving at the end never counts as equilibrated
    epochs = 200
    lr = 0.5 * (1 + np.cos(np.pi * np.arange(epochs) / epochs)) + 1e-3
    fakeruns.write_run(tmp_path, "cos", lr=1.0, weight_decay=1e-2, epochs=epochs, series={"lr": lr})
    (run,) = load_runs(tmp_path)
    e = claims.equilibration(run)
    assert not e["equilibrated"] and e["settled_epochs"] < 20


# ---------------------------------------------------------------------------------------------- H2

def test_h2_smooth_runs_refute_and_short_runs_are_inconclusive(tmp_path):
    for i, (lr0, wd) in enumerate(H1_GRID[:4]):
        fakeruns.write_run(tmp_path / "smooth", f"elr-{i}", lr=lr0, weight_decay=wd, epochs=150,
                           series={"elr": relax(lr0 / 100, 1e-3, 150)}, seed=i, noise=0.01)
        fakeruns.write_run(tmp_path / "short", f"elr-{i}", lr=lr0, weight_decay=wd, epochs=15, seed=i)
    v = claims.evaluate_h2(load_runs(tmp_path / "smooth"))
    assert v.verdict == REFUTED, v.reason
    assert v.statistic == 0 and not any(r["periodic"] for r in v.details["runs"].values())
    v = claims.evaluate_h2(load_runs(tmp_path / "short"))
    assert v.verdict == INCONCLUSIVE and v.runs == [] and v.p is None


def test_h2_association_with_high_lr_and_low_l2(tmp_path):
    grid = [(1.0, 1e-4), (0.5, 1e-4), (0.8, 3e-4), (0.01, 1e-2), (0.02, 1e-2), (0.03, 3e-2)]
    for i, (lr0, wd) in enumerate(grid):
        s = {}
        if lr0 >= 0.5:
            s["elr"], _ = fakeruns.sawtooth_elr(200, low=1e-3, high=1e-2, period=20, start=30, seed=i)
        fakeruns.write_run(tmp_path, f"elr-{i}", lr=lr0, weight_decay=wd, epochs=200, series=s, seed=i, noise=0.01)
    v = claims.evaluate_h2(load_runs(tmp_path))
    assert v.verdict == HELD and v.statistic == 3 and v.p < claims.ALPHA
    a = v.details["association"]
    assert a["n_periodic"] == 3 and a["lr0_p"] == pytest.approx(1 / 20) and a["wd_p"] == pytest.approx(1 / 20)


# ---------------------------------------------------------------------------------------------- H3

def h3_runs(root, elr_acc, base_acc, diverged=()):
    for i, a in enumerate(elr_acc):
        fakeruns.write_run(root, f"elr-{i}", epochs=30, series={"test_acc": np.full(30, a)}, seed=i)
    for j, a in enumerate(base_acc):
        fakeruns.write_run(root, f"base-{j}", group="baseline", schedule="cosine", epochs=30,
                           series={"test_acc": np.full(30, a)}, seed=j, diverged_epoch=10 if j in diverged else None)
    return load_runs(root)


def test_h3_planted_advantage_holds_with_diverged_baselines_at_chance(tmp_path):
    v = claims.evaluate_h3(h3_runs(tmp_path, [0.85, 0.86, 0.84, 0.87, 0.83], [0.6, 0.7, 0.65, 0.9, 0.5],
                                   diverged=(3,)))
    assert v.verdict == HELD, v.reason
    assert v.details["baseline_acc"]["base-3"] == pytest.approx(0.1)          # 0.9 before diverging
    assert v.details["baseline_best"]["base-3"] == pytest.approx(0.9)
    assert v.statistic == 25 and v.p == pytest.approx(1 / math.comb(10, 5))   # complete separation
    assert v.effect == pytest.approx(0.85 - 0.6) and v.ci[0] > 0


def test_h3_planted_null_is_not_held(tmp_path):
    same = [0.80, 0.81, 0.82, 0.83, 0.84]
    v = claims.evaluate_h3(h3_runs(tmp_path / "same", same, same))
    assert v.verdict != HELD and v.p > 0.3
    v = claims.evaluate_h3(h3_runs(tmp_path / "worse", [0.5, 0.52, 0.51, 0.49], [0.8, 0.81, 0.79, 0.82]))
    assert v.verdict == REFUTED and v.ci[1] <= claims.H3_MARGIN
    v = claims.evaluate_h3(h3_runs(tmp_path / "few", [0.9, 0.9, 0.9], [0.1, 0.2, 0.3]))
    assert v.verdict == INCONCLUSIVE and "needs >= 4" in v.reason


# ---------------------------------------------------------------------------------------------- H4

def test_h4_no_drops_refuted_and_drops_counted_per_run(tmp_path):
    for i in range(4):
        fakeruns.write_run(tmp_path / "none", f"r{i}", epochs=100, seed=i)
        dips = [50, 80] if i < 2 else []
        fakeruns.write_run(tmp_path / "some", f"r{i}", epochs=100, seed=i,
                           series={"test_acc": fakeruns.acc_dips(100, dips, seed=i)})
    v = claims.evaluate_h4(load_runs(tmp_path / "none"))
    assert v.verdict == REFUTED and v.statistic == 0, v.reason
    v = claims.evaluate_h4(load_runs(tmp_path / "some"))
    assert v.verdict == HELD and v.statistic == 2
    assert [e[1] for e in v.details["runs"]["r0"]["events"]] == [51, 81]    # epochs are 1-based
    assert v.details["runs"]["r3"]["events"] == []
    assert v.details["coincide_fraction"] == 0.0                             # no spikes planted


# ---------------------------------------------------------------------------------------------- H5

def h5_runs(root, factor=1.0, n=6, wd_scale=1.0):
    rng = np.random.default_rng(0)
    for i in range(n):
        lr, wd, mu = [0.05, 0.1, 0.2, 0.4, 0.8, 1.0][i], [1e-2, 3e-3, 1e-2, 5e-3, 1e-3, 3e-2][i], [0.0, 0.9][i % 2]
        s = {"elr": np.full(200, fakeruns.equilibrium_elr(lr, wd, mu) * np.exp(0.05 * rng.standard_normal())),
             "angular_update_per_step": np.full(200, factor * math.sqrt(2 * lr * wd / (1 + mu)))}  # Wan et al.
        fakeruns.write_run(root, f"b{i}", group="baseline" if i % 2 else "elr", lr=lr, weight_decay=wd * wd_scale,
                           momentum=mu, epochs=200, series=s, seed=i)
    fakeruns.write_run(root, "adam", group="baseline", optimizer="adam", epochs=200, seed=9)   # not SGD: left out
    return load_runs(root)


def test_h5_theory_planted_holds(tmp_path):
    v = claims.evaluate_h5(h5_runs(tmp_path))
    assert v.verdict == HELD, v.reason
    assert v.effect == pytest.approx(1.0) and "adam" not in v.runs and len(v.runs) == 6
    assert v.statistic == pytest.approx(0.5, abs=0.1)


def test_h5_angle_off_by_3x_refuted(tmp_path):
    v = claims.evaluate_h5(h5_runs(tmp_path, factor=3.0))
    assert v.verdict == REFUTED and v.effect == pytest.approx(3.0)


def test_h5_too_few_equilibrated_is_inconclusive(tmp_path):
    v = claims.evaluate_h5(h5_runs(tmp_path, wd_scale=1e-4))
    assert v.verdict == INCONCLUSIVE and "0 equilibrated" in v.reason
    v = claims.evaluate_h5(h5_runs(tmp_path / "three", n=3))
    assert v.verdict == INCONCLUSIVE and "3 equilibrated" in v.reason


# ---------------------------------------------------------------------------------------------- robustness

def test_degenerate_runs_never_crash(tmp_path):
    fakeruns.write_run(tmp_path, "one-epoch", epochs=1)
    fakeruns.write_run(tmp_path, "two-epochs", group="baseline", epochs=2)
    fakeruns.write_run(tmp_path, "diverged-at-1", epochs=50, diverged_epoch=1)
    fakeruns.write_run(tmp_path, "unfinished", group="baseline", epochs=30, finished=False)
    fakeruns.write_run(tmp_path, "dict-lr", epochs=40, series={"lr": [{"a": 0.1, "b": 0.3}] * 40})
    (tmp_path / "empty").mkdir()
    fakeruns.runs.write_json(tmp_path / "empty" / "config.json", fakeruns.config(group="elr", lr=0.1,
                                                                                 weight_decay=1e-3))
    runs = load_runs(tmp_path)
    assert len(runs) == 6
    vs = claims.evaluate_all(runs)
    assert [v.id for v in vs] == ["H1", "H2", "H3", "H4", "H5"]
    assert all(v.verdict == INCONCLUSIVE for v in vs), [(v.id, v.verdict, v.reason) for v in vs]
    for v in vs:
        json.dumps(v.to_json(), allow_nan=False)
    assert claims.equilibration(next(r for r in runs if r.name == "dict-lr"))["eta"] == pytest.approx(0.2)
    assert claims.evaluate_all([])[0].verdict == INCONCLUSIVE


def test_held_on_raw_p_but_not_after_holm_becomes_inconclusive(monkeypatch):
    from elr import claims
    from elr.verdict import Verdict

    def fixed(cid, verdict, p):
        return lambda runs: Verdict(cid, "c", verdict, None, p, None, None, [], "r")

    for cid, verdict, p in [("h1", "inconclusive", None), ("h2", "held", 0.03), ("h3", "held", 0.01),
                            ("h4", "refuted", None), ("h5", "held", None)]:
        monkeypatch.setattr(claims, f"evaluate_{cid}", fixed(cid.upper(), verdict, p))
    out = {v.id: v for v in claims.evaluate_all([])}
    assert out["H3"].p_corrected["holm"] == pytest.approx(0.02) and out["H3"].verdict == "held"
    assert out["H2"].p_corrected["holm"] == pytest.approx(0.03) and out["H2"].verdict == "held"
    monkeypatch.setattr(claims, "evaluate_h2", fixed("H2", "held", 0.04))
    out = {v.id: v for v in claims.evaluate_all([])}
    assert out["H3"].p_corrected["holm"] == pytest.approx(0.02) and out["H3"].verdict == "held"
    assert out["H2"].p_corrected["holm"] == pytest.approx(0.04) and out["H2"].verdict == "held"
    monkeypatch.setattr(claims, "evaluate_h3", fixed("H3", "held", 0.03))
    out = {v.id: v for v in claims.evaluate_all([])}
    assert out["H2"].p_corrected["holm"] == pytest.approx(0.06) and out["H2"].verdict == "inconclusive"
    assert "Holm" in out["H2"].reason and out["H5"].verdict == "held"
