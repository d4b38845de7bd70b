"""The effective-learning-rate rules and the scale-invariance maths.

Pure functions on tensors (norms, ELR, angles, sphere projection) and two
thin schedule objects the trainer calls: `ELRRule` (lr = lr0 / ||w||^p) and `SphereRule` (fixed ELR
on the sphere). Conventions: PyTorch SGD, weight decay lambda adds lambda*w to the gradient.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch


def global_norm(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """sqrt(sum_i ||t_i||^2) over a set of tensors, as a 0-d tensor on their device (no host sync)."""
    tensors = [t.detach() for t in tensors]
    if not tensors:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))


def effective_lr(lr, si_norm):
    """The one home of the ELR formula, for the log and the trainer's per-step sums alike. Floats: None where
    the norm is not positive. Device tensors: no guard (comparing would sync with the host every step)."""
    if not isinstance(si_norm, torch.Tensor) and not si_norm > 0:
        return None
    # van Laarhoven 2017 (arXiv 1706.05350) / Lobacheva et al. 2021: ELR = lr / sum_i ||w_i||^2 for SI weights
    return lr / si_norm**2


def si_rate(rates, layer_sq):
    """The one rate of the SI weights when each SI layer l has its own rate lr_l (numpy arrays or tensors,
    one entry per layer; layer_sq = ||w_l||^2): their ||w_l||^2-weighted mean."""
    # derived: the weight-decay term of the norm balance (docs/science.md), sum_l lr_l lam ||w_l||^2 =
    # lr lam sum_l ||w_l||^2, fixes the one rate lr that shrinks the total SI norm as the layers' rates do
    return (rates * layer_sq).sum() / layer_sq.sum()


def rule_lr(lr0: float, norm: float, power: int) -> float:
    # the seed's rule lr = lr0 / ||w||^p (p = 1); p = -2 gives lr = lr0 ||w||^2, i.e. ELR = lr/||w||^2 = lr0
    # held constant (van Laarhoven 2017); p = 2 gives ELR = lr0/||w||^4
    if not 0 < norm < math.inf:  # a diverged run: the trainer records it; the rule must not crash first
        return math.nan
    return lr0 * norm ** -power


def angle_between(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """Angle (radians) between two vectors given as lists of tensors, accurate for tiny angles.

    derived (Kahan): angle = 2 atan2(||a/|a| - b/|b|||, ||a/|a| + b/|b|||), which unlike
    arccos(<a,b>/(|a||b|)) does not lose all digits when the angle is ~1e-4 in float32.
    """
    ua, ub = torch._foreach_div(list(a), global_norm(a)), torch._foreach_div(list(b), global_norm(b))
    diff = global_norm(torch._foreach_sub(ua, ub))  # foreach ops: a few fused kernels per step, not 4 per layer
    summ = global_norm(torch._foreach_add(ua, ub))
    return 2 * torch.atan2(diff, summ)


@torch.no_grad()
def project_to_sphere(params: list[torch.Tensor], radius: float) -> None:
    # Kodryan et al. 2022 (arXiv 2209.03695), Sec. 3: after every step rescale the SI weights to total norm rho0
    scale = radius / global_norm(params)
    torch._foreach_mul_(params, scale)


class ELRRule:
    """lr = lr0 / ||w||^p, recomputed every epoch (the seed) or after every step; p in {1, 2, -1, -2}.

    ||w|| is taken over all trainable weights (the seed's rule) or only the scale-invariant ones. With
    `per_layer`, each scale-invariant layer l gets lr0 / ||w_l||^p and the remaining (non-SI) group keeps
    the global rate. The rule holds no state: every rate is derived from the current weights.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, lr0: float, power: int, norm: str,
                 per_layer: bool, every: str, si: dict[str, torch.nn.Parameter]):
        self.optimizer, self.lr0, self.power, self.per_layer, self.every = optimizer, lr0, power, per_layer, every
        self.norm_params = list(si.values()) if norm == "si" else [
            p for g in optimizer.param_groups for p in g["params"]]
        self.si_names = set(si)

    @torch.no_grad()
    def global_rate(self) -> float:
        """lr0 / ||w||^p over the rule's norm set, at the current weights (one host sync)."""
        return rule_lr(self.lr0, float(global_norm(self.norm_params)), self.power)

    @torch.no_grad()
    def apply(self) -> None:
        global_rate = self.global_rate()
        groups = self.optimizer.param_groups
        layer_norms = (torch.stack(torch._foreach_norm([g["params"][0] for g in groups if g["name"] in self.si_names])).tolist()
                       if self.per_layer else [])
        it = iter(layer_norms)
        for g in groups:
            g["lr"] = rule_lr(self.lr0, next(it), self.power) if self.per_layer and g["name"] in self.si_names else global_rate

    def on_epoch_start(self, epoch: int) -> None:
        self.apply()

    def on_step_end(self) -> None:
        if self.every == "step":
            self.apply()

    def on_epoch_end(self, epoch: int, test_loss: float) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class SphereRule:
    """Fixed ELR on the sphere (Kodryan et al. 2022): lr = elr * rho0^2, SI weights kept at norm rho0."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, elr: float, si: dict[str, torch.nn.Parameter]):
        self.optimizer, self.elr, self.params = optimizer, elr, list(si.values())
        if not self.params:
            raise ValueError("schedule 'sphere' needs a model with scale-invariant weights")
        self.rho0 = float(global_norm(self.params))  # the initial total SI norm; kept in the checkpoint

    def on_epoch_start(self, epoch: int) -> None:
        # Kodryan et al. 2022: lr = elr * rho0^2 makes lr / ||w||^2 = elr on the sphere of radius rho0
        for g in self.optimizer.param_groups:
            g["lr"] = self.elr * self.rho0**2

    def on_step_end(self) -> None:
        project_to_sphere(self.params, self.rho0)

    def on_epoch_end(self, epoch: int, test_loss: float) -> None:
        pass

    def state_dict(self) -> dict:
        return {"rho0": self.rho0}

    def load_state_dict(self, state: dict) -> None:
        self.rho0 = state["rho0"]
