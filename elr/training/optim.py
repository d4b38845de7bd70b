"""Optimizers and learning-rate schedules by name.

Parameter groups: one per scale-invariant weight (named after it) and one "rest" group, so that a
per-layer rule can set each layer's rate and the logs can name every group.
Weight decay: lambda*w added to the gradient for SGD/Adam/RMSprop (an L2 term (lambda/2)||w||^2 in the
loss); decoupled for AdamW (Loshchilov & Hutter 2019). It applies to every trainable tensor, as the seed
regularised the whole network.
"""

from __future__ import annotations

import torch

from ..config import RunConfig
from .rule import ELRRule, SphereRule


def param_groups(model: torch.nn.Module, si: dict[str, torch.nn.Parameter]) -> list[dict]:
    si_ids = {id(p) for p in si.values()}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in si_ids]
    groups = [{"params": [p], "name": n} for n, p in si.items()]
    return groups + ([{"params": rest, "name": "rest"}] if rest else [])


OPTIMIZERS = {
    "sgd": lambda groups, c: torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov,
                                             weight_decay=c.weight_decay),
    "adam": lambda groups, c: torch.optim.Adam(groups, lr=c.lr, weight_decay=c.weight_decay),
    "adamw": lambda groups, c: torch.optim.AdamW(groups, lr=c.lr, weight_decay=c.weight_decay),
    "rmsprop": lambda groups, c: torch.optim.RMSprop(groups, lr=c.lr, momentum=c.momentum,
                                                     weight_decay=c.weight_decay),
}


class EpochSchedule:
    """A torch lr_scheduler stepped once per epoch (after the epoch; plateau on the test loss)."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def on_epoch_start(self, epoch: int) -> None:
        pass

    def on_step_end(self) -> None:
        pass

    def on_epoch_end(self, epoch: int, test_loss: float) -> None:
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(test_loss)
        else:
            self.scheduler.step()

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)


def _warmup(c: RunConfig):
    # linear warm-up over warmup_epochs (Goyal et al. 2017), then constant; index i is epoch i + 1
    return lambda i: min(1.0, (i + 1) / c.warmup_epochs) if c.warmup_epochs else 1.0


S = torch.optim.lr_scheduler
SCHEDULES = {
    "constant": lambda opt, c, si: EpochSchedule(S.LambdaLR(opt, lambda i: 1.0)),
    "step": lambda opt, c, si: EpochSchedule(S.StepLR(opt, step_size=c.step_size, gamma=c.gamma)),
    "multistep": lambda opt, c, si: EpochSchedule(S.MultiStepLR(opt, milestones=c.milestones, gamma=c.gamma)),
    "cosine": lambda opt, c, si: EpochSchedule(S.CosineAnnealingLR(opt, T_max=c.epochs)),
    "exponential": lambda opt, c, si: EpochSchedule(S.ExponentialLR(opt, gamma=c.gamma)),
    "warmup": lambda opt, c, si: EpochSchedule(S.LambdaLR(opt, _warmup(c))),
    "plateau": lambda opt, c, si: EpochSchedule(S.ReduceLROnPlateau(opt, mode="min", factor=c.gamma,
                                                                    patience=c.plateau_patience)),
    "elr": lambda opt, c, si: ELRRule(opt, lr0=c.lr, power=c.elr_power, norm=c.elr_norm,
                                      per_layer=c.elr_per_layer, every=c.elr_every, si=si),
    "sphere": lambda opt, c, si: SphereRule(opt, elr=c.lr, si=si),
}


def build_optimizer(cfg: RunConfig, groups: list[dict]) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.optimizer](groups, cfg)


def build_schedule(cfg: RunConfig, optimizer: torch.optim.Optimizer, si: dict[str, torch.nn.Parameter]):
    return SCHEDULES[cfg.schedule](optimizer, cfg, si)
