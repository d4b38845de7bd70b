"""The study's claims H1–H6, each evaluated on run directories into a Verdict.

Every criterion below is a module constant fixed before the study's data was seen, with the reason for
its value. Each claim can be held, refuted, or honestly inconclusive; the reason names the null, the
statistic and the numbers. The per-run numbers come from `elr.analysis.inspect.analyse` (theory beside
measurement, destabilisation episodes, drop events), so a single run and the study are judged alike.

Multiplicity (one policy, stated in the report as MULTIPLICITY): the claims decided by a hypothesis test
(H2, H3, H6) form one family, Holm-corrected at ALPHA across claims; within H2 the per-run surrogate tests
are Holm-corrected across the ELR runs. Decisions by an interval (H1, H5, and the "refuted" branches of
H3 and H6) use 95% intervals per claim. H4 is a count of events with a measured sensitivity, not a test.

    from elr.runs import load_runs
    from elr.analysis.claims import evaluate_all
    for v in evaluate_all(load_runs("runs/cpu")): print(v.id, v.verdict, v.reason)
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy import stats as st

from elr.analysis import detectors, stats, theory
from elr.analysis.inspect import analyse, final_value, predicted_elr
from elr.runs import Run, json_float
from elr.analysis.verdict import HELD, INCONCLUSIVE, REFUTED, Verdict

ALPHA = 0.05            # significance level of every test here
MULTIPLICITY = ("Holm across the claims decided by a hypothesis test (H2, H3, H6) at α = 0.05, and within H2 "
                "Holm across the ELR runs' surrogate tests; decisions by an interval (H1, H5, the 'refuted' "
                "branches of H3 and H6) use 95% intervals per claim, not adjusted; H4 counts events.")
N_CLASSES = 10          # CIFAR-10's: the class count of a run whose data can no longer say (num_classes below)
MIN_SENSITIVITY = 0.8   # a detector that found nothing says "absent" only where it finds >= 80% of injected effects

# H1 (the seed's hypothesis): "one ELR whatever lr0 and λ" = the slopes of log final ELR on log lr0 and on
# log λ, over runs measured stationary, both lie within ±0.1 (a tenfold change of lr0 or λ moves the ELR by
# at most 10^0.1 = 1.26x, inside the ±20-30% a final ELR wanders in a sawtooth). Theory (docs/science.md, the
# seed rule's fixed point) predicts +0.4 and +0.6.
H1_MARGIN = 0.1
H1_THEORY_SLOPES = {"lr0": 0.4, "weight_decay": 0.6}
# The seed's observation "the ELR barely moved" = its final ELR within a factor 2 of its initial one; the
# theory explains a run when it predicts the final ELR within a factor 1.5 (inspect.predicted_elr).
H1_BARELY = math.log(2.0)
H1_THEORY_TOL = math.log(1.5)

# H2: periodic when the episode detector says so and the run's surrogate p survives Holm across the ELR
# runs; "refuted" needs at least 4 analysable ELR runs each with sensitivity >= MIN_SENSITIVITY.
H2_MIN_RUNS = 4

# H3: one-sided Mann–Whitney needs >= 4 runs per arm to reach p < 0.05 (min p 1/C(8,4) = 0.014). Refuted
# when the Hodges–Lehmann CI excludes an ELR advantage as large as one binomial sd of a test accuracy
# (sqrt(p(1-p)/n_test): smaller advantages are inside the test split's own sampling noise). The power is
# reported for a true advantage of H3_POWER_SHIFT.
H3_MIN_PER_ARM = 4
H3_POWER_SHIFT = 0.05

# H4: the seed reported drops "in several runs": several = at least 2; "refuted" needs at least 4 runs
# where the drop detector finds >= MIN_SENSITIVITY of injected drops.
H4_MIN_RUNS_WITH_EVENTS = 2
H4_MIN_RUNS = 4
H4_MIN_EPOCHS = detectors.WITHIN + 3

# H5: per stationary SGD run, RMS angle over whole cycles / sqrt(2ηλ/(1+μ)); the geometric mean over runs
# with a t interval on the logs must lie inside [1/1.25, 1.25] (the law is exact to leading order in ηλ,
# so 25% leaves room for the finite-ηλ and finite-window terms and nothing else).
H5_RATIO_MARGIN = 1.25
H5_MIN_RUNS = 3         # a t interval needs n - 1 >= 2 degrees of freedom to be usable

# H6: per λ, the spread (sd over lr0) of final accuracy in the ELR arm vs the plain-SGD arm, cells paired;
# the exact exchange test swaps the arms within cells. Refuted when the 95% interval of the spread
# difference (test-split noise resampled) lies at or below 0: the rule does not reduce the sensitivity.
H6_MIN_CELLS = 3        # per λ: an sd over lr0 needs >= 3 cells to be worth comparing
H6_N_BOOT = 4000
H6_POWER_SIMS = 400     # Monte-Carlo resolution of the reported power: sd <= 0.025

SEED_FINDINGS = {
    "H1": "ELR values did not converge to one value; they barely moved from their initial values.",
    "H2": "Sawtooth (periodic) behaviour appeared, but only with a high initial LR and a low L2.",
    "H3": "Final test accuracy of the ELR runs was consistently above randomly chosen "
          "optimizer / scheduler / lr / L2 combinations.",
    "H4": "In several runs test accuracy dropped sharply and then recovered.",
    "H5": "Not tested by the seed (goes beyond it).",
    "H6": "Not tested by the seed; it is the seed's question (can the ELR rule replace lr cross-validation?).",
}

CLAIMS = {
    "H1": "The ELR of the seed's rule converges to one value, whatever the initial lr0 and L2.",
    "H2": "ELR runs show periodic destabilisation episodes (sawtooth) once their train loss has converged.",
    "H3": "ELR runs reach a higher final test accuracy than randomly chosen optimizer / scheduler / "
          "lr / L2 configurations.",
    "H4": "In several runs test accuracy drops sharply and then recovers.",
    "H5": "Stationary SGD runs with weight decay follow spherical motion dynamics: RMS angular update per "
          "step √(2ηλ/(1+μ)).",
    "H6": "The ELR rule makes final accuracy less sensitive to the initial learning rate than plain SGD with "
          "weight decay at a constant lr.",
}

# What each verdict's `statistic` and `effect` are, and the effect's unit, for a reader of the verdict table:
# "count" runs, "share" a fraction of runs, "points" accuracy points (100 x a fraction of the test split).
MEASURES = {
    "H1": {"statistic": ("OLS slope of log ELR", "slope"), "effect": ("slope on log lr0 (on log λ if lr0 did not vary)", "slope")},
    "H2": {"statistic": ("periodic ELR runs", "count"), "effect": ("share of analysable ELR runs periodic", "share")},
    "H3": {"statistic": ("Mann–Whitney U", "U"), "effect": ("Hodges–Lehmann shift, ELR − baseline", "points")},
    "H4": {"statistic": ("runs with a drop", "count"), "effect": ("share of analysable runs with a drop", "share")},
    "H5": {"statistic": None, "effect": ("measured / predicted RMS angle, geometric mean", "ratio")},
    "H6": {"statistic": ("spread difference", "points"), "effect": ("sd over lr0, plain SGD − ELR", "points")},
}

# ---------------------------------------------------------------------------------------------- per-run reads

def diverged(run: Run) -> bool:
    return bool((run.summary or {}).get("diverged", False))


def num_classes(run: Run) -> int:
    """The number of classes of the run's data: `num_classes` where config.json records it (top level or in
    `env`), else counted as the loader counts it (elr.training.data: the largest training label + 1) from the
    data the config names: cifar10 has 10, synthetic elr.training.data.SYNTHETIC_CLASSES, npz:PATH its y_train.
    An npz no longer at PATH (a relative PATH is read from the current directory) leaves N_CLASSES."""
    recorded = run.setting("num_classes") or (run.setting("env") or {}).get("num_classes")
    if recorded:
        return int(recorded)
    spec = str(run.setting("data") or "")
    if spec == "synthetic":
        # imported here: elr.training.data imports torch, which the claims need nowhere else
        from elr.training.data import SYNTHETIC_CLASSES

        return SYNTHETIC_CLASSES
    if spec.startswith("npz:"):
        try:
            with np.load(spec[len("npz:"):], allow_pickle=False) as archive:   # reads y_train alone, not the images
                return int(np.max(archive["y_train"])) + 1
        except Exception:   # gone, or unreadable in any of numpy's ways (zip, pickle, a lone .npy): unknown
            pass
    return N_CLASSES


def chance(run: Run) -> float:
    """The accuracy a diverged run scores: 1 / the number of classes of its data."""
    return 1.0 / num_classes(run)


def final_accuracy(run: Run) -> float:
    """Final test accuracy: the median over the last 10% of epochs; a diverged run (or one without any
    accuracy) scores chance."""
    if diverged(run):
        return chance(run)
    v = final_value(run.series("test_acc"))
    return v if math.isfinite(v) else chance(run)


def test_split_size(runs: list[Run]) -> int | None:
    """Images in the test split: config test_subset where set, else the accuracy's resolution (every
    accuracy is k / n_test, so the smallest step between logged values is 1 / n_test)."""
    for r in runs:
        if r.setting("test_subset"):
            return int(r.setting("test_subset"))
    vals = np.unique(np.concatenate([detectors.finite_prefix(r.series("test_acc")) for r in runs] or [[]]))
    steps = np.diff(vals)
    steps = steps[steps > 1e-9]
    return int(round(1.0 / steps.min())) if steps.size else None


def _fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.3g}"


def _pts(x) -> str:
    """An accuracy difference or sd (a fraction of the test split) in accuracy points, as the report reads it."""
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.3g} pts"


def _pc(x) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.1f}%"


def _ci(ci) -> tuple[float, float] | None:
    return None if ci is None or not all(c is not None and math.isfinite(c) for c in ci) else (float(ci[0]), float(ci[1]))


def _verdict(cid, verdict, *, statistic=None, p=None, effect=None, ci=None, runs=(), reason="", details=None):
    return Verdict(id=cid, claim=CLAIMS[cid], verdict=verdict, statistic=json_float(statistic), p=json_float(p),
                   effect=json_float(effect), ci=_ci(ci), runs=list(runs), reason=reason,
                   seed_finding=SEED_FINDINGS[cid], details=details or {})


def _arm(runs, group):
    return [r for r in runs if r.group == group]


def _control(runs, name):
    return next((r for r in runs if r.group == "control" and (r.config.get("labels") or {}).get("control") == name), None)


def _interval_verdict(ci, lo, hi) -> str:
    """An equivalence decision: the CI inside [lo, hi] -> held, entirely outside -> refuted, else inconclusive."""
    if ci is None:
        return INCONCLUSIVE
    if lo <= ci[0] and ci[1] <= hi:
        return HELD
    return REFUTED if ci[1] < lo or ci[0] > hi else INCONCLUSIVE


def analyses(runs: list[Run]) -> dict[str, dict]:
    """inspect.analyse for every run; the episode sensitivity (injections, the costly part) only where a
    claim needs it: the ELR runs (H2) and the controls (shown in the report)."""
    return {r.name: analyse(r, sensitivity=r.group in ("elr", "control")) for r in runs}


# ---------------------------------------------------------------------------------------------- H1

def evaluate_h1(runs: list[Run], an: dict) -> Verdict:
    """H1, the seed's hypothesis, on stationary ELR runs: OLS of log final ELR on log lr0 and log λ, each
    slope's 95% CI against ±H1_MARGIN (theory: +0.4, +0.6). The seed's observation ("barely moved") on the
    runs that are not stationary: how far the ELR moved against the theory's prediction for that run."""
    elr_runs = _arm(runs, "elr")
    rows = []
    for r in elr_runs:
        a = an[r.name]
        init, fin = a["initial"]["elr"], a["final"]["elr"]
        pred_series = predicted_elr(r)
        pred_final = final_value(pred_series) if pred_series is not None else math.nan
        rows.append({"run": r.name, "lr0": float(r.setting("lr")), "weight_decay": float(r.setting("weight_decay")),
                     "stationary": a["stationary"], "drift_ratio": (a["stationarity"] or {}).get("drift_ratio"),
                     "elr_initial": init, "elr_final": fin, "elr_predicted_final": json_float(pred_final),
                     "elr_fixed_point": (a["predicted"] or {}).get("elr"), "n_tau": a["n_tau"],
                     "moved": json_float(math.log(fin / init)) if init and fin else None,
                     "predicted_move": json_float(math.log(pred_final / init)) if init and math.isfinite(pred_final) else None})
    stationary = [x for x in rows if x["stationary"] and x["elr_final"]]
    moving = [x for x in rows if not x["stationary"] and x["moved"] is not None]
    barely = [x for x in moving if abs(x["moved"]) <= H1_BARELY]
    explained = [x for x in moving if x["predicted_move"] is not None and abs(x["moved"] - x["predicted_move"]) <= H1_THEORY_TOL]
    unknown = sum(1 for x in rows if not x["stationary"] and x["moved"] is None)
    observation = (f"The seed's observation: {len(barely)} of {len(moving)} non-stationary ELR runs moved their ELR by "
                   f"less than 2x over the run; the theory (norm recursion with the run's measured G) predicted the "
                   f"final ELR within 1.5x in {len(explained)} of {len(moving)}"
                   + (f"; {unknown} more have no epoch-0 record, so how far they moved is unknown." if unknown else "."))
    details = {"runs": rows, "margin": H1_MARGIN, "theory_slopes": H1_THEORY_SLOPES, "fit": None,
               "observation": {"n_moving": len(moving), "n_barely": len(barely), "n_explained": len(explained)}}
    predictors = [k for k in ("lr0", "weight_decay") if len({x[k] for x in stationary}) >= 2]
    used = [x["run"] for x in stationary]
    if not predictors or len(stationary) < len(predictors) + 3:
        return _verdict("H1", INCONCLUSIVE, runs=used, details=details, reason=(
            f"{len(stationary)} of {len(elr_runs)} ELR runs measured stationary (norm balance closing within "
            f"{theory.STATIONARY_TOL:.0%} over whole cycles); the regression on log lr0 and log λ needs >= 5 such runs "
            f"spanning >= 2 values of each (>= 4 when only one of them varies). {observation}"))
    y = np.log([x["elr_final"] for x in stationary])
    X = np.log([[x[k] for k in predictors] for x in stationary])
    fit = stats.ols(y, X)
    details["fit"] = {k: {"slope": json_float(c), "ci": list(ci) if _ci(ci) else None, "theory": H1_THEORY_SLOPES[k]}
                      for k, c, ci in zip(predictors, fit.coef, fit.ci)}
    parts = [_interval_verdict(_ci(ci), -H1_MARGIN, H1_MARGIN) for ci in fit.ci]
    if REFUTED in parts:
        verdict = REFUTED
    elif all(v == HELD for v in parts) and len(predictors) == 2:
        verdict = HELD
    else:
        verdict = INCONCLUSIVE
    slopes = "; ".join(f"slope on log {k} {_fmt(c)} [95% CI {_fmt(ci[0])}, {_fmt(ci[1])}] (theory {H1_THEORY_SLOPES[k]:g})"
                       for k, c, ci in zip(predictors, fit.coef, fit.ci))
    why = {HELD: "both slopes' CIs inside", REFUTED: "a slope's CI lies entirely outside",
           INCONCLUSIVE: "a CI straddles the band, or only one of lr0 / λ varies among the stationary runs"}[verdict]
    k = predictors.index("lr0") if "lr0" in predictors else 0
    return _verdict("H1", verdict, statistic=fit.coef[k], effect=fit.coef[k], ci=fit.ci[k], runs=used, details=details,
                    reason=f"{why} ±{H1_MARGIN:g}. OLS of log final ELR over {len(stationary)} stationary ELR runs: "
                           f"{slopes}. {observation}")


# ---------------------------------------------------------------------------------------------- H2

def control_check(runs: list[Run], an: dict, *, positive, negative) -> tuple[bool, str, dict]:
    """Run a detector (positive(analysis) -> bool found) on the study's controls: the periodic control must
    show the effect, the smooth one must not. (passed, reason, per-control results)."""
    results, problems = {}, []
    for name, want in (("periodic", True), ("smooth", False)):
        r = _control(runs, name)
        if r is None:
            problems.append(f"no {name} control in this study")
            continue
        found = bool((positive if want else negative)(an[r.name]))
        results[name] = {"run": r.name, "found": found, "expected": want}
        if found != want:
            problems.append(f"the {name} control {'shows nothing' if want else 'shows the effect'}")
    return not problems, "; ".join(problems), results


def evaluate_h2(runs: list[Run], an: dict) -> Verdict:
    """H2: destabilisation episodes with local regularity, one surrogate test per ELR run, Holm across the
    ELR runs; refuted only where the detector's measured sensitivity says it would have seen them; the
    detector must pass its controls; association with high lr0 / low λ tested when both groups exist."""
    elr_runs = _arm(runs, "elr")
    per_run = {}
    ps = {}
    for r in elr_runs:
        a = an[r.name]
        d = a["episode_detail"] or {}
        per_run[r.name] = {"lr0": json_float(r.setting("lr")), "wd": json_float(r.setting("weight_decay")), "episodes": a["episodes"],
                           "period": a["period_epochs"], "irregularity": d.get("irregularity"),
                           "surrogate_p": d.get("surrogate_p"), "analysable": bool(d.get("analysable")),
                           "sensitivity": d.get("sensitivity"), "converged_epoch": d.get("converged_epoch"),
                           "reason": d.get("reason", "")}
        if d.get("analysable"):  # one test per analysable run; failing the criteria before surrogates is p = 1
            ps[r.name] = 1.0 if d.get("surrogate_p") is None else d["surrogate_p"]
    adjusted = dict(zip(ps, stats.holm(list(ps.values())))) if ps else {}
    for name, row in per_run.items():
        row["p_holm"] = json_float(adjusted.get(name))
        row["periodic"] = bool(an[name]["periodic"] and adjusted.get(name, 1.0) < ALPHA)
    periodic = [n for n, x in per_run.items() if x["periodic"]]
    analysable = [n for n, x in per_run.items() if x["analysable"]]
    sensitive = [n for n, x in per_run.items() if x["analysable"] and (x["sensitivity"] or 0) >= MIN_SENSITIVITY]
    ok, problem, controls = control_check(runs, an, positive=lambda a: a["periodic"], negative=lambda a: a["periodic"])
    for c in controls.values():
        ca = an[c["run"]]
        d = ca["episode_detail"] or {}
        c.update(episodes=ca["episodes"], period=ca["period_epochs"], sensitivity=d.get("sensitivity"),
                 irregularity=d.get("irregularity"), surrogate_p=d.get("surrogate_p"),
                 analysable=d.get("analysable"), reason=d.get("reason", ""))
    p = min(adjusted.values()) if adjusted else None
    association = _h2_association([r for r in elr_runs if r.name in analysable], set(periodic))
    details = {"runs": per_run, "controls": controls, "association": association,
               "params": {"min_episodes": detectors.MIN_EPISODES, "max_irregularity": detectors.MAX_IRREGULARITY,
                          "alpha": ALPHA, "min_sensitivity": MIN_SENSITIVITY}}
    k = len(periodic)
    frac, ci = stats.proportion_ci(k, len(analysable))
    numbers = (f"{k} of {len(analysable)} analysable ELR runs periodic (of {len(elr_runs)}; analysable = train loss "
               f"converged): >= {detectors.MIN_EPISODES} episodes (loss spike with a norm jump and an ELR drop), "
               f"local irregularity <= {detectors.MAX_IRREGULARITY:g}, surrogate p (the same number of episodes at random epochs) < {ALPHA:g} "
               f"after Holm across runs; claim p = {_fmt(p)}. Sensitivity to injected episodes >= "
               f"{MIN_SENSITIVITY:g} in {len(sensitive)} of {len(analysable)}. {association['summary']}")
    if not ok:
        verdict, why = INCONCLUSIVE, f"the detector failed its controls ({problem})"
    elif k >= 1:
        verdict, why = HELD, "periodic episodes found"
    elif len(sensitive) >= H2_MIN_RUNS:
        verdict, why = REFUTED, f"none found in {len(sensitive)} runs where the detector finds >= {MIN_SENSITIVITY:.0%} of injected episodes"
    else:
        verdict, why = INCONCLUSIVE, (f"not seen, but only {len(sensitive)} runs where the detector could see them "
                                      f"(sensitivity >= {MIN_SENSITIVITY:g}); {H2_MIN_RUNS} needed to call them absent")
    return _verdict("H2", verdict, statistic=k, p=p, effect=frac, ci=ci, runs=analysable, details=details,
                    reason=f"{why}. {numbers}")


def _h2_association(runs: list[Run], periodic: set[str]) -> dict:
    """Do periodic ELR runs have higher lr0 and lower L2 than the others? (the seed's observation)"""
    yes = [r for r in runs if r.name in periodic]
    no = [r for r in runs if r.name not in periodic]
    if not yes or not no:
        return {"summary": f"Association with lr0 / L2 not testable: {len(yes)} periodic and {len(no)} "
                           f"non-periodic analysable runs.", "n_periodic": len(yes), "n_other": len(no)}
    lr_y, lr_n = [float(r.setting("lr")) for r in yes], [float(r.setting("lr")) for r in no]
    wd_y, wd_n = [float(r.setting("weight_decay")) for r in yes], [float(r.setting("weight_decay")) for r in no]
    u_lr, p_lr = stats.mann_whitney_greater(lr_y, lr_n)    # periodic runs have the higher lr0
    u_wd, p_wd = stats.mann_whitney_greater(wd_n, wd_y)    # periodic runs have the lower L2
    return {"n_periodic": len(yes), "n_other": len(no), "lr0_U": json_float(u_lr), "lr0_p": json_float(p_lr),
            "wd_U": json_float(u_wd), "wd_p": json_float(p_wd),
            "summary": f"Association (one-sided Mann–Whitney, periodic vs other, descriptive): higher lr0 U = "
                       f"{_fmt(u_lr)}, p = {_fmt(p_lr)}; lower L2 U = {_fmt(u_wd)}, p = {_fmt(p_wd)}."}


# ---------------------------------------------------------------------------------------------- H3

def evaluate_h3(runs: list[Run], an: dict) -> Verdict:
    """H3: final accuracy (median over the final 10% of epochs) ELR > baseline: one-sided Mann–Whitney;
    Hodges–Lehmann shift with its exact CI against a margin of one binomial sd of a test accuracy."""
    elr_runs, base = _arm(runs, "elr"), _arm(runs, "baseline")
    ea = {r.name: final_accuracy(r) for r in elr_runs}
    ba = {r.name: final_accuracy(r) for r in base}
    n_test = test_split_size(elr_runs + base)
    pooled = float(np.median(list(ea.values()) + list(ba.values()))) if ea or ba else math.nan
    margin = stats.binomial_sd(pooled, n_test) if n_test else math.nan
    details = {"elr_acc": ea, "baseline_acc": ba, "n_test": n_test, "margin": json_float(margin),
               "diverged": [r.name for r in elr_runs + base if diverged(r)]}
    used = [r.name for r in elr_runs + base]
    if min(len(ea), len(ba)) < H3_MIN_PER_ARM or not math.isfinite(margin):
        return _verdict("H3", INCONCLUSIVE, runs=used, details=details,
                        reason=f"{len(ea)} ELR and {len(ba)} baseline runs (test split {n_test} images); the one-sided "
                               f"Mann–Whitney test needs >= {H3_MIN_PER_ARM} per arm to reach p < {ALPHA:g}")
    a, b = list(ea.values()), list(ba.values())
    u, p = stats.mann_whitney_greater(a, b)
    hl, ci, coverage = stats.hodges_lehmann(a, b)
    sd = float(np.sqrt((np.var(a, ddof=1) * (len(a) - 1) + np.var(b, ddof=1) * (len(b) - 1)) / (len(a) + len(b) - 2)))
    power = stats.power_shift(len(a), len(b), shift=H3_POWER_SHIFT, sd=sd, margin=margin, alpha=ALPHA)
    details.update(hodges_lehmann=json_float(hl), ci=list(ci), coverage=json_float(coverage), pooled_sd=json_float(sd), power=power)
    numbers = (f"final test accuracy (median of the last 10% of epochs; diverged runs at chance) ELR n={len(a)}, median "
               f"{_pc(np.median(a))} vs baseline n={len(b)}, median {_pc(np.median(b))}: one-sided Mann–Whitney "
               f"U = {_fmt(u)}, p = {_fmt(p)}; Hodges–Lehmann shift {_pts(hl)}, exact {coverage:.1%} CI [{_pts(ci[0])}, "
               f"{_pts(ci[1])}]; margin = binomial sd of a {n_test}-image accuracy = {_pts(margin)}. Power at this n "
               f"(pooled within-arm sd {_pts(sd)}) for a true {100 * H3_POWER_SHIFT:g}-point advantage: held "
               f"{power['p_held']:.2f}, refuted {power['p_refuted']:.2f}")
    if p < ALPHA:
        verdict, why = HELD, f"p < {ALPHA:g}"
    elif ci[1] < margin:
        verdict, why = REFUTED, f"p >= {ALPHA:g} and the CI excludes an ELR advantage of {_pts(margin)} or more"
    else:
        verdict, why = INCONCLUSIVE, f"p >= {ALPHA:g} but the CI still allows an ELR advantage of {_pts(margin)} or more"
    return _verdict("H3", verdict, statistic=u, p=p, effect=hl, ci=ci, runs=used, details=details,
                    reason=f"{why}. {numbers}")


# ---------------------------------------------------------------------------------------------- H4

def _events(a: dict) -> list[detectors.DropEvent]:
    """The analysis' drop events back as DropEvents with epoch positions (epoch - 1) for `coincidence`."""
    return [detectors.DropEvent(s - 1, b - 1, r - 1, d) for s, b, r, d in a["drops"]["events"]]


def evaluate_h4(runs: list[Run], an: dict) -> Verdict:
    """H4: drop-and-recovery events in test accuracy after the initial transient, counted per run (every
    run but the controls); coincidence with the run's H2 episodes reported with a permutation p."""
    studied = [r for r in runs if r.group != "control"]
    per_run, analysable, sensitive, events, episodes, lengths = {}, [], [], {}, {}, {}
    for r in studied:
        a = an[r.name]
        dr = a["drops"]
        per_run[r.name] = {"events": dr["events"], "transient_end": dr["transient_end_epoch"],
                           "sensitivity": dr["sensitivity"], "episodes": a["episodes"]}
        if a["epochs"] - (dr["transient_end_epoch"] or 0) >= H4_MIN_EPOCHS:
            analysable.append(r.name)
            if (dr["sensitivity"] or 0) >= MIN_SENSITIVITY:
                sensitive.append(r.name)
        if dr["events"]:
            events[r.name] = _events(a)
            episodes[r.name] = [e - 1 for e in a["episodes"]]
            lengths[r.name] = a["epochs"]
    co = detectors.coincidence(events, episodes, lengths)
    ok, problem, controls = control_check(runs, an, positive=lambda a: bool(a["drops"]["events"]),
                                          negative=lambda a: bool(a["drops"]["events"]))
    # the smooth control is not known to be free of drops (no weight decay does not forbid them): report only
    if "smooth" in controls:
        controls["smooth"]["expected"] = None
    problem = "; ".join(x for x in problem.split("; ") if x and "smooth" not in x)
    ok = not problem
    for c in controls.values():
        c["events"] = an[c["run"]]["drops"]["events"]
    details = {"runs": per_run, "controls": controls,
               "params": {"drop": detectors.DROP, "within": detectors.WITHIN, "recover_within": detectors.RECOVER_WITHIN,
                          "tolerance": detectors.TOLERANCE, "noise_k": detectors.NOISE_K,
                          "coincidence_window": detectors.COINCIDENCE_WINDOW},
               "coincide_fraction": co.fraction, "coincide_p": co.p, "n_events": co.n_events,
               "n_coincident": co.n_coincident}
    k = len(events)
    frac, ci = stats.proportion_ci(k, len(analysable))
    co_text = (f"{co.n_coincident} of {co.n_events} events within {detectors.COINCIDENCE_WINDOW} epochs of one of the "
               f"run's destabilisation episodes (permutation p = {_fmt(co.p)})" if co.n_events else "no events")
    numbers = (f"{k} of {len(analysable)} analysable runs (controls excluded) have a drop of >= {_pts(detectors.DROP)} "
               f"(and >= {detectors.NOISE_K:g} x noise) within {detectors.WITHIN} epochs regained to within "
               f"{_pts(detectors.TOLERANCE)} within {detectors.RECOVER_WITHIN} epochs, after the initial transient; "
               f"{co_text}; the detector finds >= {MIN_SENSITIVITY:.0%} of injected drops in {len(sensitive)} runs")
    if not ok:
        verdict, why = INCONCLUSIVE, f"the drop detector failed its positive control ({problem})"
    elif k >= H4_MIN_RUNS_WITH_EVENTS:
        verdict, why = HELD, f">= {H4_MIN_RUNS_WITH_EVENTS} runs with an event"
    elif len(sensitive) >= H4_MIN_RUNS:
        verdict, why = REFUTED, f"fewer than {H4_MIN_RUNS_WITH_EVENTS} runs with an event among {len(sensitive)} where the detector would see one"
    else:
        verdict, why = INCONCLUSIVE, f"too few runs where the detector would see a drop ({len(sensitive)}; {H4_MIN_RUNS} needed)"
    return _verdict("H4", verdict, statistic=k, effect=frac, ci=ci, runs=analysable, details=details,
                    reason=f"{why}. {numbers}")


# ---------------------------------------------------------------------------------------------- H5

def evaluate_h5(runs: list[Run], an: dict) -> Verdict:
    """H5: per stationary SGD run with weight decay (any arm, controls included: it is not an arm
    comparison), RMS angle over whole cycles / sqrt(2ηλ/(1+μ)); geometric mean with a t interval on the logs."""
    points, skipped = [], []
    for r in runs:
        a = an[r.name]
        if not a["theory_applies"]:
            continue
        ratio = a["angle_rms_over_predicted"]
        if not a["stationary"] or ratio is None or diverged(r):
            skipped.append(r.name)
            continue
        points.append({"run": r.name, "group": r.group, "eta_lambda": (a["final"]["lr"] or math.nan) * a["weight_decay"],
                       "momentum": a["momentum"], "measured_angle": a["angle"]["rms"],
                       "predicted_angle": a["angle"]["predicted"], "ratio": ratio, "whole_cycles": a["stationarity"]["whole_cycles"]})
    details = {"points": points, "not_stationary": skipped, "ratio_margin": H5_RATIO_MARGIN}
    names = [x["run"] for x in points]
    if len(points) < H5_MIN_RUNS:
        return _verdict("H5", INCONCLUSIVE, runs=names, details=details,
                        reason=f"{len(points)} stationary SGD runs with weight decay ({len(skipped)} more not measured "
                               f"stationary or without the RMS angle); needs >= {H5_MIN_RUNS}")
    logs = np.log([x["ratio"] for x in points])
    half = st.t.ppf(0.975, logs.size - 1) * np.std(logs, ddof=1) / math.sqrt(logs.size)   # t interval, n-1 dof
    ratio, ci = math.exp(logs.mean()), (math.exp(logs.mean() - half), math.exp(logs.mean() + half))
    details["ratio"], details["ratio_ci"] = ratio, list(ci)
    verdict = _interval_verdict(ci, 1 / H5_RATIO_MARGIN, H5_RATIO_MARGIN)
    why = {HELD: "the CI lies inside", REFUTED: "the CI lies entirely outside", INCONCLUSIVE: "the CI straddles"}[verdict]
    return _verdict("H5", verdict, effect=ratio, ci=ci, runs=names, details=details,
                    reason=f"{why} [{1 / H5_RATIO_MARGIN:.3g}, {H5_RATIO_MARGIN:g}]: RMS angle per step over whole "
                           f"cycles / sqrt(2ηλ/(1+μ)), geometric mean over {len(points)} stationary SGD runs = "
                           f"{_fmt(ratio)}, 95% t CI [{_fmt(ci[0])}, {_fmt(ci[1])}] (per run: "
                           f"{', '.join(_fmt(x['ratio']) for x in points)})")


# ---------------------------------------------------------------------------------------------- H6

def _spread_difference(elr_acc: np.ndarray, sgd_acc: np.ndarray, groups: list[np.ndarray]) -> np.ndarray | float:
    """mean over λ groups of sd_lr0(SGD arm) - sd_lr0(ELR arm): > 0 when the rule makes accuracy less
    sensitive to lr0. Arrays: one value per cell (or rows of them: one value per row); groups: the cells'
    indices per λ."""
    d = np.mean([np.std(sgd_acc[..., g], axis=-1, ddof=1) - np.std(elr_acc[..., g], axis=-1, ddof=1) for g in groups],
                axis=0)
    return float(d) if np.ndim(d) == 0 else d


def _exchange_p(a: np.ndarray, b: np.ndarray, groups: list[np.ndarray]) -> tuple[float, int]:
    """One-sided exact exchange test of the spread difference: under "the rule does not matter" each cell's two
    accuracies are exchangeable, so all 2^cells swaps are equally likely. (p, number of swaps)."""
    idx = np.concatenate(groups)
    flips = np.zeros((2 ** idx.size, a.size), dtype=bool)
    flips[:, idx] = np.array(list(itertools.product((False, True), repeat=idx.size)))
    null = _spread_difference(np.where(flips, b, a), np.where(flips, a, b), groups)
    return float(np.mean(null >= _spread_difference(a, b, groups) - 1e-12)), len(null)


def _h6_power(sd_elr: list[float], groups: list[np.ndarray], size: int, n_sim: int = H6_POWER_SIMS) -> float:
    """Power of the exchange test when plain SGD's accuracy spreads over lr0 with twice the ELR arm's sd (per
    λ, normal cells with the observed ELR-arm sd): the fraction of simulated studies with p < ALPHA."""
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(n_sim):
        a, b = np.zeros(size), np.zeros(size)
        for g, sd in zip(groups, sd_elr):
            a[g] = sd * rng.standard_normal(g.size)
            b[g] = 2 * sd * rng.standard_normal(g.size)
        hits += _exchange_p(a, b, groups)[0] < ALPHA
    return hits / n_sim


def evaluate_h6(runs: list[Run], an: dict) -> Verdict:
    """H6: the spread of final accuracy across lr0 (per λ) in the ELR arm vs its plain-SGD twins, cells paired.
    Exact exchange test (the two arms swapped within cells, all 2^cells ways) for the one-sided p; the
    interval of the spread difference from the test split's binomial noise (parametric bootstrap)."""
    elr = {r.config["labels"].get("config_id"): r for r in _arm(runs, "elr")}
    cells = [(elr[t.config["labels"]["twin"]], t) for t in _arm(runs, "sgd") if t.config["labels"].get("twin") in elr]
    wds = sorted({float(e.setting("weight_decay")) for e, _ in cells})
    groups = [np.array([i for i, (e, _) in enumerate(cells) if float(e.setting("weight_decay")) == wd]) for wd in wds]
    groups = [g for g in groups if g.size >= H6_MIN_CELLS]
    rows = [{"elr_run": e.name, "sgd_run": s.name, "lr0": float(e.setting("lr")), "weight_decay": float(e.setting("weight_decay")),
             "matched_lr": json_float(s.setting("lr")), "elr_acc": final_accuracy(e), "sgd_acc": final_accuracy(s)} for e, s in cells]
    details = {"cells": rows}
    used = [x for e, s in cells for x in (e.name, s.name)]
    if not groups:
        return _verdict("H6", INCONCLUSIVE, runs=used, details=details,
                        reason=f"{len(cells)} ELR/plain-SGD cell pairs; needs >= {H6_MIN_CELLS} lr0 values at some λ "
                               "(the study's third arm)")
    a = np.array([x["elr_acc"] for x in rows])
    b = np.array([x["sgd_acc"] for x in rows])
    diff = _spread_difference(a, b, groups)
    p, n_swaps = _exchange_p(a, b, groups)
    n_test = test_split_size([r for pair in cells for r in pair])
    rng = np.random.default_rng(0)
    sd_a, sd_b = (np.sqrt(np.clip(x * (1 - x), 1e-6, None) / n_test) for x in (a, b))  # binomial sd per accuracy
    boot = [_spread_difference(a + sd_a * rng.standard_normal(a.size), b + sd_b * rng.standard_normal(b.size), groups)
            for _ in range(H6_N_BOOT)]
    ci = tuple(float(q) for q in np.quantile(boot, [0.025, 0.975]))
    per_wd = {f"{wds[i]:g}": {"sd_elr": json_float(np.std(a[g], ddof=1)), "sd_sgd": json_float(np.std(b[g], ddof=1))}
              for i, g in enumerate(groups)}
    power = _h6_power([np.std(a[g], ddof=1) for g in groups], groups, len(rows))
    details.update(per_weight_decay=per_wd, spread_difference=diff, ci=list(ci), p=p, n_test=n_test,
                   null_size=n_swaps, power_double_spread=power)
    spreads = "; ".join(f"λ {k}: sd over lr0 ELR {_pts(v['sd_elr'])} vs SGD {_pts(v['sd_sgd'])}" for k, v in per_wd.items())
    numbers = (f"{spreads}; mean difference (SGD − ELR) {_pts(diff)}, 95% interval from test-split noise "
               f"[{_pts(ci[0])}, {_pts(ci[1])}]; exact exchange p = {_fmt(p)} ({n_swaps} swaps; smallest attainable "
               f"{1 / n_swaps:.3g}); power of this test if plain SGD's spread were twice the ELR arm's: {power:.2f}")
    if p < ALPHA:
        verdict, why = HELD, f"p < {ALPHA:g}: the ELR arm's accuracy varies less with lr0"
    elif ci[1] <= 0:
        verdict, why = REFUTED, "the ELR arm's spread is at least as large as plain SGD's beyond test-split noise"
    else:
        verdict, why = INCONCLUSIVE, "no significant reduction, but one is not excluded"
    return _verdict("H6", verdict, statistic=diff, p=p, effect=diff, ci=ci, runs=used, details=details,
                    reason=f"{why}. {numbers}")


# ---------------------------------------------------------------------------------------------- all

EVALUATORS = {"H1": evaluate_h1, "H2": evaluate_h2, "H3": evaluate_h3, "H4": evaluate_h4, "H5": evaluate_h5,
              "H6": evaluate_h6}


def evaluate_all(runs: list[Run], an: dict | None = None) -> list[Verdict]:
    """H1..H6, with p_corrected = {"holm", "bh"} across the claims decided by a test (MULTIPLICITY)."""
    an = analyses(runs) if an is None else an
    verdicts = [f(runs, an) for f in EVALUATORS.values()]
    with_p = [v for v in verdicts if v.p is not None]
    if with_p:
        ps = [v.p for v in with_p]
        for v, h, b in zip(with_p, stats.holm(ps), stats.benjamini_hochberg(ps)):
            v.p_corrected = {"holm": float(h), "bh": float(b)}
            if v.verdict == HELD and v.p < ALPHA <= h:
                v.verdict = INCONCLUSIVE
                v.reason = (f"p = {_fmt(v.p)} < {ALPHA} alone, but Holm-corrected p = {_fmt(h)} >= {ALPHA} across "
                            f"the claims decided by a test. Alone: " + v.reason)
    return verdicts
