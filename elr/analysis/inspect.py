"""One run directory in, one analysis out: the theory's prediction beside the measurement, and the detectors.

    python -m elr inspect runs/demo            # a readable summary
    python -m elr inspect runs/demo --json     # one JSON object (keys below)
    analyse(Run("runs/demo"))                  # the same, as a dict: what the claims aggregate over runs

The study's claims are built on this per-run analysis, so a user's single run and the study are judged
alike. Every field is computed from config.json and metrics.jsonl alone; a run without the newer metrics
(epoch-0 record, RMS angle, step-averaged ELR, same-step G) still analyses, and each quantity that needs a
missing field is None with a note saying which field.
"""

from __future__ import annotations

import math

import numpy as np

from elr.analysis import detectors, theory
from elr.runs import Run, json_float

FINAL_FRACTION = 0.1     # "final" values: the median over the last 10% of epochs (a sawtooth averages out)
# The stationarity window: the final quarter of the run, snapped to whole cycles when destabilisation
# episodes occur in it (a limit cycle's averages are only meaningful over whole periods, docs/science.md).
WINDOW_FRACTION = 0.25
# Drop-and-recovery events count only after the initial transient: once the 5-epoch running median of
# test accuracy first reaches 90% of its final level; dips of a still-rising curve are not "drops".
TRANSIENT_LEVEL = 0.9
TRANSIENT_SMOOTH = 5
# The rule's norm equals the SI norm (so the seed rule's fixed point applies) when they agree within 1%.
SAME_NORM_TOL = 0.01


# ---------------------------------------------------------------------------------------------- series

def steps_per_epoch(run: Run) -> float:
    last = run.metrics[-1] if run.metrics else {}
    return (last.get("step") or 0) / last["epoch"] if last.get("epoch") else math.nan


def rate_series(run: Run) -> np.ndarray:
    """The SI weights' rate per epoch: `lr_si` where logged; in older runs `lr`, a per-group dict reduced
    to its ||w_l||^2-weighted mean over the SI layers (the same reduction the trainer logs as lr_si)."""
    out = []
    for r in run.metrics:
        v = r.get("lr_si", r.get("lr"))
        if isinstance(v, dict):
            w = {n: x**2 for n, x in (r.get("si_norm_by_layer") or {}).items() if x is not None and n in v}
            v = sum(v[n] * w[n] for n in w) / sum(w.values()) if w and sum(w.values()) > 0 else None
        out.append(np.nan if v is None else float(v))
    return np.array(out, dtype=np.float64)


def series(run: Run, key: str, fallback: str | None = None) -> tuple[np.ndarray, str | None]:
    """(values, the key used): `key` where the run logged it, else `fallback`, else (all nan, None)."""
    for k in (key, fallback):
        if k and any(k in r for r in run.metrics):
            return run.series(k), k
    return np.full(len(run.metrics), np.nan), None


def final_value(x: np.ndarray, fraction: float = FINAL_FRACTION) -> float:
    """The median over the last `fraction` of the series' finite prefix (at least one epoch)."""
    x = detectors.finite_prefix(x)
    return float(np.median(x[-max(1, math.ceil(fraction * x.size)):])) if x.size else math.nan


def epochs(run: Run) -> np.ndarray:
    return np.array([r.get("epoch", i + 1) for i, r in enumerate(run.metrics)], dtype=np.int64)


def _nan(x) -> float:
    return math.nan if x is None else float(x)


# ---------------------------------------------------------------------------------------------- analysis

def rule_power(run: Run) -> int:
    """p in lr = lr0 / ||w||^p: the ELR rule's power; 0 for every other schedule."""
    return int(run.setting("elr_power", 1)) if run.setting("schedule") == "elr" else 0


def theory_applies(run: Run) -> tuple[bool, str]:
    """The norm-balance theory covers SGD (with or without momentum) with weight decay on SI weights."""
    if str(run.setting("optimizer", "")).lower() != "sgd":
        return False, f"optimizer {run.setting('optimizer')}: the theory here covers SGD"
    if run.setting("schedule") == "sphere":
        return False, "fixed ELR on the sphere: the norm is held, no balance to close"
    if not float(run.setting("weight_decay", 0.0)) > 0:
        return False, "no weight decay: the SI norm only grows, no equilibrium"
    if run.setting("elr_per_layer", False):
        return False, "per-layer rule: each layer has its own fixed point (see tau_by_layer)"
    if not any((r.get("si_norm") or 0) > 0 for r in run.metrics[:1]):
        return False, "no scale-invariant weights"
    return True, ""


def _window(n: int, episode_idx: np.ndarray) -> tuple[int, int, bool]:
    """[start, stop) indices of the final WINDOW_FRACTION, snapped to whole cycles (from one episode start
    to a later one) when two or more episodes fall inside it."""
    start = n - max(2, math.ceil(WINDOW_FRACTION * n))
    inside = episode_idx[episode_idx >= start]
    if inside.size >= 2:
        return int(inside[0]), int(inside[-1]), True
    return max(start, 0), n, False


def transient_end(acc: np.ndarray) -> int:
    """Index where the initial transient ends (see TRANSIENT_LEVEL); 0 for a run too short to tell."""
    a = detectors.finite_prefix(acc)
    if a.size < TRANSIENT_SMOOTH:
        return 0
    level = TRANSIENT_LEVEL * final_value(a)
    smooth = np.array([np.median(a[max(0, i - TRANSIENT_SMOOTH + 1):i + 1]) for i in range(a.size)])
    hit = np.flatnonzero(smooth >= level)
    return int(hit[0]) if hit.size else a.size


def analyse(run: Run, *, sensitivity: bool = True, seed: int = 0) -> dict:
    """The per-run analysis (JSON-able). Top-level keys every caller may rely on: periodic, episodes (epochs),
    period_epochs, stationary, tau_epochs, angle_rms_over_predicted; the rest are nested by topic."""
    ep = epochs(run)
    n = len(ep)
    notes = []
    lam, mu, p = float(run.setting("weight_decay", 0.0)), float(run.setting("momentum", 0.0)), rule_power(run)
    spe = steps_per_epoch(run)
    rate = rate_series(run)
    rho = run.series("si_norm")
    elr, elr_key = series(run, "elr_mean", "elr")
    G, g_key = series(run, "effective_grad_norm_rms", "effective_grad_norm")
    angle_rms, a_key = series(run, "angular_update_rms")
    loss, acc = run.series("train_loss"), run.series("test_acc")
    if elr_key == "elr":
        notes.append("no elr_mean: the end-of-epoch ELR is used")
    if g_key == "effective_grad_norm":
        notes.append("no effective_grad_norm_rms: G from the mean gradient norm times the end-of-epoch norm")

    # --- destabilisation episodes (H2) and drop-and-recovery events (H4)
    eps = detectors.episodes(loss, rho, elr, seed=seed) if n else None
    ep_idx = eps.episodes if eps is not None else np.array([], dtype=np.int64)
    sens = (detectors.episode_sensitivity(loss, rho, elr, seed=seed)
            if sensitivity and eps is not None and eps.analysable else None)
    t0 = transient_end(acc)
    after = detectors.finite_prefix(acc)[t0:]
    drops = detectors.drop_events(after) if n else []
    drop_sens = detectors.drop_sensitivity(after, seed=seed) if sensitivity and n else None

    # --- theory beside measurement
    applies, why_not = theory_applies(run) if n else (False, "no epochs recorded")
    start, stop, cycles = _window(n, ep_idx)
    final = {"test_acc": json_float(final_value(acc)), "train_loss": json_float(final_value(loss)), "elr": json_float(final_value(elr)),
             "rho": json_float(final_value(rho)), "lr": json_float(final_value(rate)), "G": json_float(final_value(G))}
    init = run.initial or {}
    initial = {"elr": json_float(init.get("elr")), "lr": json_float(init.get("lr_si", init.get("lr") if not isinstance(
        init.get("lr"), dict) else None)), "rho": json_float(init.get("si_norm"))}
    if not run.initial:
        notes.append("no epoch-0 record: the state at initialisation is unknown")
    out = {"run": run.name, "group": run.group, "optimizer": run.setting("optimizer"), "schedule": run.setting("schedule"),
           "lr": json_float(run.setting("lr")), "weight_decay": lam, "momentum": mu, "power": p, "epochs": n,
           "steps_per_epoch": json_float(spe), "final": final, "initial": initial, "theory_applies": applies,
           "theory_note": why_not, "notes": notes}

    predicted = stationary = None
    tau_epochs = drift_epochs = ratio = None
    angle = {"rms": None, "predicted": None, "ratio": None, "window": [int(ep[start]) if n else None,
                                                                      int(ep[stop - 1]) if n else None]}
    if applies:
        same_norm = run.setting("elr_norm", "all") == "si" or abs(
            final_value(run.series("weight_norm")) / final_value(rho) - 1) <= SAME_NORM_TOL
        eff_p = p if same_norm else 0
        if p and not same_norm:
            notes.append("the rule divides by a norm that includes non-SI weights: its own fixed point does not "
                         "apply; the constant-lr theory at the applied rate is used")
        w = slice(start, stop)
        lr_for_fp = float(run.setting("lr")) if eff_p else float(np.mean(rate[w]))
        # the fixed point is a mean-square balance (rho^4 ~ eta E[G^2] / 2 lam): G as an RMS over the window
        g_rms = math.sqrt(float(np.mean(G[w] ** 2)))
        fp = theory.fixed_point(lr_for_fp, lam, g_rms, power=eff_p, momentum=mu)
        predicted = {"rho": json_float(fp.rho), "eta": json_float(fp.eta), "elr": json_float(fp.elr), "angle": json_float(fp.angle),
                     "G_rms": json_float(g_rms)}
        tau_epochs = json_float(theory.relaxation_steps(fp.eta if eff_p else lr_for_fp, lam, power=eff_p,
                                                  momentum=mu) / spe)
        if eff_p and final["rho"] and fp.rho < final["rho"]:
            # docs/science.md: far above rho* the rule shrinks the norm by weight decay alone (linearly for p = 1):
            # the epochs still needed from the run's final norm down to rho*
            drift_epochs = json_float(theory.drift_steps(final["rho"], fp.rho, lr_for_fp, lam, power=eff_p) / spe)
        rho_full = np.concatenate([[initial["rho"] or np.nan], rho])
        st = theory.stationarity(np.concatenate([[np.nan], rate]), rho_full, lam=lam, momentum=mu,
                                 steps_per_epoch=int(round(spe)), start=start + 1, stop=stop + 1)
        stationary = {"stationary": st.stationary, "drift_ratio": json_float(st.drift_ratio), "whole_cycles": cycles,
                      "window": [int(ep[start]), int(ep[stop - 1])], "reason": st.reason}
        if a_key:
            # Wan et al. 2021: E[angle^2] = 2 eta lam / (1 + mu): a mean-square law, so the RMS over whole cycles
            rms = math.sqrt(float(np.mean(angle_rms[w] ** 2)))
            pred = math.sqrt(2 * float(np.mean(rate[w])) * lam / (1 + mu))
            ratio = json_float(rms / pred) if pred > 0 else None
            angle.update(rms=json_float(rms), predicted=json_float(pred), ratio=ratio)
        else:
            notes.append("no angular_update_rms: the RMS angle is unknown (older run)")

    out.update({
        "periodic": bool(eps.periodic) if eps else False,
        "episodes": [int(ep[i]) for i in ep_idx],
        "period_epochs": json_float(eps.period) if eps and eps.period is not None else None,
        "stationary": bool(stationary and stationary["stationary"]),
        "tau_epochs": tau_epochs,
        "n_tau": json_float(n / tau_epochs) if tau_epochs else None,
        "drift_epochs": drift_epochs,
        "angle_rms_over_predicted": ratio,
        "predicted": predicted, "stationarity": stationary, "angle": angle,
        "episode_detail": None if eps is None else {
            "analysable": eps.analysable, "converged_epoch": int(ep[eps.converged]) if eps.converged is not None else None,
            "irregularity": json_float(eps.irregularity) if eps.irregularity is not None else None,
            "surrogate_p": json_float(eps.surrogate_p) if eps.surrogate_p is not None else None,
            "sensitivity": json_float(sens) if sens is not None else None, "reason": eps.reason},
        "drops": {"transient_end_epoch": int(ep[min(t0, n - 1)]) if n else None,
                  "events": [[int(ep[t0 + e.start]), int(ep[t0 + e.bottom]), int(ep[t0 + e.recovered]), json_float(e.depth)]
                             for e in drops],
                  "sensitivity": json_float(drop_sens) if drop_sens is not None else None},
    })
    return out


def predicted_elr(run: Run) -> np.ndarray | None:
    """The theory's ELR per epoch for this run: the norm recursion integrated from the initial norm with the
    run's own measured G per epoch (theory.evolve_norm), the rate recomputed per epoch as the run's rule does.
    None where the theory does not apply or the run has no epoch-0 record."""
    applies, _ = theory_applies(run)
    if not applies or not run.initial or not run.initial.get("si_norm"):
        return None
    G, _ = series(run, "effective_grad_norm_rms", "effective_grad_norm")
    p, lam, mu = rule_power(run), float(run.setting("weight_decay")), float(run.setting("momentum", 0.0))
    lr0 = float(run.setting("lr")) if p else float(np.nanmedian(rate_series(run)))
    rho = theory.evolve_norm(float(run.initial["si_norm"]), lr0, lam, G, power=p,
                             steps_per_epoch=int(round(steps_per_epoch(run))), epochs=len(run.metrics), momentum=mu)
    eta = lr0 / rho**p if p else np.full_like(rho, lr0)
    return eta / rho**2


# ---------------------------------------------------------------------------------------------- text

def summary_text(a: dict) -> str:
    """The analysis as a few readable lines (what `elr inspect` prints without --json)."""
    f = lambda x, spec=".3g": "n/a" if x is None else format(x, spec)  # noqa: E731
    lines = [f"{a['run']}: {a['optimizer']} {a['schedule']} lr {f(a['lr'])} wd {f(a['weight_decay'])} "
             f"momentum {f(a['momentum'])}, {a['epochs']} epochs, {f(a['steps_per_epoch'], '.0f')} steps/epoch"]
    fin = a["final"]
    lines.append(f"final (median of the last {FINAL_FRACTION:.0%} of epochs): test acc {f(fin['test_acc'])}, "
                 f"train loss {f(fin['train_loss'])}, norm {f(fin['rho'])}, ELR {f(fin['elr'])}, G {f(fin['G'])}")
    if a["theory_applies"]:
        pr, st, an = a["predicted"], a["stationarity"], a["angle"]
        lines.append(f"theory (fixed point for the window's RMS G {f(pr['G_rms'])}): norm {f(pr['rho'])}, ELR {f(pr['elr'])}, "
                     f"rate {f(pr['eta'])}; relaxation time tau {f(a['tau_epochs'])} epochs, the run covered "
                     f"{f(a['n_tau'])} tau" + (f"; from its final norm the weight-decay drift still needs ~{f(a['drift_epochs'])} "
                                               f"epochs to reach the fixed point"
                                               if a["drift_epochs"] else ""))
        lines.append(f"stationary: {'yes' if st['stationary'] else 'no'} (norm balance over epochs {st['window'][0]}-"
                     f"{st['window'][1]}{', whole cycles' if st['whole_cycles'] else ''}): {st['reason']}")
        lines.append(f"angle per step: RMS {f(an['rms'])} vs predicted sqrt(2 eta lam/(1+mu)) {f(an['predicted'])}, "
                     f"ratio {f(an['ratio'])}")
    else:
        lines.append(f"theory: does not apply ({a['theory_note']})")
    d = a["episode_detail"] or {}
    lines.append(f"destabilisation episodes: {len(a['episodes'])} at epochs {a['episodes'][:20]}"
                 f"{' ...' if len(a['episodes']) > 20 else ''}; periodic: {'yes' if a['periodic'] else 'no'} "
                 f"(period {f(a['period_epochs'])} epochs, local irregularity {f(d.get('irregularity'))}, surrogate "
                 f"p {f(d.get('surrogate_p'))}, sensitivity {f(d.get('sensitivity'))}); {d.get('reason', '')}")
    dr = a["drops"]
    lines.append(f"drop-and-recovery events after the transient (ends epoch {dr['transient_end_epoch']}): "
                 f"{len(dr['events'])} {[e[1] for e in dr['events']][:20]} (bottom epochs); sensitivity "
                 f"{f(dr['sensitivity'])}")
    lines += [f"note: {n}" for n in a["notes"]]
    return "\n".join(lines)
