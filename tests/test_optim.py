"""Optimizer and schedule registries: every entry trains, and the schedules follow their formulas."""

import math

import pytest

from elr import runs
from elr.config import RunConfig
from elr.training.optim import OPTIMIZERS, SCHEDULES
from elr.training.train import train

TINY = dict(model="convnet_si", width=2, data="synthetic", subset=40, batch_size=20, weight_decay=1e-3)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_every_optimizer_trains(optimizer, tmp_path):
    cfg = RunConfig(**TINY, epochs=2, optimizer=optimizer, lr=1e-3,
                    momentum=0.9 if optimizer in ("sgd", "rmsprop") else 0.0)
    summary = train(cfg, tmp_path / optimizer, progress=False)
    assert summary["finished"] and summary["epochs_done"] == 2
    recs = runs.read_metrics(tmp_path / optimizer)
    assert recs[0]["angular_update"] > 0  # the weights moved


def expected_lr(schedule: str, c: RunConfig, epoch: int, lr0: float) -> float:
    """The rate in force during `epoch` (1-based), written out from each schedule's definition."""
    i = epoch - 1  # completed epochs before this one
    return {
        "constant": lr0,
        "step": lr0 * c.gamma ** (i // c.step_size),                      # StepLR
        "multistep": lr0 * c.gamma ** sum(i >= m for m in c.milestones),  # MultiStepLR
        "cosine": lr0 * (1 + math.cos(math.pi * i / c.epochs)) / 2,       # SGDR without restarts (eta_min 0)
        "exponential": lr0 * c.gamma**i,
        "warmup": lr0 * min(1.0, epoch / c.warmup_epochs),                # Goyal et al. 2017, linear ramp
    }[schedule]


@pytest.mark.parametrize("schedule", ["constant", "step", "multistep", "cosine", "exponential", "warmup"])
def test_epoch_schedules_follow_their_formulas(schedule, tmp_path):
    cfg = RunConfig(**TINY, epochs=6, lr=0.1, schedule=schedule, step_size=2, milestones=[2, 5], gamma=0.5,
                    warmup_epochs=3)
    train(cfg, tmp_path / schedule, progress=False)
    lrs = [r["lr"] for r in runs.read_metrics(tmp_path / schedule)]
    assert lrs == pytest.approx([expected_lr(schedule, cfg, e, 0.1) for e in range(1, 7)], rel=1e-9)


def test_plateau_decays_when_test_loss_stalls(tmp_path):
    # a rate too small to move the test loss by more than the 1e-4 relative threshold: after `patience` epochs without a
    # new minimum the rate is multiplied by gamma
    cfg = RunConfig(**TINY, epochs=8, lr=1e-6, schedule="plateau", plateau_patience=1, gamma=0.5)
    train(cfg, tmp_path / "p", progress=False)
    lrs = [r["lr"] for r in runs.read_metrics(tmp_path / "p")]
    assert lrs[0] == 1e-6 and min(lrs) < 1e-6
    assert all(b in (a, a * 0.5) for a, b in zip(lrs, lrs[1:]))


def test_registry_names_match_the_config_choices():
    assert set(SCHEDULES) == {"constant", "step", "multistep", "cosine", "exponential", "warmup", "plateau",
                              "elr", "sphere"}
    assert set(OPTIMIZERS) == {"sgd", "adam", "adamw", "rmsprop"}


def test_progress_line_on_request(tmp_path, capsys):
    train(RunConfig(**TINY, epochs=2, schedule="elr"), tmp_path / "r", progress=True)
    err = capsys.readouterr().err
    assert "epoch 2/2" in err and "elr" in err and "eta" in err
    train(RunConfig(**TINY, epochs=2, schedule="elr"), tmp_path / "q", progress=False)
    assert capsys.readouterr().err == ""
