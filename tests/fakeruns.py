"""Synthetic run directories with planted behaviour, for testing the claims and the report.

`write_run` writes one run directory in the exact format of elr/runs.py: config.json (every RunConfig
field, `labels`, `env`), metrics.jsonl (every metric name of issue 2, one line per epoch, the line format
of runs.append_metrics), summary.json. Any metric can be given as an array; the others get smooth,
mutually consistent defaults (elr = lr / si_norm², effective_grad_norm = grad_norm · si_norm).
`write_study` writes a whole 8 ELR + 8 baseline study in which every claim's effect is planted.

metrics.jsonl is written in one atomic write (`runs.write_metrics`) rather than line by line through
`append_metrics`, which fsyncs every line (about 4 ms here: thousands of synthetic epochs would take
seconds); the bytes are the same.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from elr import runs

METRIC_NAMES = ("epoch", "step", "lr", "weight_decay", "train_loss", "train_acc", "test_loss", "test_acc",
                "weight_norm", "si_norm", "si_norm_by_layer", "elr", "elr_by_layer", "grad_norm",
                "effective_grad_norm", "angular_update", "angular_update_per_step", "wall_time")


def config(*, group: str, lr: float, weight_decay: float, momentum: float = 0.0, optimizer: str = "sgd",
           schedule: str | None = None, epochs: int = 100, seed: int = 0, config_id: str = "c0",
           scale: str = "fake") -> dict:
    """A resolved configuration as the trainer writes it (the field names of the lead's decisions)."""
    return {
        "model": "convnet_si", "width": 8, "data": "synthetic", "subset": None, "epochs": int(epochs),
        "batch_size": 128, "optimizer": optimizer, "lr": float(lr), "momentum": float(momentum),
        "nesterov": False, "weight_decay": float(weight_decay),
        "schedule": schedule or ("elr" if group == "elr" else "constant"),
        "elr_power": 1, "elr_norm": "all", "elr_per_layer": False, "elr_every": "epoch",
        "seed": int(seed), "device": "cpu", "checkpoint_every": 10,
        "labels": {"group": group, "config_id": config_id, "scale": scale},
        "env": {"elr": "0.1.0", "torch": "fake", "cuda": None, "git": None},
    }


def write_run(root, name: str, *, group: str = "elr", lr: float = 0.1, weight_decay: float = 5e-4,
              momentum: float = 0.0, optimizer: str = "sgd", schedule: str | None = None, epochs: int = 100,
              steps_per_epoch: int = 100, series: dict | None = None, diverged_epoch: int | None = None,
              finished: bool = True, seed: int = 0, noise: float = 0.0) -> Path:
    """One run directory at root/name; returns its path.

    series: metric name -> array of length `epochs` (or a list of dicts for "lr"), overriding defaults.
    Give at most one of "elr" and "si_norm"; the other follows from elr = lr / si_norm².
    diverged_epoch: the run stops there with train_loss null; summary says diverged, final acc null.
    noise: relative Gaussian noise (seeded) on the default accuracy and loss curves.
    """
    series = dict(series or {})
    if "elr" in series and "si_norm" in series:
        raise ValueError("give elr or si_norm, not both: one follows from the other")
    rng = np.random.default_rng(seed)
    e = np.arange(1, epochs + 1, dtype=np.float64)
    jitter = lambda: 1.0 + noise * rng.standard_normal(epochs)  # noqa: E731
    lr_vals = series.pop("lr", np.full(epochs, lr))
    lr_num = np.array([np.mean(list(v.values())) if isinstance(v, dict) else v for v in lr_vals], dtype=float)
    if "elr" in series:
        elr = np.asarray(series.pop("elr"), dtype=float)
        si = np.sqrt(lr_num / elr)                          # elr = lr / si_norm² (issue 2)
    else:
        si = np.asarray(series.pop("si_norm", np.full(epochs, 10.0)), dtype=float)
        elr = lr_num / si ** 2                              # elr = lr / si_norm² (issue 2)
    eff_g = np.asarray(series.pop("effective_grad_norm", np.ones(epochs)), dtype=float)
    default_angle = math.sqrt(2 * lr * weight_decay / (1 + momentum)) if weight_decay > 0 else 1e-3
    per_step = np.asarray(series.pop("angular_update_per_step", np.full(epochs, default_angle)), dtype=float)
    cols = {
        "train_loss": 2.3 * np.exp(-e / 10) * jitter() + 0.01,
        "train_acc": np.clip((1 - 0.9 * np.exp(-e / 10)) * jitter(), 0, 1),
        "test_loss": 2.3 * np.exp(-e / 10) * jitter() + 0.5,
        "test_acc": np.clip((0.8 - 0.7 * np.exp(-e / 10)) * jitter(), 0, 1),
    }
    for k in list(series):
        if k not in cols:
            raise ValueError(f"unknown or derived metric {k!r}; give one of lr, elr, si_norm, "
                             f"effective_grad_norm, angular_update_per_step, {', '.join(cols)}")
        cols[k] = np.asarray(series.pop(k), dtype=float)
    for k, v in {"lr": lr_num, "elr": elr, "si": si, **cols}.items():
        if len(v) != epochs:
            raise ValueError(f"{k}: {len(v)} values for {epochs} epochs")

    path = Path(root) / name
    path.mkdir(parents=True, exist_ok=True)
    runs.write_json(path / runs.CONFIG, config(group=group, lr=lr, weight_decay=weight_decay, momentum=momentum,
                                               optimizer=optimizer, schedule=schedule, epochs=epochs, seed=seed,
                                               config_id=name))
    last = epochs if diverged_epoch is None else diverged_epoch
    records = []
    for i in range(last):
        half = float(si[i]) / math.sqrt(2.0)
        rec = {
            "epoch": i + 1, "step": (i + 1) * steps_per_epoch,
            "lr": lr_vals[i] if isinstance(lr_vals[i], dict) else float(lr_num[i]),
            "weight_decay": weight_decay,
            "train_loss": float(cols["train_loss"][i]), "train_acc": float(cols["train_acc"][i]),
            "test_loss": float(cols["test_loss"][i]), "test_acc": float(cols["test_acc"][i]),
            "weight_norm": 1.1 * float(si[i]), "si_norm": float(si[i]),
            "si_norm_by_layer": {"conv1": half, "conv2": half},
            "elr": float(elr[i]), "elr_by_layer": {"conv1": float(lr_num[i]) / half ** 2,
                                                  "conv2": float(lr_num[i]) / half ** 2},
            "grad_norm": float(eff_g[i] / si[i]), "effective_grad_norm": float(eff_g[i]),
            "angular_update": float(per_step[i]) * steps_per_epoch,
            "angular_update_per_step": float(per_step[i]), "wall_time": 0.5 * (i + 1),
        }
        if diverged_epoch is not None and i + 1 == diverged_epoch:
            rec["train_loss"] = math.nan                   # stored as null, as the trainer does
        records.append(rec)
    runs.write_metrics(path, records)
    div = diverged_epoch is not None
    if finished or div:                                    # an interrupted run has no summary yet
        acc = np.array([r["test_acc"] for r in records] or [np.nan])
        best = int(np.nanargmax(acc)) if np.isfinite(acc).any() else None
        runs.write_json(path / runs.SUMMARY, {
            "final_test_acc": None if div else float(acc[-1]),
            "best_test_acc": None if best is None else float(acc[best]),
            "best_epoch": None if best is None else best + 1,
            "final_train_loss": None if div else records[-1]["train_loss"],
            "epochs": epochs, "epochs_done": last, "steps": last * steps_per_epoch,
            "finished": not div, "diverged": div, "diverged_epoch": diverged_epoch, "wall_time": 0.5 * last,
        })
    return path


# ---------------------------------------------------------------------------------------------- planted signals

def sawtooth_elr(epochs: int, *, low: float, high: float, period: int, start: int = 0, seed: int = 0,
                 noise: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """Lobacheva et al. 2021 periodic regime: log ELR rises linearly from `low` to `high` over a period
    and collapses; returns (elr, spike_indices) with the collapse epochs as spikes."""
    rng = np.random.default_rng(seed)
    t = np.arange(epochs)
    phase = np.where(t >= start, ((t - start) % period) / period, 0.0)
    elr = np.exp(np.log(low) + (np.log(high) - np.log(low)) * phase + noise * rng.standard_normal(epochs))
    return elr, np.arange(start + period, epochs, period)


def loss_spikes(epochs: int, spikes, *, base: float = 0.01, height: float = 1.0, decay: float = 3.0,
                seed: int = 0, noise: float = 0.03) -> np.ndarray:
    """A train loss near `base` with a spike of `height` at each index in `spikes`, decaying over `decay`."""
    rng = np.random.default_rng(seed)
    t = np.arange(epochs, dtype=np.float64)
    loss = np.full(epochs, base)
    for s in spikes:
        loss = loss + np.where(t >= s, height * np.exp(-(t - s) / decay), 0.0)
    return loss * np.exp(noise * rng.standard_normal(epochs))


def acc_dips(epochs: int, dips, *, level: float = 0.8, depth: float = 0.15, recover: int = 5,
             seed: int = 0, noise: float = 0.003) -> np.ndarray:
    """Test accuracy at `level` (after a rise) with a dip of `depth` at each index in `dips`, regained
    linearly over `recover` epochs."""
    rng = np.random.default_rng(seed)
    t = np.arange(epochs, dtype=np.float64)
    acc = level - (level - 0.1) * np.exp(-(t + 1) / 5)
    for d in dips:
        acc = acc - np.where((t >= d) & (t < d + recover), depth * (1 - (t - d) / recover), 0.0)
    return acc + noise * rng.standard_normal(epochs)


# ---------------------------------------------------------------------------------------------- a study

ELR_GRID = [(lr0, wd) for lr0 in (1.0, 0.3, 0.1, 0.03) for wd in (1e-3, 1e-2)]


def equilibrium_elr(eta: float, wd: float, momentum: float = 0.0, g: float = 20.0) -> float:
    """Wan et al. 2021: ELR* = √(2ηλ/(1+μ)) / G, G the effective gradient norm (taken equal across runs)."""
    return math.sqrt(2 * eta * wd / (1 + momentum)) / g


def write_study(root, *, epochs: int = 200, steps_per_epoch: int = 100, seed: int = 0) -> list[Path]:
    """8 ELR + 8 baseline runs that behave as the theory says and show the seed's effects:
    every run relaxes to the equilibrium of Wan et al. 2021 (angular update √(2ηλ/(1+μ)),
    ELR* ∝ √(ηλ): H5 held, so H1 refuted); sawtooth (period 20) in the high-lr0 low-L2 ELR runs with
    accuracy dips at its spikes (H2, H4 held); ELR final accuracy ~0.85 vs baselines ~0.6, one baseline
    diverged (H3 held). One ELR run (lr0 0.03, L2 1e-3) is too short to equilibrate (tau = 83 epochs)."""
    paths = []
    e = np.arange(epochs)
    for i, (lr0, wd) in enumerate(ELR_GRID):
        rng = np.random.default_rng(seed + i)
        target = equilibrium_elr(lr0, wd) * math.exp(0.05 * rng.standard_normal())
        init = lr0 / 100.0
        # relaxation from the initial ELR to the equilibrium over ~20 epochs
        elr = np.exp(np.log(target) + (np.log(init) - np.log(target)) * np.exp(-e / 20.0))
        s = {"elr": elr * np.exp(0.01 * rng.standard_normal(epochs)),
             "test_acc": acc_dips(epochs, [], level=0.85 + 0.01 * rng.standard_normal(), seed=seed + i),
             "angular_update_per_step": np.full(epochs, math.sqrt(2 * lr0 * wd)      # Wan et al. 2021, μ = 0
                                                * math.exp(0.05 * rng.standard_normal()))}
        if lr0 >= 0.3 and wd == 1e-3:
            saw, spk = sawtooth_elr(epochs, low=target / 3, high=target * 3, period=20, start=40, seed=seed + i)
            s["elr"] = saw
            s["train_loss"] = loss_spikes(epochs, spk, seed=seed + i)
            s["test_acc"] = acc_dips(epochs, spk, level=0.85 + 0.01 * rng.standard_normal(), seed=seed + i)
        paths.append(write_run(root, f"elr-{i}", group="elr", lr=lr0, weight_decay=wd, epochs=epochs,
                               steps_per_epoch=steps_per_epoch, series=s, seed=seed + i))
    for j in range(8):
        rng = np.random.default_rng(seed + 100 + j)
        lr = float(10 ** rng.uniform(-1.5, 0))
        wd = float(10 ** rng.uniform(-3, -1.5))
        s = {"elr": np.full(epochs, equilibrium_elr(lr, wd) * math.exp(0.05 * rng.standard_normal())),
             "angular_update_per_step": np.full(epochs, math.sqrt(2 * lr * wd)        # Wan et al. 2021, μ = 0
                                                * math.exp(0.05 * rng.standard_normal())),
             "test_acc": acc_dips(epochs, [], level=0.6 + 0.05 * rng.standard_normal(), seed=seed + 100 + j)}
        paths.append(write_run(root, f"base-{j}", group="baseline", lr=lr, weight_decay=wd, epochs=epochs,
                               steps_per_epoch=steps_per_epoch, series=s, seed=seed + 100 + j,
                               diverged_epoch=epochs // 2 if j == 7 else None))
    return paths
