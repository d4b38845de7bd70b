"""The equilibrium theory of scale-invariant weights under SGD + weight decay, as pure float64 functions.

    fp = fixed_point(0.1, 5e-4, G=2.0, power=1)      # the seed's rule lr = lr0/rho: rho*, eta*, ELR*, angle*
    tau = relaxation_steps(fp.eta, 5e-4, power=1)    # steps for ln rho^2 to close 1/e of its gap to rho*
    rho = evolve_norm(3.0, 0.1, 5e-4, 2.0, power=1, steps_per_epoch=391, epochs=100)   # rho per epoch

Symbols: rho = ||w_SI|| (the norm of the scale-invariant weights), eta = the learning rate in force,
lam = weight decay (PyTorch SGD: lam*w added to the gradient), G = ||grad L(w)|| * ||w|| (the effective
gradient norm, scale-free; its root mean square over steps), mu = heavy-ball momentum, p = the ELR rule's
power (lr = lr0 / rho^p; p = 1 the seed's rule, p = 0 a constant lr). ELR = eta / rho^2. Everything follows
from the norm balance x_{t+1} = (1 - eta*lam)^2 x_t + eta^2 G^2 / x_t, x = rho^2 (Wan et al. 2021, exact
for plain SGD), to leading order in eta*lam. With momentum, the per-step gradients are taken as uncorrelated
(noise-dominated, as at equilibrium); heavy-ball SGD then moves the norm exactly as plain SGD at the rate
eta / (1 - mu) (derived below; checked against a simulation of PyTorch's heavy-ball in tests/test_theory.py).
Out-of-domain inputs give nan (a fixed point that does not exist) or inf (a relaxation that never ends),
never an exception: one bad run must not crash a claim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# |D| <= 0.2: the two sides of the norm balance (the gradient's growth of rho^2 and weight decay's shrink of
# it) agree within 20% over the window. At constant G, D = (rho*/rho)^(4+p) - 1, so this is rho within ~5% of
# rho* (p = 0..2), while a run still relaxing from 2 rho* has D ~ -0.94.
STATIONARY_TOL = 0.2
# The balance is only a measurement when weight decay acts over the window: it must shrink rho^2 by >= 10% on its
# own (the window spans >= ~0.1 / (2 eta lam) steps, a fifth of a relaxation time). Below that both sides of the
# balance are ~0, and a frozen norm (a schedule that decayed the lr to ~0) would pass for an equilibrium.
MIN_WINDOW_DECAY = 0.1

# Above a per-step angle eta G / rho^2 of 0.1 rad (ELR * G) the continuous limit of the norm recursion is off by
# more than ~1% per step, and at the start of a high-lr run a single step can multiply the norm: evolve_norm
# steps the exact plain-SGD recursion through such epochs.
LARGE_STEP = 0.1

# 4 + p must be > 0: below it the rule's fixed point is unstable (relaxation rate (4+p)*eta*lam <= 0).
MIN_STABLE_POWER = -4


@dataclass(frozen=True)
class FixedPoint:
    rho: float     # equilibrium SI norm rho*
    eta: float     # learning rate in force at rho* (lr0 / rho*^p; the constant lr when p = 0)
    elr: float     # eta* / rho*^2
    angle: float   # RMS angular update per step at equilibrium, radians


@dataclass(frozen=True)
class Stationarity:
    drift_ratio: float           # D: change of rho^2 over the window / weight decay's shrink of it (see below)
    stationary: bool             # |D| <= tol
    window: tuple[int, int]      # the epochs [start, stop) asked for
    reason: str                  # the numbers that decided it, or why it could not be measured


_NAN_FP = FixedPoint(math.nan, math.nan, math.nan, math.nan)


def _finite(*xs: float) -> bool:
    return all(math.isfinite(x) for x in xs)


def _eta_eff(eta, momentum):
    # derived: with gradients uncorrelated across steps, heavy-ball (buf = mu*buf + g + lam*w; w -= eta*buf)
    # moves x = rho^2 as dx/dt = -2 (eta/(1-mu)) lam x + (eta/(1-mu))^2 G^2 / x, i.e. plain SGD at eta/(1-mu)
    # (the decay term is coherent, summed by buf to lam*w/(1-mu); the noise adds
    # E||buf||^2 = (G/rho)^2/(1-mu^2), and the cross term <w, buf> turns its norm injection into
    # eta^2 ||buf||^2 (1+mu)/(1-mu))
    return eta / (1.0 - momentum)


def _rho4_const(eta, lam, G, momentum):
    # Wan et al. 2021 (spherical motion dynamics), fixed point of the norm balance at constant eta:
    # rho*^4 = eta G^2 / (2 lam), with eta -> eta/(1-mu) under momentum (derived, _eta_eff)
    return _eta_eff(eta, momentum) * G**2 / (2.0 * lam)


def fixed_point(lr: float, lam: float, G: float, *, power: float = 0, momentum: float = 0.0) -> FixedPoint:
    """The equilibrium of the norm balance under lr = lr0 / rho^p (`lr` is lr0; power 0: a constant lr).

    rho*^(4+p) = lr0 G^2 / (2 lam (1-mu)); eta* = lr0 / rho*^p; ELR* = eta*/rho*^2; angle* = sqrt(2 eta* lam/(1+mu)).
    No equilibrium -> every field nan: lam <= 0 (nothing shrinks the norm), G <= 0 (nothing grows it),
    lr <= 0, momentum outside [0, 1), power <= -4 (unstable), or a non-finite input.
    """
    lr, lam, G, power, momentum = float(lr), float(lam), float(G), float(power), float(momentum)
    if not (_finite(lr, lam, G, power, momentum) and lr > 0 and lam > 0 and G > 0 and 0 <= momentum < 1
            and power > MIN_STABLE_POWER):
        return _NAN_FP
    # docs/science.md "The seed's rule has its own equilibrium" (derived from Wan et al. 2021's norm balance with
    # eta = lr0/rho^p): rho*^(4+p) = lr0 G^2 / (2 lam); with momentum lr0 -> lr0/(1-mu) (derived, _eta_eff)
    rho = (_rho4_const(lr, lam, G, momentum)) ** (1.0 / (4.0 + power))
    # the rule's rate at rho* (p = 0: the constant lr itself)
    eta = lr * rho**-power
    # van Laarhoven 2017 (arXiv 1706.05350): ELR = eta / rho^2; for p = 1, lr0^0.4 (2 lam)^0.6 G^-1.2 (mu = 0)
    elr = eta / rho**2
    # Wan et al. 2021: equilibrium angular update sqrt(2 eta lam / (1 + mu)) (a root-mean-square per step)
    angle = math.sqrt(2.0 * eta * lam / (1.0 + momentum))
    return FixedPoint(rho, eta, elr, angle)


def relaxation_steps(eta: float, lam: float, *, power: float = 0, momentum: float = 0.0) -> float:
    """Steps for ln rho^2 (equally rho^4, to first order) to close a fraction 1/e of its gap to the fixed point.

    `eta` is the rate in force at (or near) the fixed point. inf where nothing relaxes: eta*lam <= 0 or
    4 + p <= 0; nan for a non-finite input.
    """
    eta, lam, power, momentum = float(eta), float(lam), float(power), float(momentum)
    if not _finite(eta, lam, power, momentum):
        return math.nan
    if eta * lam <= 0 or 4.0 + power <= 0:
        return math.inf
    # docs/science.md (derived: linearising dx/dt = -2 eta lam x + eta^2 G^2/x with eta = lr0 x^(-p/2) at x*):
    # rate (4+p) eta lam per step (p = 0: Wan et al. 2021's 4 eta lam); momentum: eta -> eta/(1-mu) (_eta_eff)
    return 1.0 / ((4.0 + power) * _eta_eff(eta, momentum) * lam)


def drift_steps(rho_from: float, rho_to: float, lr0: float, lam: float, *, power: float = 0) -> float:
    """Steps the weight-decay-only drift (gradient term negligible: far above equilibrium) takes from
    rho_from down to rho_to under lr = lr0 / rho^p.

    0 when rho_to == rho_from; inf when it is never reached (rho_to > rho_from, lr0*lam <= 0, or
    rho_to <= 0 with p <= 0); nan for a non-finite input or rho_to < 0. The true time is longer, and
    reaching rho* itself takes forever: the gradient term slows the drift near the fixed point.
    """
    rho_from, rho_to, lr0, lam, power = map(float, (rho_from, rho_to, lr0, lam, power))
    if not _finite(rho_from, rho_to, lr0, lam, power) or rho_to < 0 or rho_from <= 0:
        return math.nan
    if rho_to == rho_from:
        return 0.0
    if rho_to > rho_from or lr0 * lam <= 0 or (rho_to == 0 and power <= 0):
        return math.inf
    # derived: rho_{t+1} = (1 - eta lam) rho_t with eta = lr0/rho^p gives d rho/dt = -lr0 lam rho^(1-p);
    # integrated: p != 0: (rho_from^p - rho_to^p)/(p lr0 lam) (p = 1: docs/science.md's linear shrink by lr0 lam per step)
    if power != 0:
        return (rho_from**power - rho_to**power) / (power * lr0 * lam)
    # derived (same equation, p = 0): exponential decay, ln(rho_from/rho_to)/(lr0 lam)
    return math.log(rho_from / rho_to) / (lr0 * lam)


def evolve_norm(rho0: float, lr0: float, lam: float, G, *, power: float, steps_per_epoch: int, epochs: int,
                momentum: float = 0.0) -> np.ndarray:
    """The theory's rho at the end of each of `epochs` epochs, for a rate recomputed at every epoch start
    (eta_e = lr0 / rho_e^p; power 0: the constant lr0).

    Within an epoch eta is constant and the continuous limit of the norm balance is solved exactly: rho^4
    relaxes at rate 4 eta lam/(1-mu) per step to the constant-eta fixed point (lam > 0), or grows linearly
    (lam = 0); an epoch whose per-step angle eta G / rho^2 exceeds LARGE_STEP (plain SGD) steps the exact
    recursion instead. `G` is a scalar or an array of length `epochs` (a measured per-epoch series; G = 0 is pure
    decay). Invalid inputs (rho0 <= 0, lr0 <= 0, lam < 0, momentum outside [0, 1)) give all-nan; a nan in G
    makes that epoch and every later one nan. Raises ValueError only for a G array of the wrong length.
    """
    epochs, S = int(epochs), int(steps_per_epoch)
    if epochs < 0 or S < 1:
        raise ValueError(f"need epochs >= 0 and steps_per_epoch >= 1, got {epochs} and {S}")
    g = np.asarray(G, dtype=np.float64)
    if g.ndim == 0:
        g = np.full(epochs, float(g))
    elif g.shape != (epochs,):
        raise ValueError(f"G must be a scalar or have length epochs = {epochs}, got shape {g.shape}")
    out = np.full(epochs, np.nan)
    rho0, lr0, lam, power, momentum = map(float, (rho0, lr0, lam, power, momentum))
    if not (_finite(rho0, lr0, lam, power, momentum) and rho0 > 0 and lr0 > 0 and lam >= 0 and 0 <= momentum < 1):
        return out
    y = rho0**4
    for e in range(epochs):
        eta = lr0 * y ** (-power / 4)     # the rule's rate for this epoch (rule.rule_lr, set at the epoch start)
        eta_eff = _eta_eff(eta, momentum)
        if momentum == 0 and eta_eff * g[e] / math.sqrt(y) > LARGE_STEP:
            # steps this large leave the continuous limit (one step can multiply the norm): step the exact
            # recursion x <- (1 - eta lam)^2 x + eta^2 G^2 / x (docs/science.md §Scale invariance) instead
            x = math.sqrt(y)
            for _ in range(S):
                x = (1.0 - eta * lam) ** 2 * x + eta**2 * g[e] ** 2 / x
            y = x * x
        elif lam == 0:
            # derived: with lam = 0, y = rho^4 = x^2 obeys dy/dt = 2 x dx/dt = 2 eta^2 G^2: linear growth
            y = y + 2.0 * eta_eff**2 * g[e] ** 2 * S
        else:
            # derived: continuous limit of Wan et al. 2021's norm balance, dy/dt = -4 eta lam y + 2 eta^2 G^2,
            # solved exactly at constant eta: y relaxes to y* = rho*^4 (fixed_point at eta) at rate 4 eta lam
            y_star = _rho4_const(eta, lam, g[e], momentum)
            y = y_star + (y - y_star) * math.exp(-4.0 * eta_eff * lam * S)
        if not (math.isfinite(y) and y > 0):
            break   # out stays nan from here on
        out[e] = y**0.25
    return out


def stationarity(lr, si_norm, *, lam: float, momentum: float = 0.0, steps_per_epoch: int, start: int, stop: int,
                 tol: float = STATIONARY_TOL) -> Stationarity:
    """Does the norm balance close over epochs [start, stop)? A measurement on per-epoch series.

    `si_norm[e]` is rho at the end of epoch e (index 0 may be the initial record), `lr[e]` the rate in force
    during epoch e. Epoch e starts at rho[e-1]; weight decay alone would shrink rho^2 over it by
        W_e = rho[e-1]^2 * (1 - (1 - lr[e] lam/(1-mu))^(2 S))      (~ 2 lr[e] lam S rho^2 / (1-mu))
    and the drift ratio is
        D = (rho[stop-1]^2 - rho[b-1]^2) / sum_{e=b}^{stop-1} W_e,   b = max(start, 1).
    Since rho^2 changes by (gradient injections) - (decay), D = injections/decay - 1:
    D ~ 0: the gradient term balances the decay (stationary); D ~ -1: pure weight-decay shrink (far above
    equilibrium); D > 0: rho^2 grows (below equilibrium). stationary = |D| <= tol. For a run in a periodic
    cycle pick a window of whole cycles. Non-finite values in the window, lam <= 0, a window without a
    whole epoch, or a window over which weight decay alone shrinks rho^2 by < MIN_WINDOW_DECAY -> stationary
    False with the reason.
    """
    window = (int(start), int(stop))
    lr, rho = np.asarray(lr, dtype=np.float64).ravel(), np.asarray(si_norm, dtype=np.float64).ravel()
    lam, momentum, S = float(lam), float(momentum), int(steps_per_epoch)

    def no(reason: str) -> Stationarity:
        return Stationarity(math.nan, False, window, reason)

    if not lam > 0:
        return no("no weight decay: no equilibrium")
    if not 0 <= momentum < 1:
        return no(f"momentum {momentum:g} outside [0, 1)")
    if len(lr) != len(rho):
        return no(f"lr and si_norm differ in length ({len(lr)} vs {len(rho)})")
    b, stop = max(window[0], 1), window[1]
    if window[0] < 0 or stop > len(rho) or stop - b < 1:
        return no(f"window [{window[0]}, {stop}) holds no whole epoch of a {len(rho)}-epoch series "
                  "(epoch e needs rho[e-1] and rho[e])")
    r, eta = rho[b - 1:stop], lr[b:stop]
    if not (np.isfinite(r).all() and np.isfinite(eta).all()):
        return no(f"non-finite lr or si_norm in epochs [{b - 1}, {stop})")
    # derived: rho^2 under weight decay alone, (1 - eta lam)^2 per step (docs/science.md's norm identity, g = 0),
    # over S steps; with momentum eta -> eta/(1-mu) (_eta_eff)
    decay = r[:-1] ** 2 * (1.0 - (1.0 - _eta_eff(eta, momentum) * lam) ** (2 * S))
    total = float(decay.sum())
    if not total > 0:
        return no(f"weight decay shrinks nothing over epochs [{b}, {stop}) (sum of decay {total:g})")
    change = float(r[-1] ** 2 - r[0] ** 2)
    D = change / total
    shrink = total / float(np.mean(r[:-1] ** 2))
    if shrink < MIN_WINDOW_DECAY:
        return Stationarity(D, False, window, f"weight decay alone would shrink rho^2 by only {shrink:.2%} over epochs "
                                              f"[{b}, {stop}) (>= {MIN_WINDOW_DECAY:.0%} needed): too slow a clock to tell "
                                              "a balance from a frozen norm")
    ok = abs(D) <= tol
    kind = "stationary" if ok else ("shrinking: above equilibrium" if D < 0 else "growing: below equilibrium")
    return Stationarity(D, ok, window, f"D = {D:.3g} over epochs [{b}, {stop}) ({kind}; |D| <= {tol:g} needed): "
                                       f"rho^2 changed by {change:.3g} against a weight-decay shrink of {total:.3g}")
