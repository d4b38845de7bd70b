"""The trainer: every logged metric recomputed from saved weights, resume after SIGKILL, divergence."""

import io
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from elr import runs
from elr.config import ConfigError, RunConfig
from elr.training.data import batch_indices, load_data
from elr.training.models import build_model, scale_invariant_params
from elr.training.train import train

SMALL = dict(model="convnet_si", width=4, data="synthetic", subset=200)
# The float64 replays below compare float32 training with exact arithmetic step by step. Where a max-pool window's
# top two entries agree to float32 rounding, the gradient goes to either, and which one depends on the kernels'
# summation order, i.e. on the thread count: with OMP_NUM_THREADS=1 one such flip moved the gradient norm by
# 1.1e-4 and, amplified over 6 steps, the RMS angle by 1.7%. These tests therefore fix the thread count rather
# than take the machine's, so that `pytest tests/` gives the same answer on one core as on many.
REPLAY_THREADS = 2


def test_every_metric_recomputed_from_saved_weights(tmp_path):
    """One epoch = one full-batch SGD step, so each metric has a closed form in the saved weights."""
    lr, wd = 0.5, 1e-3
    cfg = RunConfig(**{**SMALL, "subset": 60}, epochs=1, batch_size=60, lr=lr, weight_decay=wd, seed=3,
                    threads=REPLAY_THREADS)
    train(cfg, tmp_path / "run", progress=False)
    (rec,) = runs.read_metrics(tmp_path / "run")
    data = load_data("synthetic", subset=60, seed=0)

    torch.manual_seed(3)
    m0 = build_model("convnet_si", width=4).double()
    m1 = build_model("convnet_si", width=4)
    m1.load_state_dict(torch.load(tmp_path / "run" / runs.CHECKPOINT, weights_only=False)["model"])
    m1 = m1.double()
    si0, si1 = scale_invariant_params(m0), scale_invariant_params(m1)
    names = list(si0)
    # train mode, the whole subset as the batch (BN statistics do not depend on the order)
    out0 = m0.train()(data.x_train.double())
    loss0 = F.cross_entropy(out0, data.y_train)
    grads = torch.autograd.grad(loss0, [si0[n] for n in names])
    assert rec["train_loss"] == pytest.approx(loss0.item(), rel=1e-4)
    assert rec["train_acc"] == pytest.approx((out0.argmax(1) == data.y_train).double().mean().item(), abs=1e-6)
    gnorm = math.sqrt(sum(float((g**2).sum()) for g in grads))
    assert rec["grad_norm"] == pytest.approx(gnorm, rel=1e-4)
    # the update itself: w1 = w0 - lr (g + wd w0)  (torch.optim.SGD)
    for n, g in zip(names, grads):
        assert torch.allclose(si1[n], si0[n] - lr * (g + wd * si0[n]), rtol=1e-4, atol=1e-6)

    with torch.no_grad():
        out1 = m1.eval()(data.x_test.double())
    assert rec["test_loss"] == pytest.approx(F.cross_entropy(out1, data.y_test).item(), rel=1e-4)
    assert rec["test_acc"] == pytest.approx((out1.argmax(1) == data.y_test).double().mean().item(), abs=1e-6)

    w1 = {n: si1[n].detach().numpy().ravel() for n in names}
    all1 = np.concatenate([p.detach().numpy().ravel() for p in m1.parameters() if p.requires_grad])
    si_norm = math.sqrt(sum(float(v @ v) for v in w1.values()))
    assert rec["weight_norm"] == pytest.approx(float(np.sqrt(all1 @ all1)), rel=1e-5)
    assert rec["si_norm"] == pytest.approx(si_norm, rel=1e-5)
    for n in names:
        assert rec["si_norm_by_layer"][n] == pytest.approx(float(np.linalg.norm(w1[n])), rel=1e-5)
        assert rec["elr_by_layer"][n] == pytest.approx(lr / float(w1[n] @ w1[n]), rel=1e-5)
    assert rec["lr"] == lr and rec["weight_decay"] == wd and rec["epoch"] == 1 and rec["step"] == 1
    assert rec["elr"] == pytest.approx(lr / si_norm**2, rel=1e-5)
    assert rec["effective_grad_norm"] == pytest.approx(gnorm * si_norm, rel=1e-4)
    v0 = np.concatenate([si0[n].detach().numpy().ravel() for n in names])
    v1 = np.concatenate(list(w1.values()))
    angle = math.acos(float(v0 @ v1) / math.sqrt(float(v0 @ v0) * float(v1 @ v1)))  # float64 arccos
    assert rec["angular_update"] == pytest.approx(angle, rel=1e-3)
    assert rec["angular_update_per_step"] == pytest.approx(angle, rel=1e-3)
    assert rec["wall_time"] > 0


@pytest.mark.parametrize("per_layer", [False, True])
def test_per_step_theory_metrics_and_epoch_zero_replayed_in_float64(tmp_path, per_layer):
    """Two epochs of three minibatches under the seed's rule recomputed after every step (so the rate changes
    within an epoch), replayed step by step in float64 from the same initial weights and batch order: the
    epoch-0 record, and each epoch's RMS angle, RMS effective gradient norm (gradient and norm at the same
    step), step-averaged ELR and mean gradient norm. Several steps per epoch: a sum not divided by the step
    count, a mean where an RMS is due, or an end-of-epoch norm where the step's is due all differ.
    per_layer: each SI layer at lr0 / ||w_l|| (the rest at lr0 / ||w_SI||), so the SI rate and the ELRs are the
    ||w_l||^2-weighted mean of the layers' rates over ||w_SI||^2, which a plain mean of the rates is not."""
    lr0, wd, bs = 0.4, 5e-3, 20
    cfg = RunConfig(**{**SMALL, "subset": 60}, epochs=2, batch_size=bs, lr=lr0, weight_decay=wd, seed=5,
                    schedule="elr", elr_power=1, elr_norm="si" if per_layer else "all", elr_per_layer=per_layer,
                    elr_every="step", threads=REPLAY_THREADS)
    train(cfg, tmp_path / "run", progress=False)
    init, recs = runs.read_initial(tmp_path / "run"), runs.read_metrics(tmp_path / "run")
    data = load_data("synthetic", subset=60, seed=0)
    x, y = data.x_train.double(), data.y_train

    torch.manual_seed(5)
    model = build_model("convnet_si", width=4).double()
    si = list(scale_invariant_params(model).values())
    params = [p for p in model.parameters() if p.requires_grad]
    norm = lambda ps: math.sqrt(sum(float((p.detach() ** 2).sum()) for p in ps))  # noqa: E731
    with torch.no_grad():
        out0 = model.eval()(data.x_test.double())
    rho0 = norm(si)

    def rates():
        """Each parameter's rate from the current weights, and the SI weights' one rate (the ||w_l||^2-weighted
        mean of the layers' rates: the rate whose weight decay shrinks ||w_SI||^2 as the layers' rates do)."""
        if not per_layer:
            lr = lr0 / norm(params)
            return [lr] * len(params), lr
        per = [lr0 / norm([p]) if any(p is q for q in si) else lr0 / norm(si) for p in params]
        return per, sum(lr0 / norm([p]) * norm([p]) ** 2 for p in si) / norm(si) ** 2

    assert init["epoch"] == 0 and init["step"] == 0 and init["train_loss"] is None and init["train_acc"] is None
    assert init["test_loss"] == pytest.approx(F.cross_entropy(out0, data.y_test).item(), rel=1e-4)
    n_test = len(data.y_test)                             # (within one answer: a float32 near-tie of two logits)
    assert init["test_acc"] == pytest.approx((out0.argmax(1) == data.y_test).double().mean().item(),
                                             abs=1 / n_test + 1e-9)
    assert init["si_norm"] == pytest.approx(rho0, rel=1e-6)
    assert init["lr_si"] == pytest.approx(rates()[1], rel=1e-6)
    assert init["elr"] == pytest.approx(rates()[1] / rho0**2, rel=1e-6)
    assert init["elr_mean"] == init["elr"] and init["wall_time"] == 0.0   # before any step: the one rate, no time

    gen = torch.Generator().manual_seed(5)
    for rec in recs:
        angles, geff, elrs, grads, losses, accs = [], [], [], [], [], []
        for idx in batch_indices(len(y), bs, gen, "cpu"):
            per, lr_si = rates()                          # the rule, recomputed from the current weights
            out = model.train()(x[idx])
            loss = F.cross_entropy(out, y[idx])
            losses.append(loss.item())
            accs.append((out.argmax(1) == y[idx]).double().mean().item())
            gs = torch.autograd.grad(loss, params)
            g_si = math.sqrt(sum(float((g**2).sum()) for p, g in zip(params, gs) if any(p is q for q in si)))
            before = torch.cat([p.detach().ravel() for p in si]).numpy().copy()
            rho = norm(si)
            with torch.no_grad():
                for p, g, lr in zip(params, gs, per):
                    p -= lr * (g + wd * p)
            after = torch.cat([p.detach().ravel() for p in si]).numpy()
            cos = float(before @ after) / (np.linalg.norm(before) * np.linalg.norm(after))
            angles.append(math.acos(min(1.0, cos)))
            geff.append(g_si * rho)
            elrs.append(lr_si / rho**2)                   # Lobacheva et al. 2021: ELR = lr / ||w_SI||^2
            grads.append(g_si)
        assert rec["angular_update_rms"] == pytest.approx(math.sqrt(np.mean(np.square(angles))), rel=2e-3)
        assert rec["angular_update_per_step"] == pytest.approx(np.mean(angles), rel=2e-3)
        assert rec["effective_grad_norm_rms"] == pytest.approx(math.sqrt(np.mean(np.square(geff))), rel=1e-3)
        assert rec["elr_mean"] == pytest.approx(np.mean(elrs), rel=1e-4)
        assert rec["grad_norm"] == pytest.approx(np.mean(grads), rel=1e-3)
        # the training loss and accuracy: the means over the epoch's steps, as each step's weights scored its batch
        assert rec["train_loss"] == pytest.approx(np.mean(losses), rel=1e-4)
        # (within one of the 60 answers: a float32 near-tie of two logits may pick the other class in float64)
        assert rec["train_acc"] == pytest.approx(np.mean(accs), abs=1 / 60 + 1e-9)
        assert rec["step"] == rec["epoch"] * len(y) // bs
        end_lr_si = rates()[1]                            # the rates in force after the epoch's last step
        assert rec["lr_si"] == pytest.approx(end_lr_si, rel=1e-4)
        assert rec["elr"] == pytest.approx(end_lr_si / norm(si) ** 2, rel=1e-4)
        if per_layer:                                     # the weighting matters: a plain mean is 50x the tolerance off
            assert abs(np.mean([rec["lr"][n] for n in rec["si_norm_by_layer"]]) - end_lr_si) > 5e-3 * end_lr_si
        else:
            assert rec["lr_si"] == rec["lr"]              # one global rate: the SI rate is that rate
    assert len({round(e, 12) for e in elrs}) == len(elrs) > 1  # the rate did change within the epoch


def test_van_laarhoven_rule_keeps_logged_elr_constant(tmp_path):
    """lr = lr0 ||w||^2 (p = -2) holds eta/||w||^2 = lr0: the ELR the log records stays constant."""
    cfg = RunConfig(**SMALL, epochs=3, batch_size=50, lr=0.002, weight_decay=5e-3, schedule="elr",
                    elr_power=-2, elr_norm="si", elr_every="step")
    train(cfg, tmp_path / "r", progress=False)
    recs = runs.read_metrics(tmp_path / "r")
    assert runs.series(recs, "elr") == pytest.approx(np.full(3, 0.002), rel=1e-5)
    assert np.ptp(runs.series(recs, "si_norm")) > 0  # the norm moved; the ELR did not


def test_sphere_keeps_si_norm_at_rho0(tmp_path):
    cfg = RunConfig(**SMALL, epochs=3, batch_size=50, lr=0.01, schedule="sphere", seed=1)
    train(cfg, tmp_path / "s", progress=False)
    torch.manual_seed(1)
    rho0 = math.sqrt(sum(float((p.detach().double() ** 2).sum()) for p in
                         scale_invariant_params(build_model("convnet_si", width=4)).values()))
    recs = runs.read_metrics(tmp_path / "s")
    assert runs.series(recs, "si_norm") == pytest.approx(np.full(3, rho0), rel=1e-6)
    assert runs.series(recs, "elr") == pytest.approx(np.full(3, 0.01), rel=1e-5)


def test_divergence_is_recorded_not_raised(tmp_path):
    cfg = RunConfig(**SMALL, epochs=5, batch_size=50, lr=1e38, weight_decay=0.0)
    summary = train(cfg, tmp_path / "d", progress=False)
    assert summary["diverged"] and not summary["finished"]
    assert summary["diverged_epoch"] == summary["epochs_done"] < 5
    assert runs.read_summary(tmp_path / "d")["diverged"]
    assert len(runs.read_metrics(tmp_path / "d")) == summary["epochs_done"]


def test_finished_run_is_not_retrained_and_other_config_refused(tmp_path):
    cfg = RunConfig(**SMALL, epochs=2, batch_size=50)
    first = train(cfg, tmp_path / "f", progress=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "f").iterdir()}
    assert train(cfg, tmp_path / "f", progress=False) == first
    with pytest.raises(ConfigError, match="different run.*lr"):
        train(RunConfig(**SMALL, epochs=2, batch_size=50, lr=0.2), tmp_path / "f", progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "f").iterdir()} == before


def _cli(out, epochs):
    return [sys.executable, "-m", "elr", "train", "--model", "convnet_si", "--width", "8", "--data", "synthetic",
            "--subset", "600", "--batch-size", "32", "--epochs", str(epochs), "--lr", "0.2", "--weight-decay",
            "1e-3", "--schedule", "elr", "--checkpoint-every", "2", "--out", str(out)]


def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    reference = subprocess.Popen(_cli(full, 5), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    proc = subprocess.Popen(_cli(killed, 5), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(runs.read_metrics(killed)) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # past epoch 3, before the epoch-4 checkpoint: epoch 3 is redone
    proc.wait()
    assert not (killed / runs.SUMMARY).exists(), "the run finished before it could be killed"
    with open(killed / runs.METRICS, "ab") as f:
        f.write(b'{"epoch": 4, "tr')  # a torn line, as a kill during a write leaves it
    assert reference.wait() == 0, reference.stderr.read()
    done = subprocess.run(_cli(killed, 5), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = (killed / runs.METRICS).read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2, 3, 4, 5]  # no duplicate, no torn line
    assert_same_metrics(runs.read_metrics(full), runs.read_metrics(killed))
    assert_same_metrics([runs.read_initial(full)], [runs.read_initial(killed)])


def assert_same_metrics(a, b):
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        ra, rb = dict(ra), dict(rb)
        ra.pop("wall_time"), rb.pop("wall_time")
        assert ra == rb


def test_sigterm_checkpoints_at_the_epoch_end_and_resumes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out, reference = tmp_path / "term", tmp_path / "ref"
    ref = subprocess.Popen(_cli(reference, 5), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = subprocess.Popen(_cli(out, 5), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while len(runs.read_metrics(out)) < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 130, proc.stderr.read()
    assert "rerun the same command to resume" in proc.stderr.read()
    stopped = len(runs.read_metrics(out))
    ck = torch.load(out / runs.CHECKPOINT, weights_only=False)
    assert ck["epoch"] == stopped < 5 and not (out / runs.SUMMARY).exists()  # checkpointed off-schedule
    assert subprocess.run(_cli(out, 5), env=env, capture_output=True).returncode == 0
    assert ref.wait() == 0
    assert_same_metrics(runs.read_metrics(reference), runs.read_metrics(out))


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_per_layer_rule_logs_each_layers_relaxation_time(tmp_path, momentum):
    """A per-layer rule gives each SI layer its own rate, hence its own clock: tau_l = 1 / ((4 + p) eta_l lam)
    steps (docs/science.md, the rule's relaxation rate), in epochs; with momentum mu, eta_l / (1 - mu) in place
    of eta_l."""
    cfg = RunConfig(**SMALL, epochs=2, batch_size=50, lr=0.3, weight_decay=5e-3, schedule="elr", elr_power=1,
                    elr_norm="si", elr_per_layer=True, momentum=momentum)
    train(cfg, tmp_path / "pl", progress=False)
    for rec in runs.read_metrics(tmp_path / "pl"):
        spe = 200 // 50
        assert set(rec["tau_by_layer"]) == set(rec["si_norm_by_layer"])
        for name, tau in rec["tau_by_layer"].items():
            assert tau == pytest.approx((1 - momentum) / (5 * rec["lr"][name] * 5e-3) / spe, rel=1e-12)
        assert len({round(t, 9) for t in rec["tau_by_layer"].values()}) > 1   # the layers differ


def test_progress_shows_the_first_epoch_moving_and_ends_its_line_on_an_error(tmp_path, capsys):
    cfg = RunConfig(**SMALL, epochs=2, batch_size=50)
    train(cfg, tmp_path / "p", progress=True)
    err = capsys.readouterr().err
    lines = [ln.strip() for ln in err.split("\r")]
    first_step = next(i for i, ln in enumerate(lines) if ln.startswith("epoch 1/2  step 1/4"))
    first_epoch = next(i for i, ln in enumerate(lines) if ln.startswith("epoch 1/2  loss"))
    assert first_step < first_epoch and err.endswith("\n")
    with pytest.raises(Exception, match="does not exist"):
        train(RunConfig(**{**SMALL, "data": "npz:" + str(tmp_path / "none.npz")}, epochs=1), tmp_path / "q",
              progress=True)
    assert capsys.readouterr().err.endswith("...\n")   # the error that follows starts a line of its own


# ---------------------------------------------------------------------------------------------- speed paths
FAST_TOL = 1e-4   # relative, one float32 epoch from the same state: layout and kernels change rounding, not values


def _metrics(path):
    keep = ("train_loss", "test_loss", "si_norm", "weight_norm", "elr", "elr_mean", "angular_update_rms",
            "effective_grad_norm_rms", "test_acc")
    return [{k: r[k] for k in keep} for r in runs.read_metrics(path)]


def test_fast_path_matches_the_plain_eager_path(tmp_path):
    """channels_last + torch.compile against the contiguous eager path, epoch by epoch: each epoch starts both
    paths from the plain run's checkpoint (rounding differences are amplified from one epoch to the next by
    training itself, so a free-running comparison would measure the dynamics' chaos, not the arithmetic), and
    every metric agrees within FAST_TOL (measured: <= 3e-5 relative here). In a sharper regime (the rule at
    lr0 0.1, width 8) one epoch in four amplified the rounding to 2e-2 in the test loss within its four steps:
    the comparison needs a well-conditioned trajectory, not a looser tolerance."""
    from elr.training.train import build_state, run_epoch, setup_compile

    torch.set_num_threads(REPLAY_THREADS)           # conftest restores the count
    cfg = RunConfig(**{**SMALL, "width": 8}, epochs=4, batch_size=50, lr=0.05, weight_decay=5e-3, seed=1,
                    channels_last=False, compile="off")
    fast_cfg = RunConfig(**{**cfg.to_dict(), "channels_last": True, "compile": "on"})
    data = load_data("synthetic", subset=200)
    fast_data = load_data("synthetic", subset=200)
    fast_data.x_train = fast_data.x_train.contiguous(memory_format=torch.channels_last)
    fast_data.x_test = fast_data.x_test.contiguous(memory_format=torch.channels_last)
    plain, fast = build_state(cfg, 10, torch.device("cpu")), build_state(fast_cfg, 10, torch.device("cpu"))
    assert setup_compile(fast, fast_cfg, 16, torch.device("cpu"), notice=pytest.fail)
    assert fast.model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    worst = 0.0
    for _ in range(cfg.epochs):
        fast.restore(plain.checkpoint(0.0))
        b = run_epoch(fast, fast_data, fast_cfg)
        fast.restore(plain.checkpoint(0.0))      # the same global RNG state for the plain epoch
        a = run_epoch(plain, data, cfg)
        for k in ("train_loss", "test_loss", "si_norm", "weight_norm", "elr", "elr_mean", "angular_update_rms",
                  "effective_grad_norm_rms", "grad_norm"):
            assert b[k] == pytest.approx(a[k], rel=FAST_TOL, abs=1e-12), (a["epoch"], k, a[k], b[k])
            worst = max(worst, abs(b[k] - a[k]) / abs(a[k]))
        assert abs(a["test_acc"] - b["test_acc"]) <= 1 / 40 + 1e-12     # at most one test image flips
    assert fast.forward.active, "the fast path fell back to eager"


LONG_FIRST_LINE = "no backend here: " + "why " * 40


def test_compile_falls_back_to_eager_with_one_notice(tmp_path, capsys, monkeypatch):
    import torch._dynamo

    asked = []

    def broken(model, **kw):
        asked.append(kw)

        def call(x):
            raise torch._dynamo.exc.TorchDynamoException(LONG_FIRST_LINE + "\nsecond line of the report")
        return call

    base = dict(SMALL, epochs=2, batch_size=50, seed=2)
    train(RunConfig(**base, compile="off"), tmp_path / "eager", progress=False)
    assert runs.read_summary(tmp_path / "eager")["compiled"] is False
    monkeypatch.setattr(torch, "compile", broken)
    train(RunConfig(**base, compile="on"), tmp_path / "fallback", progress=False)
    err = capsys.readouterr().err
    assert err.count("torch.compile failed") == 1 and "Traceback" not in err
    assert f"elr: torch.compile failed (TorchDynamoException: {LONG_FIRST_LINE[:120]}); training eagerly " \
           "(--compile off skips the attempt)\n" in err           # the first 120 characters of the first line
    assert asked == [{"dynamic": False}]   # one graph per batch shape: automatic dynamic shapes recompile slower
    assert _metrics(tmp_path / "fallback") == _metrics(tmp_path / "eager")      # nothing ran in the failed compile
    assert runs.read_summary(tmp_path / "fallback")["compiled"] is False
    monkeypatch.setattr("elr.training.train.compile_unavailable", lambda device: "no C++ compiler on PATH")
    train(RunConfig(**{**base, "seed": 3}, compile="on"), tmp_path / "unavailable", progress=False)
    err = capsys.readouterr().err
    assert err.strip() == "elr: torch.compile unavailable: no C++ compiler on PATH; training eagerly (--compile off " \
                          "silences this)"


def test_summary_reports_the_first_epochs_compile_time(tmp_path, monkeypatch):
    """compile_seconds: the first epoch's excess over the second, in this session, plus epoch 0's evaluation's
    excess over a second evaluation (torch.compile makes the eval-mode graphs there, before any epoch is timed).
    On a clock that only a stand-in compile moves, its first eval-mode call costs 0.5 s, its first training-mode
    call 1.0049 s and the first step of epoch 2 0.25 s: 0.5 + 0.7549 s, reported to the hundredth: 1.25 (the
    training graph's excess alone, their sum, or another rounding is not)."""
    clock, calls, evals = [100.0], [], []
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])

    def stand_in(model, **kw):
        def call(x):
            if model.training:
                calls.append(x)
                clock[0] += {1: 1.0049, 5: 0.25}.get(len(calls), 0.0)  # 4 steps an epoch: call 5 opens epoch 2
            else:
                evals.append(x)
                clock[0] += 0.5 if len(evals) == 1 else 0.0
            return model(x)
        return call

    monkeypatch.setattr(torch, "compile", stand_in)
    base = dict(SMALL, batch_size=50, seed=4, compile="on")
    two = train(RunConfig(**base, epochs=2), tmp_path / "two", progress=False)
    assert (two["compiled"], two["compile_seconds"]) == (True, 1.25)
    # the timing evaluation changes nothing: the same metrics as a run whose compile is off
    eager = train(RunConfig(**{**base, "compile": "off"}, epochs=2), tmp_path / "two-eager", progress=False)
    assert _metrics(tmp_path / "two") == _metrics(tmp_path / "two-eager") and eager["compile_seconds"] is None
    assert runs.read_initial(tmp_path / "two") == runs.read_initial(tmp_path / "two-eager")
    calls.clear()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    one = train(RunConfig(**base, epochs=1), tmp_path / "one", progress=True)
    assert one["compiled"] is True and one["compile_seconds"] is None     # no second epoch to compare with
    assert "compiling the model (the first epoch takes longer) ..." in sys.stderr.getvalue()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    off = train(RunConfig(**{**base, "compile": "off"}, epochs=2), tmp_path / "off", progress=True)
    assert off["compiled"] is False and off["compile_seconds"] is None and "compiling" not in sys.stderr.getvalue()


def test_restore_sets_the_cuda_rng_states_only_where_cuda_is_there(monkeypatch):
    """A checkpoint written on a GPU carries its CUDA generators' states: restored where CUDA is available,
    ignored where it is not (a GPU run resumed on a CPU)."""
    from elr.training.train import build_state

    cfg = RunConfig(**SMALL, epochs=1)
    state = build_state(cfg, 10, torch.device("cpu"))
    ck = state.checkpoint(0.0)
    ck["rng"]["cuda"] = ["state of GPU 0"]
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    state.restore(ck)
    assert restored == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    state.restore(ck)
    assert restored == [["state of GPU 0"]]
    ck["rng"]["cuda"] = []                          # written on a CPU: nothing to restore on a GPU
    state.restore(ck)
    assert restored == [["state of GPU 0"]]


def test_a_checkpoint_carries_the_cuda_generators_only_where_cuda_is_there(monkeypatch):
    from elr.training.train import build_state

    state = build_state(RunConfig(**SMALL, epochs=1), 10, torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: ["state of GPU 0"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert state.checkpoint(0.0)["rng"]["cuda"] == ["state of GPU 0"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert state.checkpoint(0.0)["rng"]["cuda"] == []


def test_setup_compile_compiles_when_asked_or_when_it_pays_and_quiets_the_cpu_compiler_warning(monkeypatch):
    import logging

    import elr.training.train as T

    monkeypatch.setattr(T, "compile_unavailable", lambda device: None)   # as where a compiler is installed
    cpu, logger = torch.device("cpu"), logging.getLogger("torch.utils.cpp_extension")

    def compiles(mode, steps, device=cpu):
        cfg = RunConfig(**SMALL, epochs=1, compile=mode)
        state = T.build_state(cfg, 10, cpu)
        eager = state.forward
        on = T.setup_compile(state, cfg, steps, device, print)
        assert (state.forward is not eager) == on
        return on

    n = T.COMPILE_MIN_STEPS
    assert [compiles("auto", n - 1), compiles("auto", n), compiles("on", 1), compiles("off", 10 * n)] == \
        [False, True, True, False]
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    compiles("on", 1, torch.device("meta"))      # an accelerator: its compiler may warn
    assert logger.level == logging.NOTSET
    compiles("on", 1)
    assert logger.level == logging.ERROR


def test_a_run_builds_its_state_on_its_device_and_counts_its_steps_for_compile(tmp_path, monkeypatch):
    import elr.training.train as T

    built, asked = [], []
    real_build, real_setup = T.build_state, T.setup_compile
    monkeypatch.setattr(T, "build_state", lambda cfg, n, device: built.append(device) or real_build(cfg, n, device))
    monkeypatch.setattr(T, "setup_compile", lambda state, cfg, steps, *a: asked.append(steps) or
                        real_setup(state, cfg, steps, *a))
    T.train(RunConfig(**{**SMALL, "subset": 100}, batch_size=30, epochs=3), tmp_path / "r", progress=False)
    assert built == [torch.device("cpu")] and asked == [3 * 4]     # 100 images in batches of 30: 4 steps an epoch


def test_checkpoints_every_k_epochs_and_always_at_the_last_and_at_a_divergence(tmp_path, monkeypatch):
    import elr.training.train as T

    real, saved = T._save, []
    monkeypatch.setattr(T, "_save", lambda m, wall: saved.append(m.state.epoch) or real(m, wall))
    T.train(RunConfig(**SMALL, batch_size=50, epochs=5, checkpoint_every=2), tmp_path / "k", progress=False)
    assert saved == [2, 4, 5]
    saved.clear()
    summary = T.train(RunConfig(**SMALL, batch_size=50, epochs=5, lr=1e38, checkpoint_every=100), tmp_path / "nan",
                      progress=False)
    assert summary["diverged"] and saved == [summary["diverged_epoch"]]


def test_a_run_loads_the_data_its_config_names(tmp_path, monkeypatch):
    import elr.training.train as T

    real, asked = T.load_data, []
    monkeypatch.setattr(T, "load_data", lambda *a, **k: asked.append((a, k)) or real(*a, **k))
    T.train(RunConfig(**{**SMALL, "subset": 100}, test_subset=50, data_seed=3, epochs=1), tmp_path / "r",
            progress=False)
    assert asked == [(("synthetic",), dict(subset=100, test_subset=50, seed=3, device=torch.device("cpu")))]


def test_an_epochs_sums_live_on_the_datas_device():
    from elr.training.train import EpochPass, build_state

    cfg = RunConfig(**{**SMALL, "subset": 100}, batch_size=50, schedule="constant", epochs=1)
    epoch = EpochPass(build_state(cfg, 10, torch.device("meta")), load_data("synthetic", subset=100, device="meta"),
                      cfg)
    sums = (epoch.loss_sum, epoch.acc_sum, epoch.grad_sum, epoch.angle_sum, epoch.angle_sq_sum, epoch.geff_sq_sum,
            epoch.elr_sum, epoch.zero(), *epoch.batches, epoch.si_rates.weighted(torch.ones(len(epoch.si_params),
                                                                                            device="meta")))
    assert {t.device.type for t in sums} == {"meta"}


def test_the_step_averaged_elr_is_logged_whatever_the_norms_scale():
    """elr_mean is withheld only where the SI norm is not positive (no SI weights): a norm below 1 is a norm."""
    from elr.training.train import build_state, run_epoch

    cfg = RunConfig(**{**SMALL, "subset": 100}, batch_size=50, schedule="constant", lr=1e-6, epochs=1)
    state = build_state(cfg, 10, torch.device("cpu"))
    with torch.no_grad():
        for p in state.si.values():
            p.mul_(0.05)
    record = run_epoch(state, load_data("synthetic", subset=100), cfg)
    assert record["si_norm"] < 1 and record["elr_mean"] == pytest.approx(1e-6 / record["si_norm"] ** 2, rel=1e-3)
    assert record["lr_si"] == 1e-6 and record["elr"] == pytest.approx(1e-6 / record["si_norm"] ** 2, rel=1e-12)


def test_one_shared_rate_is_the_si_rate_exactly(tmp_path):
    """With one rate for every layer the SI rate is that rate, not the ||w_l||^2-weighted mean of copies of it,
    which rounds: for seed 1's initial SI norms, the weighted mean of 0.1s is 0.10000000000000002."""
    train(RunConfig(**SMALL, batch_size=50, schedule="constant", lr=0.1, seed=1, epochs=1), tmp_path / "r",
          progress=False)
    for r in [runs.read_initial(tmp_path / "r")] + runs.read_metrics(tmp_path / "r"):
        assert r["lr"] == r["lr_si"] == 0.1


def test_a_model_without_scale_invariant_weights_trains_and_logs_no_si_metrics(tmp_path, monkeypatch):
    """No registered model lacks SI weights, but the trainer does not assume them: with none, the SI norm is 0,
    the SI rate and ELRs are null (not 0, not a division by zero), and no angle or gradient is summed."""
    import elr.training.train as T

    monkeypatch.setattr(T, "scale_invariant_params", lambda model: {})
    T.train(RunConfig(**{**SMALL, "subset": 100}, batch_size=50, schedule="constant", epochs=2), tmp_path / "r",
            progress=False)
    init, last = runs.read_initial(tmp_path / "r"), runs.read_metrics(tmp_path / "r")[-1]
    for r in (init, last):
        assert (r["si_norm"], r["si_norm_by_layer"], r["lr_si"], r["elr"], r["elr_by_layer"], r["elr_mean"]) == \
            (0.0, {}, None, None, {}, None)
        assert r["weight_norm"] > 0 and r["lr"] == 0.1
    assert (last["grad_norm"], last["angular_update"], last["angular_update_rms"], last["effective_grad_norm"]) == \
        (0.0, 0.0, 0.0, 0.0)
    assert math.isfinite(last["train_loss"]) and last["step"] == 4


def test_a_stop_checkpoints_the_epoch_it_ends_with_that_epochs_wall_time(tmp_path, monkeypatch):
    """Asked to stop before an epoch ends, the epoch is checkpointed with its own logged wall time; asked while
    its line is being logged, by the stop path, with the time of that moment."""
    import elr.training.train as T

    cfg = RunConfig(**SMALL, batch_size=50, epochs=4, checkpoint_every=100)

    class Stop(T._StopRequest):
        current = None

        def __init__(self):
            super().__init__()
            Stop.current, self.requested = self, early

    monkeypatch.setattr(T, "_StopRequest", Stop)
    early = True
    summary = train(cfg, tmp_path / "early", progress=False)
    ck = torch.load(tmp_path / "early" / runs.CHECKPOINT, weights_only=False)
    assert (summary["epochs_done"], ck["epoch"]) == (1, 1)
    assert ck["wall_time"] == runs.read_metrics(tmp_path / "early")[-1]["wall_time"]

    early, real = False, runs.append_metrics

    def signal_while_logging(run_dir, record):
        real(run_dir, record)
        if record["epoch"] == 2:
            Stop.current.requested = True           # SIGTERM after epoch 2's line, before its checkpoint

    monkeypatch.setattr(runs, "append_metrics", signal_while_logging)
    summary = train(cfg, tmp_path / "late", progress=False)
    ck = torch.load(tmp_path / "late" / runs.CHECKPOINT, weights_only=False)
    logged = runs.read_metrics(tmp_path / "late")[-1]["wall_time"]
    assert (summary["epochs_done"], ck["epoch"]) == (2, 2) and logged <= ck["wall_time"] < logged + 60


def test_compile_unavailable_names_what_is_missing(monkeypatch):
    import shutil
    import sys
    import types

    import torch._dynamo

    from elr.training.train import compile_unavailable

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    found = []
    monkeypatch.setattr(shutil, "which", lambda name: found.append(name) and None)
    monkeypatch.delenv("CXX", raising=False)
    assert compile_unavailable(cpu) == "no C++ compiler on PATH (the CPU backend needs one)"
    assert found == ["g++", "c++", "clang++"]
    found.clear()
    monkeypatch.setenv("CXX", "my-cxx")
    compile_unavailable(cpu)
    assert found[0] == "my-cxx"                     # $CXX is the compiler inductor uses, when set
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name if name == "clang++" else None)
    assert compile_unavailable(cpu) is None         # any one of them will do
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "triton", types.ModuleType("triton"))
    assert compile_unavailable(cuda) is None        # a GPU compiles with Triton, not a C++ compiler
    monkeypatch.setitem(sys.modules, "triton", None)    # import triton raises ImportError
    assert compile_unavailable(cuda) == "Triton is not installed"
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    assert compile_unavailable(cpu).startswith("TorchDynamo does not support Python 3.")
    monkeypatch.setitem(sys.modules, "torch._dynamo", None)
    assert compile_unavailable(cpu) == "TorchDynamo cannot load (ModuleNotFoundError)"


def test_bf16_autocast_tracks_fp32_and_keeps_fp32_state(tmp_path):
    """bf16 rounds every product to an 8-bit mantissa (2^-8 = 0.4% relative): over 3 epochs the SI norm stays
    within 1% of the fp32 run's and the train loss within 15% (measured: 0.34% and 9.3%), while the weights,
    optimizer state and logged norms stay float32."""
    base = dict(SMALL, width=8, subset=400, epochs=3, batch_size=100, lr=0.05, weight_decay=5e-3, seed=1, compile="off")
    train(RunConfig(**base), tmp_path / "fp32", progress=False)
    train(RunConfig(**base, precision="bf16"), tmp_path / "bf16", progress=False)
    a, b = runs.read_metrics(tmp_path / "fp32"), runs.read_metrics(tmp_path / "bf16")
    for x, y in zip(a, b):
        assert y["si_norm"] == pytest.approx(x["si_norm"], rel=1e-2)
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=0.15)
    assert any(abs(y["train_loss"] - x["train_loss"]) > 1e-4 * x["train_loss"] for x, y in zip(a, b)), \
        "bf16 changed nothing: autocast is not on"
    assert runs.read_config(tmp_path / "bf16")["precision"] == "bf16"
    ck = torch.load(tmp_path / "bf16" / runs.CHECKPOINT, weights_only=False)
    assert all(t.dtype == torch.float32 for t in ck["model"].values() if t.is_floating_point())
    with pytest.raises(ConfigError, match="different run .*precision"):     # part of the run's identity
        train(RunConfig(**base), tmp_path / "bf16", progress=False)


def test_build_state_seeds_every_global_generator_from_the_runs_seed():
    """torch, numpy and random: whatever draws from them (an augmentation, a library) repeats with the seed."""
    import random

    from elr.training.train import build_state

    build_state(RunConfig(**SMALL, epochs=1, seed=7), 10, torch.device("cpu"))
    drawn = (torch.rand(1).item(), np.random.random(), random.random())
    build_state(RunConfig(**SMALL, epochs=1, seed=7), 10, torch.device("cpu"))
    assert (torch.rand(1).item(), np.random.random(), random.random()) == drawn
    assert drawn[1:] == (np.random.RandomState(7).random_sample(), random.Random(7).random())


def test_bf16_names_its_dtype_for_every_device(monkeypatch):
    """torch.autocast's default dtype is bfloat16 on a CPU but float16 on CUDA: the run asks for bfloat16 by name,
    so a GPU run is the same bf16 as a CPU one (checked here as the call a CUDA run makes, device aside)."""
    from elr.training.train import build_state

    state = build_state(RunConfig(**SMALL, epochs=1, precision="bf16"), 10, torch.device("cpu"))
    real, calls = torch.autocast, []
    monkeypatch.setattr(torch, "autocast", lambda device_type, **kw: calls.append((device_type, kw)) or
                        real(device_type, **kw))
    with state.autocast():
        pass
    assert calls == [("cpu", {"dtype": torch.bfloat16})]


# ---------------------------------------------------------------------------------------------- resume with state
def _stop_after(monkeypatch, k):
    """Make the next train() stop after epoch k as a SIGTERM does (checkpoint at the epoch end, summary
    "interrupted"): the signal is sent to this process once epoch k's record exists."""
    import elr.training.train as trainer

    real = trainer.run_epoch

    def run_epoch(state, data, cfg, on_step=None):
        record = real(state, data, cfg, on_step=on_step)
        if state.epoch == k:
            os.kill(os.getpid(), signal.SIGTERM)
        return record

    monkeypatch.setattr(trainer, "run_epoch", run_epoch)


def assert_resume_equals_uninterrupted(cfg, tmp_path, monkeypatch, k, data=None):
    """Train cfg straight through, and again interrupted after epoch k then resumed in a fresh train() call:
    every logged metric (epoch 0 included) and the final weights and optimizer state equal value for value."""
    full, broken = tmp_path / "full", tmp_path / "broken"
    train(cfg, full, progress=False)
    with monkeypatch.context() as m:
        _stop_after(m, k)
        first = train(cfg, broken, progress=False)
    assert first == {"interrupted": True, "epochs_done": k, "epochs": cfg.epochs}
    assert train(cfg, broken, progress=False)["finished"]
    assert_same_metrics(runs.read_metrics(full), runs.read_metrics(broken))
    assert_same_metrics([runs.read_initial(full)], [runs.read_initial(broken)])
    a, b = (torch.load(d / runs.CHECKPOINT, weights_only=False) for d in (full, broken))
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][n], b["model"][n]) for n in a["model"])
    flat = lambda ck: [(i, k_, v) for i, s in ck["optimizer"]["state"].items() for k_, v in s.items()]  # noqa: E731
    assert len(flat(a)) == len(flat(b))
    assert all(ia == ib and ka == kb and torch.equal(torch.as_tensor(va), torch.as_tensor(vb))
               for (ia, ka, va), (ib, kb, vb) in zip(flat(a), flat(b)))
    assert a["schedule"] == b["schedule"]
    return runs.read_metrics(full)


def test_resume_restores_momentum_and_the_cosine_schedule(tmp_path, monkeypatch):
    """Heavy-ball momentum buffers and the cosine schedule's position are state beyond the weights: a resume
    that rebuilt either from scratch would step differently from epoch k + 1 on."""
    cfg = RunConfig(**SMALL, epochs=4, batch_size=50, lr=0.1, momentum=0.9, weight_decay=5e-3, schedule="cosine",
                    seed=1)
    recs = assert_resume_equals_uninterrupted(cfg, tmp_path, monkeypatch, k=2)
    # the schedule is not constant over the resumed epochs (else a reset schedule could go unseen):
    # CosineAnnealingLR, lr_e = lr0 (1 + cos(pi (e - 1) / T)) / 2 (Loshchilov & Hutter 2017)
    assert runs.series(recs, "lr") == pytest.approx([0.1 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)],
                                                    rel=1e-12)


def test_resume_restores_adam_moments(tmp_path, monkeypatch):
    cfg = RunConfig(**SMALL, epochs=4, batch_size=50, optimizer="adam", lr=3e-3, weight_decay=1e-4, seed=2)
    assert_resume_equals_uninterrupted(cfg, tmp_path, monkeypatch, k=2)


def _wrong_label_data(path, n=200):
    """An .npz whose test split is the training images with every label shifted by one class: as the model
    learns the training labels, the train loss falls and the test loss rises."""
    from elr.training.data import synthetic_arrays

    x, y = (a[:n].copy() for a in synthetic_arrays()[:2])
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=(y + 1) % 10)
    return f"npz:{path}"


def plateau_lrs(losses, lr0, factor, patience, threshold=1e-4):
    """The rate in force at each epoch under reduce-on-plateau fed `losses` (one per epoch, after it), in
    float64 by hand: mode min, relative threshold, no cooldown (PyTorch's ReduceLROnPlateau defaults)."""
    lr, best, bad, out = lr0, math.inf, 0, []
    for loss in losses:
        out.append(lr)
        if loss < best * (1 - threshold):
            best, bad = loss, 0
        else:
            bad += 1
        if bad > patience:
            lr, bad = lr * factor, 0
    return out


def test_plateau_schedule_follows_the_test_loss_not_the_train_loss(tmp_path):
    """Train loss falling, test loss rising: the rate drops exactly where a by-hand plateau rule fed the
    logged test losses drops it, which is not where the train losses would."""
    cfg = RunConfig(**{**SMALL, "data": _wrong_label_data(tmp_path / "d.npz"), "subset": None}, epochs=6,
                    batch_size=50, lr=0.05, momentum=0.9, weight_decay=5e-3, schedule="plateau",
                    plateau_patience=1, gamma=0.5, seed=1)
    train(cfg, tmp_path / "p", progress=False)
    recs = runs.read_metrics(tmp_path / "p")
    by_test = plateau_lrs(runs.series(recs, "test_loss"), 0.05, 0.5, 1)
    by_train = plateau_lrs(runs.series(recs, "train_loss"), 0.05, 0.5, 1)
    assert by_test != by_train, "train and test loss do not disagree here: the test cannot tell them apart"
    assert runs.series(recs, "lr") == pytest.approx(by_test, rel=1e-12)


def test_resume_restores_the_plateau_schedules_count_of_bad_epochs(tmp_path, monkeypatch):
    """Interrupted after an epoch that did not improve the test loss: the resumed run must still count it, so
    that the next bad epoch drops the rate as in the uninterrupted run (a fresh scheduler would not)."""
    cfg = RunConfig(**{**SMALL, "data": _wrong_label_data(tmp_path / "d.npz"), "subset": None}, epochs=5,
                    batch_size=50, lr=0.05, momentum=0.9, weight_decay=5e-3, schedule="plateau",
                    plateau_patience=1, gamma=0.5, seed=1)
    recs = assert_resume_equals_uninterrupted(cfg, tmp_path, monkeypatch, k=2)
    test_loss = runs.series(recs, "test_loss")
    # the guard: epoch 2 did not improve on epoch 1, and the rate dropped for epoch 4 (after epoch 3, bad twice)
    assert test_loss[1] >= test_loss[0] * (1 - 1e-4)
    assert runs.series(recs, "lr") == pytest.approx(plateau_lrs(test_loss, 0.05, 0.5, 1), rel=1e-12)
    assert runs.series(recs, "lr")[3] < 0.05


@pytest.mark.parametrize("norm,power,seed", [("si", 1, 3), ("all", 1, 3), ("all", 2, 5)])
def test_initial_rule_rate_is_the_first_steps_rate_from_the_runs_own_initial_weights(norm, power, seed):
    """The plain-SGD twins of the study (H6) start at their ELR run's first rate: lr0 / ||w0||^p over the rule's
    norm set, from the weights that seed draws. resnet18 has trainable BN affines outside the SI set, so the
    two norm sets differ. Recomputed in float64 from the seeded model; the global RNG is left as it was."""
    from elr.training.train import build_state, initial_record, initial_rule_rate

    cfg = RunConfig(model="resnet18", width=2, data="synthetic", subset=20, test_subset=20, schedule="elr", lr=0.7,
                    elr_norm=norm, elr_power=power, seed=seed).validate()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    rate = initial_rule_rate(cfg)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(seed)
    model = build_model("resnet18", width=2)
    chosen = scale_invariant_params(model).values() if norm == "si" else model.parameters()
    rho = math.sqrt(sum(float((p.detach().double() ** 2).sum()) for p in chosen if p.requires_grad))
    assert rate == pytest.approx(0.7 / rho**power, rel=1e-6)
    data = load_data("synthetic", subset=20, test_subset=20, seed=0, device="cpu")
    state = build_state(cfg, data.num_classes, torch.device("cpu"))
    assert initial_record(state, data, cfg)["lr"] == rate        # the trainer's own rate at its first step


def test_summary_of_a_metrics_log():
    """summary.json from the log alone: the last record's values, the best finite test accuracy and the first
    epoch that reached it, and the divergence as the trainer saw it."""
    from elr.training.train import summarize

    def rec(epoch, acc, loss=None, step=0, wall=0.0):
        return {"epoch": epoch, "test_acc": acc, "train_loss": loss, "step": step, "wall_time": wall}

    log = [rec(0, 0.1), rec(1, 0.5, 2.0, 10, 3.0), rec(2, None, 1.9, 20, 6.0), rec(3, float("nan"), 1.8, 30, 9.0),
           rec(4, 0.5, 1.7, 40, 12.0), rec(5, 0.4, 1.5, 50, 12.5)]
    cfg = RunConfig(epochs=6)
    assert summarize(log, cfg, None) == {
        "final_test_acc": 0.4, "best_test_acc": 0.5, "best_epoch": 1, "final_train_loss": 1.5, "epochs": 6,
        "epochs_done": 5, "steps": 50, "finished": True, "diverged": False, "diverged_epoch": None, "wall_time": 12.5}
    diverged = summarize(log[:4], cfg, 3)
    assert (diverged["finished"], diverged["diverged"], diverged["diverged_epoch"]) == (False, True, 3)
    assert (diverged["final_test_acc"], diverged["epochs_done"], diverged["steps"]) == (log[3]["test_acc"], 3, 30)
    assert summarize([], cfg, None) == {
        "final_test_acc": None, "best_test_acc": None, "best_epoch": None, "final_train_loss": None, "epochs": 6,
        "epochs_done": 0, "steps": 0, "finished": True, "diverged": False, "diverged_epoch": None, "wall_time": None}
    nothing_finite = summarize([rec(0, float("nan")), rec(1, None)], cfg, 1)
    assert (nothing_finite["best_test_acc"], nothing_finite["best_epoch"]) == (None, None)


def test_build_state_honours_the_classes_layout_and_precision():
    from elr.training.train import build_state

    cfg = RunConfig(**SMALL, epochs=1, channels_last=True, precision="bf16")
    state = build_state(cfg, 7, torch.device("cpu"))
    assert state.model.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    assert state.model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert state.precision == "bf16"
    assert not build_state(RunConfig(**SMALL, epochs=1, channels_last=False), 7, torch.device("cpu")) \
        .model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    # the meta device stands in for an accelerator: a model left on the CPU is seen without a GPU
    assert {p.device.type for p in build_state(cfg, 7, torch.device("meta")).model.parameters()} == {"meta"}


def test_environment_records_what_made_the_run(monkeypatch, tmp_path):
    """config.json's "env": the versions, threads and commit a run was made with, and on a GPU its name and cuDNN."""
    import platform
    import subprocess

    import torchvision

    import elr
    from elr.training.train import environment

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(elr.__file__), capture_output=True,
                          text=True).stdout.strip() or None
    monkeypatch.chdir(tmp_path)                    # the commit of elr's checkout, wherever the run is started
    assert environment(torch.device("cpu")) == {
        "elr": elr.__version__, "python": platform.python_version(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "numpy": np.__version__, "cuda": torch.version.cuda,
        "platform": platform.platform(), "torchvision": torchvision.__version__, "git": head}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: f"NVIDIA H200 ({device})")
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91002)
    gpu = environment(torch.device("cuda", 1))      # the run's own GPU, not the current one
    assert (gpu["gpu"], gpu["cudnn"]) == ("NVIDIA H200 (cuda:1)", 91002)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(OSError("no git")))
    assert environment(torch.device("cpu"))["git"] is None      # no git on the machine: recorded as unknown

    def hung_git(*args, timeout=None, **kwargs):
        assert timeout is not None, "git hangs (a network filesystem, a lock): without a timeout, so would the run"
        raise subprocess.TimeoutExpired(args[0], timeout)

    monkeypatch.setattr(subprocess, "run", hung_git)
    assert environment(torch.device("cpu"))["git"] is None
