"""The study's claims H1–H5, each evaluated on run directories into a Verdict.

Every criterion below is a module constant fixed before any study data was seen, with the reason
for its value. A claim judged by a hypothesis test reports its p-value; a claim of "no difference"
or "agrees with theory" is judged by an effect size whose 95% CI must lie inside an equivalence
margin (held), lie outside it (refuted), or straddle it (inconclusive), and reports p = None.
Runs too short for a criterion are set aside and counted in `reason`; too few left -> inconclusive.

    from elr.runs import load_runs
    from elr.claims import evaluate_all
    for v in evaluate_all(load_runs("runs/")): print(v.id, v.verdict, v.reason)
"""

from __future__ import annotations

import math

import numpy as np

from elr import detectors, stats
from elr.rule import predicted_angular_update, relaxation_steps
from elr.runs import Run
from elr.verdict import HELD, INCONCLUSIVE, REFUTED, Verdict

ALPHA = 0.05            # significance level of every test here
FINAL_FRACTION = 0.1    # "final" values: median over the last 10% of epochs (a sawtooth averages out)
N_CLASSES = 10          # CIFAR-10; a diverged run scores chance, 1 / N_CLASSES, unless config says otherwise

# Equilibration (H1, H5). The SI norm relaxes to equilibrium at rate 4ηλ per step (Wan et al. 2021),
# tau = 1 / (4 η λ) steps; after 3 tau the remaining gap is e^-3 = 5% of the initial one.
N_TAU = 3.0
# η must have stayed within ±25% of its final value for those 3 tau: a run whose schedule (cosine,
# step, the seed's rule before the norm settles) moved η more recently is still relaxing.
LR_SETTLED_TOL = 0.25

# H1: "one value" = at least 80% of the initial spread of log ELR has vanished: the ratio
# R = sd(log final ELR) / sd(log initial ELR) must have its 95% CI below 0.2 (refuted: CI above 0.2).
H1_MARGIN = 0.2
H1_MIN_RUNS = 4         # a standard deviation and a rank correlation need at least 4 runs to mean anything

# H2: the claim-level test is Bonferroni over every (ELR run, series) pair; each series is tested at
# ALPHA / m with 40 m - 1 surrogates of each kind, so the smallest attainable p, 1 / (40 m), is half the
# per-series threshold and the claim's Bonferroni p can reach 0.025.
H2_SERIES = ("train_loss", "si_norm", "elr")
H2_MIN_RUNS = 4         # to call the sawtooth absent, at least 4 ELR runs long enough to show it

# H3: one-sided Mann–Whitney needs >= 4 runs per arm to reach p < 0.05 (min p 1/C(8,4) = 0.014).
H3_MIN_PER_ARM = 4
# Not significant AND the 95% CI of the median difference excludes an ELR advantage above 1 accuracy
# point -> refuted; an advantage that small is inside epoch-to-epoch noise on CIFAR-10.
H3_MARGIN = 0.01

# H4: the seed reported drops "in several runs": several = at least 2.
H4_MIN_RUNS_WITH_EVENTS = 2
H4_MIN_RUNS = 4         # to call the drops absent, at least 4 runs long enough to show one
H4_MIN_EPOCHS = detectors.WITHIN + 3

# H5: measured / predicted angular update within a factor 1.5 (the √(2ηλ/(1+μ)) law is the leading
# order of the fixed point, Wan et al. 2021), and the slope of log ELR* on log(ηλ) within 0.5 ± 0.25
# (ELR* = √(2ηλ)/G: 0.5 if the effective gradient norm G does not vary systematically with ηλ).
H5_RATIO_MARGIN = 1.5
H5_SLOPE = 0.5
H5_SLOPE_MARGIN = 0.25
H5_MIN_RUNS = 4         # a slope with a t-based CI needs n - 2 >= 2 degrees of freedom
H5_MIN_LOG_SPREAD = math.log(4.0)  # ηλ must span a factor 4 for a slope to be estimable

SEED_FINDINGS = {
    "H1": "ELR values did not converge to one value; they barely moved from their initial values.",
    "H2": "Sawtooth (periodic) behaviour appeared, but only with a high initial LR and a low L2.",
    "H3": "Final test accuracy of the ELR runs was consistently above randomly chosen "
          "optimizer / scheduler / lr / L2 combinations.",
    "H4": "In several runs test accuracy dropped sharply and then recovered.",
    "H5": "Not tested by the seed (goes beyond it).",
}

CLAIMS = {
    "H1": "The ELR of the seed's rule converges to one value, whatever the initial lr0 and L2.",
    "H2": "ELR runs show periodic (sawtooth) spikes in train loss, SI norm or ELR.",
    "H3": "ELR runs reach a higher final test accuracy than randomly chosen optimizer / scheduler / "
          "lr / L2 configurations.",
    "H4": "In several runs test accuracy drops sharply and then recovers.",
    "H5": "Equilibrated SGD runs with weight decay follow spherical motion dynamics: angular update "
          "per step √(2ηλ/(1+μ)) and equilibrium ELR growing as √(ηλ).",
}


# ---------------------------------------------------------------------------------------------- per-run reads

def lr_series(run: Run) -> np.ndarray:
    """The applied lr per epoch; a per-group dict is reduced to the mean of its rates (the study's
    ELR runs use one global rate, so the dict only arises for optional per-layer rules)."""
    out = []
    for r in run.metrics:
        v = r.get("lr")
        if isinstance(v, dict):
            vals = [float(x) for x in v.values() if x is not None]
            v = float(np.mean(vals)) if vals else None
        out.append(np.nan if v is None else float(v))
    return np.array(out, dtype=np.float64)


def tail(x: np.ndarray, fraction: float = FINAL_FRACTION) -> np.ndarray:
    """The finite values among the last `fraction` of the series' finite prefix (at least one epoch)."""
    x = detectors.finite_prefix(x)
    return x[-max(1, math.ceil(fraction * x.size)):] if x.size else x


def final_value(x: np.ndarray) -> float:
    t = tail(x)
    return float(np.median(t)) if t.size else math.nan


def diverged(run: Run) -> bool:
    return bool((run.summary or {}).get("diverged", False))


def _cfg(run: Run, key: str, default=None):
    v = run.config.get(key, default)
    return default if v is None else v


def chance(run: Run) -> float:
    return 1.0 / float(_cfg(run, "num_classes", N_CLASSES))


def final_accuracy(run: Run) -> float:
    """Final test accuracy; a diverged run (or one without a final value) scores chance."""
    s = run.summary or {}
    if diverged(run):
        return chance(run)
    v = s.get("final_test_acc")
    if v is None:
        acc = detectors.finite_prefix(run.series("test_acc"))
        v = acc[-1] if acc.size else None
    return chance(run) if v is None or not math.isfinite(v) else float(v)


def best_accuracy(run: Run) -> float:
    """Best test accuracy over the run (before divergence); chance if none was recorded."""
    v = (run.summary or {}).get("best_test_acc")
    if v is None:
        acc = detectors.finite_prefix(run.series("test_acc"))
        v = float(np.max(acc)) if acc.size else None
    return chance(run) if v is None or not math.isfinite(v) else float(v)


def equilibration(run: Run) -> dict:
    """η (median lr of the final 10%), λ, tau in epochs, epochs η has been settled, and whether the run
    ran >= N_TAU tau at a settled η without diverging. tau = 1/(4ηλ) steps (Wan et al. 2021, relaxation
    of ‖w‖⁴ at rate 4ηλ); steps per epoch = step / epoch of the last record."""
    lr = detectors.finite_prefix(lr_series(run))
    eta = final_value(lr)
    wd = float(_cfg(run, "weight_decay", 0.0))
    last = run.metrics[-1] if run.metrics else {}
    spe = (last.get("step") or 0) / last["epoch"] if last.get("epoch") else math.nan
    tau_epochs = relaxation_steps(eta, wd) / spe if eta > 0 and wd > 0 and spe > 0 else math.inf
    off = np.flatnonzero(np.abs(lr / eta - 1.0) > LR_SETTLED_TOL) if lr.size and eta > 0 else np.array([])
    settled = int(lr.size - (off[-1] + 1)) if off.size else int(lr.size)
    ok = (not diverged(run)) and math.isfinite(tau_epochs) and settled >= N_TAU * tau_epochs
    return {"eta": eta, "wd": wd, "steps_per_epoch": spe, "tau_epochs": tau_epochs,
            "settled_epochs": settled, "equilibrated": bool(ok)}


def _epochs(run: Run) -> np.ndarray:
    return np.array([r.get("epoch", i + 1) for i, r in enumerate(run.metrics)], dtype=np.int64)


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def _num(x):
    """JSON-able float: non-finite -> None."""
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _ci(ci) -> tuple[float, float] | None:
    return None if ci is None or not all(math.isfinite(c) for c in ci) else (float(ci[0]), float(ci[1]))


def _ci_list(ci) -> list[float] | None:
    c = _ci(ci)
    return None if c is None else list(c)


def _verdict(cid, verdict, *, statistic=None, p=None, effect=None, ci=None, runs=(), reason="", details=None):
    return Verdict(id=cid, claim=CLAIMS[cid], verdict=verdict, statistic=_num(statistic), p=_num(p),
                   effect=_num(effect), ci=_ci(ci), runs=list(runs), reason=reason,
                   seed_finding=SEED_FINDINGS[cid], details=details or {})


def _count_verdict(k: int, *, needed: int, analysable: int, min_runs: int) -> str:
    """A claim of occurrence: held when k runs show it (k >= needed); refuted only when enough runs
    could have shown it and too few did; otherwise inconclusive."""
    if k >= needed:
        return HELD
    return REFUTED if analysable >= min_runs else INCONCLUSIVE


def _arm(runs, group):
    return [r for r in runs if r.group == group]


# ---------------------------------------------------------------------------------------------- H1

def evaluate_h1(runs: list[Run]) -> Verdict:
    """H1: equilibrated ELR runs' R = sd(log final ELR)/sd(log initial ELR) with a bootstrap CI against
    H1_MARGIN; Spearman of final ELR with lr0 reported."""
    elr_runs = _arm(runs, "elr")
    per_run, used, tau = {}, [], {}
    for r in elr_runs:
        e = equilibration(r)
        tau[r.name] = e["tau_epochs"]                 # inf without weight decay (None in JSON)
        elr = detectors.finite_prefix(r.series("elr"))
        init = float(elr[0]) if elr.size else math.nan
        fin = final_value(elr)
        per_run[r.name] = {"lr0": _num(_cfg(r, "lr")), "wd": _num(e["wd"]), "initial_elr": _num(init),
                           "final_elr": _num(fin), "equilibrated": e["equilibrated"],
                           "tau_epochs": _num(e["tau_epochs"]), "settled_epochs": e["settled_epochs"]}
        if e["equilibrated"] and init > 0 and fin > 0:
            used.append(r)
    details = {"runs": per_run, "margin": H1_MARGIN}
    taus = ", ".join(f"{n}: {_fmt(tau[n])} ({d['settled_epochs']} settled)" for n, d in per_run.items())
    if len(used) < H1_MIN_RUNS:
        return _verdict("H1", INCONCLUSIVE, runs=[r.name for r in used], details=details,
                        reason=f"{len(used)} of {len(elr_runs)} ELR runs equilibrated (ran >= {N_TAU:g} tau = "
                               f"1/(4ηλ) steps at a settled lr, not diverged); needs >= {H1_MIN_RUNS}. "
                               f"tau in epochs (epochs at settled lr): {taus or 'none'}")
    init = [per_run[r.name]["initial_elr"] for r in used]
    fin = [per_run[r.name]["final_elr"] for r in used]
    lr0 = [per_run[r.name]["lr0"] for r in used]
    ratio, ci = stats.dispersion_ratio(init, fin)
    rho, p_rho = stats.spearman(fin, [np.nan if v is None else v for v in lr0])
    details.update(ratio=_num(ratio), ratio_ci=_ci_list(ci), spearman_rho=_num(rho),
                   spearman_p=_num(p_rho))
    numbers = (f"R = sd(log final ELR)/sd(log initial ELR) = {_fmt(ratio)}, 95% CI [{_fmt(ci[0])}, "
               f"{_fmt(ci[1])}] over {len(used)} equilibrated ELR runs (of {len(elr_runs)}); margin "
               f"{H1_MARGIN:g}; Spearman(final ELR, lr0) rho = {_fmt(rho)}, p = {_fmt(p_rho)}")
    if not math.isfinite(ratio) or not all(map(math.isfinite, ci)):
        verdict, why = INCONCLUSIVE, "no spread of initial ELR to compare with"
    elif ci[1] < H1_MARGIN:
        verdict, why = HELD, "CI entirely below the margin: the initial spread has collapsed"
    elif ci[0] > H1_MARGIN:
        verdict, why = REFUTED, "CI entirely above the margin: the final ELRs keep much of their initial spread"
    else:
        verdict, why = INCONCLUSIVE, "CI straddles the margin"
    return _verdict("H1", verdict, statistic=rho, effect=ratio, ci=ci, runs=[r.name for r in used],
                    details=details, reason=f"{why}. {numbers}")


# ---------------------------------------------------------------------------------------------- H2

def _h2_series(run: Run, alpha: float, n_surrogates: int) -> dict[str, detectors.Periodicity]:
    return {k: detectors.periodicity(run.series(k), alpha=alpha, n_surrogates=n_surrogates, seed=i)
            for i, k in enumerate(H2_SERIES)}


def evaluate_h2(runs: list[Run]) -> Verdict:
    """H2: periodic spikes in any ELR run's train_loss / si_norm / elr, Bonferroni over (run, series);
    association with high lr0 and low L2 tested (one-sided Mann–Whitney) and reported."""
    elr_runs = _arm(runs, "elr")
    m = max(1, len(elr_runs) * len(H2_SERIES))
    alpha_series = ALPHA / m
    n_surr = 40 * m - 1
    per_run, analysable, periodic_runs, ps = {}, [], [], []
    for r in elr_runs:
        res = _h2_series(r, alpha_series, n_surr)
        ep = _epochs(r)
        per_run[r.name] = {
            "lr0": _num(_cfg(r, "lr")), "wd": _num(_cfg(r, "weight_decay")),
            "periodic": any(d.periodic for d in res.values()),
            "series": {k: {"periodic": d.periodic, "peaks": [int(ep[i]) for i in d.peaks],
                           "period": _num(d.period), "cv": _num(d.cv), "asymmetry": _num(d.asymmetry),
                           "surrogate_p": _num(d.surrogate_p), "reason": d.reason}
                       for k, d in res.items()}}
        if any(not d.reason.startswith("too short") for d in res.values()):
            analysable.append(r)
        if per_run[r.name]["periodic"]:
            periodic_runs.append(r)
        ps += [d.surrogate_p for d in res.values() if d.surrogate_p is not None]
    p = min(1.0, m * min(ps)) if ps else None   # Bonferroni over the m (run, series) tests
    association = _h2_association(analysable, {r.name for r in periodic_runs})
    details = {"runs": per_run, "association": association,
               "params": {"k": detectors.PROMINENCE_K, "min_cycles": detectors.MIN_CYCLES,
                          "max_cv": detectors.MAX_CV, "alpha_per_series": alpha_series,
                          "n_surrogates": n_surr}}
    k = len(periodic_runs)
    frac, ci = stats.proportion_ci(k, len(analysable))
    numbers = (f"{k} of {len(analysable)} analysable ELR runs periodic (of {len(elr_runs)}); criterion per "
               f"series: >= {detectors.MIN_CYCLES} cycles of spikes with prominence >= "
               f"{detectors.PROMINENCE_K:g} x robust noise, interval CV <= {detectors.MAX_CV:g}, surrogate "
               f"p < {ALPHA:g}/{m} (Bonferroni over {m} run-series); claim p = {_fmt(p)}. "
               f"{association['summary']}")
    verdict = _count_verdict(k, needed=1, analysable=len(analysable), min_runs=H2_MIN_RUNS)
    if verdict == INCONCLUSIVE:
        numbers = f"fewer than {H2_MIN_RUNS} ELR runs long enough to analyse. " + numbers
    return _verdict("H2", verdict, statistic=k, p=p, effect=frac, ci=ci, runs=[r.name for r in analysable],
                    details=details, reason=numbers)


def _h2_association(runs: list[Run], periodic: set[str]) -> dict:
    """Do periodic ELR runs have higher lr0 and lower L2 than the others? (the seed's observation)"""
    yes = [r for r in runs if r.name in periodic]
    no = [r for r in runs if r.name not in periodic]
    if not yes or not no:
        return {"summary": f"Association with lr0 / L2 not testable: {len(yes)} periodic and {len(no)} "
                           f"non-periodic analysable runs.", "n_periodic": len(yes), "n_other": len(no)}
    lr_y, lr_n = [float(_cfg(r, "lr", np.nan)) for r in yes], [float(_cfg(r, "lr", np.nan)) for r in no]
    wd_y, wd_n = ([float(_cfg(r, "weight_decay", np.nan)) for r in yes],
                  [float(_cfg(r, "weight_decay", np.nan)) for r in no])
    u_lr, p_lr = stats.mann_whitney_greater(lr_y, lr_n)    # periodic runs have the higher lr0
    u_wd, p_wd = stats.mann_whitney_greater(wd_n, wd_y)    # periodic runs have the lower L2
    return {"n_periodic": len(yes), "n_other": len(no),
            "lr0_U": _num(u_lr), "lr0_p": _num(p_lr), "wd_U": _num(u_wd), "wd_p": _num(p_wd),
            "median_lr0": [_num(np.median(lr_y)), _num(np.median(lr_n))],
            "median_wd": [_num(np.median(wd_y)), _num(np.median(wd_n))],
            "summary": f"Association (one-sided Mann–Whitney, periodic vs other): higher lr0 U = {_fmt(u_lr)}, "
                       f"p = {_fmt(p_lr)}; lower L2 U = {_fmt(u_wd)}, p = {_fmt(p_wd)}."}


# ---------------------------------------------------------------------------------------------- H3

def evaluate_h3(runs: list[Run]) -> Verdict:
    """H3: final test accuracy ELR > baseline, one-sided Mann–Whitney; median difference with a CI."""
    elr_runs, base = _arm(runs, "elr"), _arm(runs, "baseline")
    ea = {r.name: final_accuracy(r) for r in elr_runs}
    ba = {r.name: final_accuracy(r) for r in base}
    eb = {r.name: best_accuracy(r) for r in elr_runs}
    bb = {r.name: best_accuracy(r) for r in base}
    details = {"elr_acc": ea, "baseline_acc": ba, "elr_best": eb, "baseline_best": bb,
               "diverged": [r.name for r in elr_runs + base if diverged(r)]}
    used = [r.name for r in elr_runs + base]
    if min(len(ea), len(ba)) < H3_MIN_PER_ARM:
        return _verdict("H3", INCONCLUSIVE, runs=used, details=details,
                        reason=f"{len(ea)} ELR and {len(ba)} baseline runs; the one-sided Mann–Whitney test "
                               f"needs >= {H3_MIN_PER_ARM} per arm to reach p < {ALPHA:g}")
    u, p = stats.mann_whitney_greater(list(ea.values()), list(ba.values()))
    diff, ci = stats.median_difference(list(ea.values()), list(ba.values()))
    ub, pb = stats.mann_whitney_greater(list(eb.values()), list(bb.values()))
    db, cib = stats.median_difference(list(eb.values()), list(bb.values()))
    details["best"] = {"U": _num(ub), "p": _num(pb), "median_difference": _num(db), "ci": _ci_list(cib)}
    numbers = (f"final test accuracy ELR (n={len(ea)}, median {_fmt(np.median(list(ea.values())))}) vs baseline "
               f"(n={len(ba)}, median {_fmt(np.median(list(ba.values())))}), diverged runs at chance: "
               f"one-sided Mann–Whitney U = {_fmt(u)}, p = {_fmt(p)}; median difference {_fmt(diff)}, 95% CI "
               f"[{_fmt(ci[0])}, {_fmt(ci[1])}]. Best accuracy: U = {_fmt(ub)}, p = {_fmt(pb)}, median "
               f"difference {_fmt(db)} [{_fmt(cib[0])}, {_fmt(cib[1])}]")
    if p < ALPHA:
        verdict, why = HELD, f"p < {ALPHA:g}"
    elif ci[1] <= H3_MARGIN:
        verdict, why = REFUTED, f"p >= {ALPHA:g} and the CI excludes an ELR advantage above {H3_MARGIN:g}"
    else:
        verdict, why = INCONCLUSIVE, (f"p >= {ALPHA:g} but the CI still allows an ELR advantage above "
                                      f"{H3_MARGIN:g}")
    return _verdict("H3", verdict, statistic=u, p=p, effect=diff, ci=ci, runs=used, details=details,
                    reason=f"{why}. {numbers}")


# ---------------------------------------------------------------------------------------------- H4

def evaluate_h4(runs: list[Run]) -> Verdict:
    """H4: drop-and-recovery events in test accuracy, counted per run (all runs); coincidence with the
    run's prominent spikes in train_loss / si_norm / elr reported with a permutation p."""
    per_run, analysable, events_by_run, spikes_by_run, lengths = {}, [], {}, {}, {}
    for r in runs:
        acc = detectors.finite_prefix(r.series("test_acc"))
        ep = _epochs(r)
        evs = detectors.drop_events(acc)
        per_run[r.name] = {"events": [[int(ep[e.start]), int(ep[e.bottom]), int(ep[e.recovered]), e.depth]
                                      for e in evs]}
        if acc.size >= H4_MIN_EPOCHS:
            analysable.append(r.name)
        if evs:
            events_by_run[r.name] = evs
            spikes_by_run[r.name] = np.unique(np.concatenate(
                [detectors.spikes(r.series(k)) for k in H2_SERIES]))
            lengths[r.name] = acc.size
            per_run[r.name]["spikes"] = [int(ep[i]) for i in spikes_by_run[r.name]]
    co = detectors.coincidence(events_by_run, spikes_by_run, lengths)
    details = {"runs": per_run,
               "params": {"drop": detectors.DROP, "within": detectors.WITHIN,
                          "recover_within": detectors.RECOVER_WITHIN, "tolerance": detectors.TOLERANCE,
                          "noise_k": detectors.NOISE_K, "coincidence_window": detectors.COINCIDENCE_WINDOW},
               "coincide_fraction": co.fraction, "coincide_p": co.p,
               "n_events": co.n_events, "n_coincident": co.n_coincident}
    k = len(events_by_run)
    frac, ci = stats.proportion_ci(k, len(analysable))
    co_text = (f"{co.n_coincident} of {co.n_events} events within {detectors.COINCIDENCE_WINDOW} epochs of a "
               f"spike (permutation p = {_fmt(co.p)})" if co.n_events else "no events to match with spikes")
    numbers = (f"{k} of {len(analysable)} analysable runs have a drop of >= {detectors.DROP:g} (and >= "
               f"{detectors.NOISE_K:g} x noise) within {detectors.WITHIN} epochs regained to within "
               f"{detectors.TOLERANCE:g} within {detectors.RECOVER_WITHIN} epochs; {co.n_events} events in all; "
               f"{co_text}. Criterion: held if >= {H4_MIN_RUNS_WITH_EVENTS} runs have one")
    verdict = _count_verdict(k, needed=H4_MIN_RUNS_WITH_EVENTS, analysable=len(analysable), min_runs=H4_MIN_RUNS)
    if verdict == INCONCLUSIVE:
        numbers = f"fewer than {H4_MIN_RUNS} runs with >= {H4_MIN_EPOCHS} epochs. " + numbers
    return _verdict("H4", verdict, statistic=k, effect=frac, ci=ci, runs=analysable, details=details,
                    reason=numbers)


# ---------------------------------------------------------------------------------------------- H5

def evaluate_h5(runs: list[Run]) -> Verdict:
    """H5: on equilibrated SGD runs with weight decay (both arms): geometric-mean measured/predicted
    angular update with a bootstrap CI inside [1/1.5, 1.5], and the slope of log ELR* on log(ηλ) with
    a t-based CI inside 0.5 ± 0.25."""
    points, skipped = [], 0
    for r in runs:
        opt = str(_cfg(r, "optimizer", "")).lower()
        wd = float(_cfg(r, "weight_decay", 0.0))
        if opt != "sgd" or wd <= 0 or _cfg(r, "schedule") == "sphere":
            continue
        e = equilibration(r)
        measured = final_value(r.series("angular_update_per_step"))
        elr_star = final_value(r.series("elr"))
        if not (e["equilibrated"] and measured > 0 and elr_star > 0):
            skipped += 1
            continue
        mu = float(_cfg(r, "momentum", 0.0))
        points.append({"run": r.name, "eta": e["eta"], "wd": wd, "momentum": mu, "eta_lambda": e["eta"] * wd,
                       "measured_angle": measured, "predicted_angle": predicted_angular_update(e["eta"], wd, mu),
                       "elr_star": elr_star})
    details = {"points": points, "slope": None, "slope_ci": None,
               "ratio_margin": H5_RATIO_MARGIN, "slope_band": [H5_SLOPE - H5_SLOPE_MARGIN,
                                                               H5_SLOPE + H5_SLOPE_MARGIN]}
    names = [p["run"] for p in points]
    if len(points) < H5_MIN_RUNS:
        return _verdict("H5", INCONCLUSIVE, runs=names, details=details,
                        reason=f"{len(points)} equilibrated SGD runs with weight decay ({skipped} more not "
                               f"equilibrated: < {N_TAU:g} tau = 1/(4ηλ) steps at a settled lr, or diverged); "
                               f"needs >= {H5_MIN_RUNS}")
    ratios = [p["measured_angle"] / p["predicted_angle"] for p in points]
    ratio, rci = stats.bootstrap_mean(ratios, geometric=True)
    lo_r, hi_r = 1.0 / H5_RATIO_MARGIN, H5_RATIO_MARGIN
    ratio_in = lo_r <= rci[0] and rci[1] <= hi_r
    ratio_out = rci[1] < lo_r or rci[0] > hi_r
    x = np.array([p["eta_lambda"] for p in points])
    fit = None
    if np.ptp(np.log(x)) >= H5_MIN_LOG_SPREAD:
        fit = stats.loglog_slope(x, [p["elr_star"] for p in points])
    lo_s, hi_s = H5_SLOPE - H5_SLOPE_MARGIN, H5_SLOPE + H5_SLOPE_MARGIN
    if fit is not None and math.isfinite(fit.slope):
        details["slope"], details["slope_ci"] = fit.slope, list(fit.ci)
        slope_in = lo_s <= fit.ci[0] and fit.ci[1] <= hi_s
        slope_out = fit.ci[1] < lo_s or fit.ci[0] > hi_s
        slope_text = (f"slope of log ELR* on log(ηλ) = {_fmt(fit.slope)}, 95% CI [{_fmt(fit.ci[0])}, "
                      f"{_fmt(fit.ci[1])}] (theory {H5_SLOPE:g}, band [{lo_s:g}, {hi_s:g}])")
    else:
        slope_in = slope_out = False
        slope_text = f"slope not estimable: ηλ spans less than a factor {math.exp(H5_MIN_LOG_SPREAD):.0f}"
    details["ratio"], details["ratio_ci"] = _num(ratio), _ci_list(rci)
    numbers = (f"measured/predicted angular update per step (geometric mean over {len(points)} equilibrated "
               f"SGD runs) = {_fmt(ratio)}, 95% CI [{_fmt(rci[0])}, {_fmt(rci[1])}] (band [{lo_r:.3g}, "
               f"{hi_r:g}]); {slope_text}")
    if ratio_out or slope_out:
        verdict, why = REFUTED, "a CI lies entirely outside its band"
    elif ratio_in and slope_in:
        verdict, why = HELD, "both CIs inside their bands"
    else:
        verdict, why = INCONCLUSIVE, "a CI straddles its band or the slope is not estimable"
    return _verdict("H5", verdict, statistic=fit.slope if fit is not None else None, effect=ratio, ci=rci,
                    runs=names, details=details, reason=f"{why}. {numbers}")


# ---------------------------------------------------------------------------------------------- all

def evaluate_all(runs: list[Run]) -> list[Verdict]:
    """H1..H5, with p_corrected = {"holm", "bh"} across the claims that report a p."""
    verdicts = [evaluate_h1(runs), evaluate_h2(runs), evaluate_h3(runs), evaluate_h4(runs), evaluate_h5(runs)]
    with_p = [v for v in verdicts if v.p is not None]
    if with_p:
        ps = [v.p for v in with_p]
        for v, h, b in zip(with_p, stats.holm(ps), stats.benjamini_hochberg(ps)):
            v.p_corrected = {"holm": float(h), "bh": float(b)}
            # several claims are tested at once: one held on its own p must also survive Holm's correction
            if v.verdict == HELD and v.p < ALPHA <= h:
                v.verdict = INCONCLUSIVE
                v.reason = f"p = {_fmt(v.p)} < {ALPHA} alone, but Holm-corrected p = {_fmt(h)} >= {ALPHA} across claims. " + v.reason
    return verdicts
