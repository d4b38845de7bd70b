"""elr.analysis.inspect (the per-run analysis) and `elr inspect`, on run directories simulated from the norm recursion.

The simulated run is plain SGD on scale-invariant weights at the level of the norm: every step
x_{t+1} = (1 - eta lam)^2 x_t + eta^2 G^2 / x_t (x = ||w||^2, docs/science.md's exact identity) with the
per-step angle eta G / x (a gradient orthogonal to w rotates it by ||eta g|| / ||w||), logged per epoch in
the trainer's format. Its answers are known: the fixed point, the RMS angle sqrt(2 eta lam), stationarity.
"""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from elr import runs
from elr.cli import main
from elr.analysis.inspect import analyse, predicted_elr, summary_text
from elr.runs import Run


def simulate_run(root, name, *, lr=0.5, wd=5e-3, G=2.0, rho0=3.0, epochs=120, spe=8, power=0):
    """A run directory whose norm, rate, ELR, G and angles follow the norm recursion step by step."""
    path = root / name
    path.mkdir(parents=True)
    cfg = {"model": "convnet_si", "optimizer": "sgd", "lr": lr, "weight_decay": wd, "momentum": 0.0,
           "schedule": "elr" if power else "constant", "elr_power": power or 1, "elr_norm": "si",
           "elr_per_layer": False, "labels": {"group": "sgd"}}
    runs.write_json(path / runs.CONFIG, cfg)
    x = rho0**2
    rate = lambda x: lr / math.sqrt(x) ** power  # noqa: E731
    lines = [{"epoch": 0, "step": 0, "lr": rate(x), "lr_si": rate(x), "si_norm": math.sqrt(x),
              "weight_norm": math.sqrt(x), "elr": rate(x) / x, "test_acc": 0.1}]
    for e in range(1, epochs + 1):
        eta = rate(x)                                  # recomputed at the epoch start, as the seed's rule
        angles, elrs = [], []
        for _ in range(spe):
            angles.append(eta * G / x)
            elrs.append(eta / x)
            x = (1 - eta * wd) ** 2 * x + eta**2 * G**2 / x
        lines.append({"epoch": e, "step": e * spe, "lr": eta, "lr_si": eta, "si_norm": math.sqrt(x),
                      "weight_norm": math.sqrt(x), "elr": eta / x, "elr_mean": float(np.mean(elrs)),
                      "effective_grad_norm": G, "effective_grad_norm_rms": G,
                      "angular_update_per_step": float(np.mean(angles)),
                      "angular_update_rms": math.sqrt(float(np.mean(np.square(angles)))),
                      "train_loss": 0.02 + 2.3 * math.exp(-e / 5), "test_acc": 0.6 - 0.5 * math.exp(-e / 5)})
    runs.write_metrics(path, lines)
    return path


def test_a_run_at_equilibrium_matches_the_theory(tmp_path):
    # eta lam = 2.5e-3 per step, tau = 1/(4 eta lam) = 100 steps = 12.5 epochs: 120 epochs are ~10 tau
    a = analyse(Run(simulate_run(tmp_path, "eq")))
    rho_star = (0.5 * 2.0**2 / (2 * 5e-3)) ** 0.25    # Wan et al. 2021: rho*^4 = eta G^2 / (2 lam)
    assert a["predicted"]["rho"] == pytest.approx(rho_star, rel=1e-9)
    assert a["final"]["rho"] == pytest.approx(rho_star, rel=0.01)
    assert a["stationary"] and abs(a["stationarity"]["drift_ratio"]) < 0.05
    assert a["angle_rms_over_predicted"] == pytest.approx(1.0, abs=0.02)
    assert a["tau_epochs"] == pytest.approx(12.5) and a["n_tau"] == pytest.approx(120 / 12.5)
    assert a["episodes"] == [] and not a["periodic"]
    assert "stationary: yes" in summary_text(a)


def test_a_run_far_above_equilibrium_is_not_stationary(tmp_path):
    # lam 10x smaller: tau = 125 epochs, and the norm starts 10x above its fixed point
    a = analyse(Run(simulate_run(tmp_path, "far", wd=5e-4, rho0=30.0)))
    assert not a["stationary"] and a["stationarity"]["drift_ratio"] < -0.8
    assert a["n_tau"] < 1


def test_the_seed_rule_run_theory_trajectory_and_fixed_point(tmp_path):
    path = simulate_run(tmp_path, "rule", lr=3.0, wd=5e-3, G=2.0, rho0=4.0, epochs=200, power=1)
    run = Run(path)
    a = analyse(run)
    rho_star = (3.0 * 2.0**2 / (2 * 5e-3)) ** 0.2     # docs/science.md: rho*^5 = lr0 G^2 / (2 lam)
    assert a["power"] == 1 and a["predicted"]["rho"] == pytest.approx(rho_star, rel=1e-9)
    assert a["final"]["rho"] == pytest.approx(rho_star, rel=0.02) and a["stationary"]
    measured = run.series("elr_mean")
    assert predicted_elr(run) == pytest.approx(measured, rel=0.03)   # the theory's ELR, epoch by epoch


def test_an_old_run_without_the_new_fields_still_analyses(tmp_path):
    path = simulate_run(tmp_path, "old")
    lines = [json.loads(x) for x in (path / runs.METRICS).read_text().splitlines()][1:]   # no epoch 0
    for r in lines:
        for k in ("elr_mean", "effective_grad_norm_rms", "angular_update_rms", "lr_si"):
            r.pop(k)
    runs.write_metrics(path, lines)
    a = analyse(Run(path))
    assert a["angle_rms_over_predicted"] is None and a["initial"]["elr"] is None
    assert any("angular_update_rms" in n for n in a["notes"]) and any("epoch-0" in n for n in a["notes"])
    assert a["final"]["elr"] is not None                                  # from the end-of-epoch ELR


def cli(*args):
    return subprocess.run([sys.executable, "-m", "elr", "inspect", *map(str, args)], capture_output=True, text=True)


def test_inspect_cli_json_and_bad_input(tmp_path, capsys):
    path = simulate_run(tmp_path, "eq")
    out = cli(path, "--json", "--no-sensitivity")     # the real entry point, once
    assert out.returncode == 0, out.stderr
    obj = json.loads(out.stdout)
    for key in ("periodic", "episodes", "period_epochs", "stationary", "tau_epochs", "angle_rms_over_predicted"):
        assert key in obj
    assert obj["stationary"] is True and obj["periodic"] is False and isinstance(obj["episodes"], list)
    assert main(["inspect", str(path), "--no-sensitivity"]) == 0 and "theory (fixed point" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    runs.write_json(tmp_path / "empty" / runs.CONFIG, {"lr": 0.1})
    for bad, what in ((tmp_path / "nope", "not a run directory"), (tmp_path / "empty", "no trained epoch")):
        assert main(["inspect", str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and what in err and err.startswith("elr: error:")


def test_the_angle_law_is_judged_by_an_rms_not_a_median(tmp_path):
    """In a periodic run the per-epoch angle is heavy-tailed: a few epochs of large rotation (an episode)
    among many quiet ones. The mean-square law must be compared with the RMS over the window."""
    path = simulate_run(tmp_path, "tail")
    lines = [json.loads(x) for x in (path / runs.METRICS).read_text().splitlines()]
    for r in lines[1:]:
        r["angular_update_rms"] *= 3.0 if r["epoch"] % 10 == 0 else 0.5   # one loud epoch in ten
    runs.write_metrics(path, lines)
    a = analyse(Run(path), sensitivity=False)
    w = [r for r in lines[1:] if a["angle"]["window"][0] <= r["epoch"] <= a["angle"]["window"][1]]
    rms = math.sqrt(np.mean([r["angular_update_rms"] ** 2 for r in w]))
    pred = math.sqrt(2 * np.mean([r["lr_si"] for r in w]) * 5e-3)
    assert a["angle"]["rms"] == pytest.approx(rms, rel=1e-9)
    assert a["angle_rms_over_predicted"] == pytest.approx(rms / pred, rel=1e-9)
    assert a["angle_rms_over_predicted"] > 1.5 * np.median([r["angular_update_rms"] for r in w]) / pred


def test_the_fixed_point_uses_the_rms_of_g_over_the_window(tmp_path):
    """rho*^4 = eta E[G^2] / (2 lam) is a mean-square balance: a heavy-tailed G (quiet epochs, loud ones)
    enters through its RMS over the window, not its median."""
    path = simulate_run(tmp_path, "g")
    lines = [json.loads(x) for x in (path / runs.METRICS).read_text().splitlines()]
    for r in lines[1:]:
        r["effective_grad_norm_rms"] = 8.0 if r["epoch"] % 5 == 0 else 1.0
    runs.write_metrics(path, lines)
    a = analyse(Run(path), sensitivity=False)
    w = [r for r in lines[1:] if a["angle"]["window"][0] <= r["epoch"] <= a["angle"]["window"][1]]
    g2 = np.mean([r["effective_grad_norm_rms"] ** 2 for r in w])
    eta = np.mean([r["lr_si"] for r in w])
    assert a["predicted"]["rho"] == pytest.approx((eta * g2 / (2 * 5e-3)) ** 0.25, rel=1e-9)


def test_a_seed_rule_run_far_above_equilibrium_reports_its_remaining_linear_drift(tmp_path):
    # p = 1 far above rho*: the norm shrinks by lr0 * lam per step (docs/science.md), so from the final norm
    # the drift needs (rho_final - rho*) / (lr0 lam) steps
    a = analyse(Run(simulate_run(tmp_path, "drift", lr=3.0, wd=5e-4, G=2.0, rho0=60.0, epochs=40, power=1)),
                sensitivity=False)
    rho_star, rho_final = a["predicted"]["rho"], a["final"]["rho"]
    assert rho_final > 2 * rho_star and not a["stationary"]
    assert a["drift_epochs"] == pytest.approx((rho_final - rho_star) / (3.0 * 5e-4) / 8, rel=1e-9)
