"""The planted study: every arm the design has, written as real run directories, shared by the report's tests
(tests/test_report.py) and the claims' snapshot test (tests/test_claims.py).

8 ELR runs on a lr0 x λ grid, their 8 plain-SGD twins, 4 baselines, the periodic and the smooth detector
control, with epoch-0 records and the newer metrics (elr_mean, lr_si, effective_grad_norm_rms,
angular_update_rms). The SI norm follows the theory's own norm recursion (theory.evolve_norm), so ELR runs relax
to their fixed points (H1 refuted: the slopes are theory's 0.4 / 0.6) and the RMS angle is at √(2ηλ) (H5 held);
two ELR runs and the periodic control carry regular destabilisation episodes (detectors.inject_episodes) with
test-accuracy dips at them (H2, H4 held); the ELR arm is flat in lr0 while the SGD twins vary (H6 held) and beat
the baselines (H3 held).

VERDICTS (planted_verdicts.json) is the reviewed snapshot of `claims.evaluate_all` on this study (every field of
every verdict), which tests/test_claims.py compares against: the words and details the report is built from.
"""

import json
import math
import os
from pathlib import Path

import numpy as np

import fakeruns
from elr.analysis import detectors, theory
from elr import runs as rundir
from elr.runs import write_json

VERDICTS = Path(__file__).with_name("planted_verdicts.json")

STEPS = 100            # steps per epoch
G = 5.0                # effective gradient norm, constant
RHO0 = 6.0             # SI norm at initialisation
N_TEST = 1000          # test split (config test_subset): accuracies are multiples of 1/1000
EPOCHS = 100
SAW = list(range(40, EPOCHS - 3, 12))    # episode epochs of the periodic runs: 40, 52, 64, 76, 88
ELR_GRID = [(lr0, wd) for wd in (5e-3, 5e-2) for lr0 in (0.03, 0.1, 0.3, 1.0)]
PERIODIC_CELLS = {(0.3, 5e-3), (1.0, 5e-3)}   # high lr0, low λ: the seed's sawtooth corner


def write_planted_run(root, name, *, group, lr, wd, power, episodes=(), dips=(), acc_level=0.85, labels=None,
                      optimizer="sgd", schedule=None, seed=0):
    """One run directory with an epoch-0 record and the newer metrics; `episodes`/`dips` are epochs."""
    rng = np.random.default_rng(seed)
    e = np.arange(1, EPOCHS + 1, dtype=float)
    if wd > 0 and optimizer == "sgd":
        rho = theory.evolve_norm(RHO0, lr, wd, G, power=power, steps_per_epoch=STEPS, epochs=EPOCHS)
    else:                                   # no weight decay (the norm only grows) or an adaptive optimizer
        rho = np.sqrt(RHO0 ** 2 + 0.02 * e)
    rate = lr / np.concatenate([[RHO0], rho[:-1]]) ** power      # the rule's rate, set at each epoch's start
    loss = 2.3 * np.exp(-e / 6) + 0.005 * np.exp(0.05 * rng.standard_normal(EPOCHS))
    elr = rate / rho ** 2
    if len(episodes):
        loss, rho, elr = detectors.inject_episodes(loss, rho, elr, np.asarray(episodes) - 1)
    acc = fakeruns.acc_dips(EPOCHS, np.asarray(dips, dtype=int) - 1, level=acc_level, seed=seed, noise=0.004)
    acc = np.round(np.clip(acc, 0, 1) * N_TEST) / N_TEST
    angle = (np.sqrt(2 * rate * wd) * np.exp(0.03 * rng.standard_normal(EPOCHS)) if wd > 0
             else np.full(EPOCHS, 1e-3))
    cfg = fakeruns.config(group=group, lr=lr, weight_decay=wd, optimizer=optimizer,
                          schedule=schedule or ("elr" if power else "constant"), epochs=EPOCHS, seed=seed,
                          config_id=name)
    cfg.update(test_subset=N_TEST, elr_norm="si")
    cfg["labels"].update(labels or {})
    path = Path(root) / name
    path.mkdir(parents=True)
    write_json(path / rundir.CONFIG, cfg)
    eta0 = lr / RHO0 ** power
    records = [{"epoch": 0, "step": 0, "lr": eta0, "lr_si": eta0, "weight_decay": wd, "weight_norm": RHO0,
                "si_norm": RHO0, "elr": eta0 / RHO0 ** 2, "elr_mean": eta0 / RHO0 ** 2, "train_loss": None,
                "test_acc": 0.1}]
    for i in range(EPOCHS):
        records.append({"epoch": i + 1, "step": (i + 1) * STEPS, "lr": rate[i], "lr_si": rate[i], "weight_decay": wd,
                        "train_loss": loss[i], "test_acc": acc[i], "weight_norm": rho[i], "si_norm": rho[i],
                        "elr": elr[i], "elr_mean": elr[i], "effective_grad_norm": G, "effective_grad_norm_rms": G,
                        "angular_update_rms": angle[i]})
    rundir.write_metrics(path, records)
    write_json(path / rundir.SUMMARY, {"final_test_acc": acc[-1], "best_test_acc": acc.max(), "epochs": EPOCHS,
                                       "epochs_done": EPOCHS, "finished": True, "diverged": False})
    return path


def write_planted_study(root):
    for i, (lr0, wd) in enumerate(ELR_GRID):
        saw = SAW if (lr0, wd) in PERIODIC_CELLS else ()
        write_planted_run(root, f"elr-{i}", group="elr", lr=lr0, wd=wd, power=1, seed=i, episodes=saw, dips=saw,
                          acc_level=0.85 + 0.002 * i)
        # the twin starts at the ELR run's first rate and keeps it; its accuracy depends on lr0
        write_planted_run(root, f"sgd-{i}", group="sgd", lr=lr0 / RHO0, wd=wd, power=0, seed=10 + i,
                          acc_level=0.6 + 0.1 * (i % 4 == 2) + 0.05 * (i % 4 == 1), dips=[70] if i == 0 else (),
                          labels={"twin": f"elr-{i}", "lr0": lr0})
    for j, (opt, lr, wd) in enumerate([("adam", 1e-3, 1e-4), ("sgd", 0.05, 1e-3), ("rmsprop", 1e-4, 1e-3),
                                       ("adamw", 3e-4, 1e-2)]):
        write_planted_run(root, f"base-{j}", group="baseline", lr=lr, wd=wd, power=0, optimizer=opt,
                          schedule="cosine", seed=20 + j, acc_level=0.6 + 0.03 * j)
    write_planted_run(root, "ctl-periodic", group="control", lr=1.0, wd=5e-3, power=0, seed=30, episodes=SAW,
                      dips=SAW, labels={"control": "periodic"})
    write_planted_run(root, "ctl-smooth", group="control", lr=0.3, wd=0.0, power=0, seed=31,
                      labels={"control": "smooth"})


# ---------------------------------------------------------------------------------------------- snapshots
UPDATE = os.environ.get("ELR_UPDATE_SNAPSHOTS") == "1"


def jsonable(x):
    """x as JSON reads it back (tuples as lists, numpy scalars as floats): the form a snapshot compares."""
    return json.loads(json.dumps(x, default=float))


def same(got, want, where="") -> list[str]:
    """Where got and want differ: keys, lengths, strings and bools exactly, numbers to 1e-9 relative (a BLAS may
    round the last bits differently), NaN equal to NaN."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = [f"{where}: keys {sorted(set(got) ^ set(want))} only on one side"] if set(got) != set(want) else []
        return out + [d for k in sorted(set(got) & set(want)) for d in same(got[k], want[k], f"{where}.{k}")]
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{where}: {len(got)} items, snapshot {len(want)}"]
        return [d for i, (g, w) in enumerate(zip(got, want)) for d in same(g, w, f"{where}[{i}]")]
    numbers = (int, float)
    if isinstance(want, numbers) and isinstance(got, numbers) and not isinstance(want, bool) and not isinstance(got, bool):
        if math.isnan(want) and math.isnan(got):
            return []
        return [] if math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12) else [f"{where}: {got!r}, snapshot {want!r}"]
    return [] if got == want else [f"{where}: {got!r}, snapshot {want!r}"]


def check_or_update(path: Path, got) -> None:
    """Compare with the committed snapshot; with ELR_UPDATE_SNAPSHOTS=1, write it instead."""
    if UPDATE or not path.exists():
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        if not UPDATE:
            raise AssertionError(f"{path.name} was missing and is written now: review it, commit it, rerun")
        return
    diffs = same(got, json.loads(path.read_text()))
    assert not diffs, f"{len(diffs)} differences from {path.name} (ELR_UPDATE_SNAPSHOTS=1 rewrites it): " + \
        "; ".join(diffs[:12])
