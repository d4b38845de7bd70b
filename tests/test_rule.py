"""The scale-invariance maths and the ELR rules, in float64 against independent computations."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from elr.config import RunConfig
from elr.training.models import build_model, scale_invariant_params
from elr.training.optim import build_optimizer, build_schedule, param_groups
from elr.training.rule import angle_between, effective_lr, global_norm, rule_lr, si_rate


def tiny_si_net(seed=0):
    """Linear(no bias) -> BN(no affine, eps 1e-30) -> ReLU -> frozen Linear: the first weight is exactly SI."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 9, bias=False), nn.BatchNorm1d(9, affine=False, eps=1e-30), nn.ReLU(),
                        nn.Linear(9, 3, bias=False)).double()
    net[3].weight.requires_grad_(False)
    return net


def batch(seed=1, n=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def sgd_step(net, x, y, lr, wd):
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=lr, weight_decay=wd)
    loss = nn.functional.cross_entropy(net(x), y)
    opt.zero_grad()
    loss.backward()
    g = net[0].weight.grad.clone()
    opt.step()
    return g


@settings(max_examples=40)
@given(lr=st.floats(1e-3, 2.0), wd=st.floats(0.0, 0.1), seed=st.integers(0, 50))
def test_sgd_norm_identity(lr, wd, seed):
    net = tiny_si_net(seed)
    x, y = batch(seed)
    w0 = net[0].weight.detach().numpy().copy()
    g = sgd_step(net, x, y, lr, wd).numpy()
    w1 = net[0].weight.detach().numpy()
    # docs/science.md: ||w_{t+1}||^2 = (1 - eta*lam)^2 ||w_t||^2 + eta^2 ||g_t||^2 (needs <g, w> = 0)
    expected = (1 - lr * wd) ** 2 * np.sum(w0**2) + lr**2 * np.sum(g**2)
    assert np.sum(w1**2) == pytest.approx(expected, rel=1e-10)


@settings(max_examples=20)
@given(lr=st.floats(1e-3, 5.0), seed=st.integers(0, 50))
def test_norm_never_decreases_without_weight_decay(lr, seed):
    net = tiny_si_net(seed)
    norms = [float(net[0].weight.detach().norm())]
    for t in range(5):
        x, y = batch(seed + t)
        sgd_step(net, x, y, lr, 0.0)
        norms.append(float(net[0].weight.detach().norm()))
    assert all(b >= a * (1 - 1e-12) for a, b in zip(norms, norms[1:]))


@settings(max_examples=20)
@given(c=st.floats(0.1, 10.0), lr=st.floats(1e-3, 0.5), wd=st.floats(1e-4, 0.05), seed=st.integers(0, 20))
def test_trajectory_equivalence(c, lr, wd, seed):
    """docs/science.md (van Laarhoven 2017): (w0, eta, lam) and (c w0, c^2 eta, lam/c^2) give the same function."""
    a, b = tiny_si_net(seed), tiny_si_net(seed)
    with torch.no_grad():
        b[0].weight.mul_(c)
    for t in range(6):
        x, y = batch(100 + t)
        sgd_step(a, x, y, lr, wd)
        sgd_step(b, x, y, c**2 * lr, wd / c**2)
        with torch.no_grad():
            assert torch.allclose(a(x), b(x), rtol=1e-9, atol=1e-12)
            assert torch.allclose(b[0].weight, c * a[0].weight, rtol=1e-9, atol=1e-14)


def rule_setup(norm, per_layer, every, power, lr0=0.3):
    cfg = RunConfig(model="convnet_si", width=4, schedule="elr", lr=lr0, elr_power=power, elr_norm=norm,
                    elr_per_layer=per_layer, elr_every=every, weight_decay=1e-3)
    torch.manual_seed(0)
    model = build_model("resnet18", width=4)  # has non-SI trainable weights (BN affine, linear bias)
    si = scale_invariant_params(model)
    opt = build_optimizer(cfg, param_groups(model, si))
    return cfg, model, si, opt, build_schedule(cfg, opt, si)


@pytest.mark.parametrize("power", [1, 2, -1, -2])
@pytest.mark.parametrize("norm", ["all", "si"])
@pytest.mark.parametrize("per_layer", [False, True])
@pytest.mark.parametrize("every", ["epoch", "step"])
def test_elr_rule_applies_lr0_over_norm_power(power, norm, per_layer, every):
    cfg, model, si, opt, rule = rule_setup(norm, per_layer, every, power)
    with torch.no_grad():  # move the weights off their init so the norms are not special
        for p in model.parameters():
            p.mul_(1.7)
    rule.on_epoch_start(1)
    arrays = {n: p.detach().double().numpy() for n, p in model.named_parameters() if p.requires_grad}
    si_names = set(si)
    pool = si_names if norm == "si" else set(arrays)
    total = math.sqrt(sum(float(np.sum(arrays[n] ** 2)) for n in pool))
    for g in opt.param_groups:
        if per_layer and g["name"] in si_names:
            expected = cfg.lr / math.sqrt(float(np.sum(arrays[g["name"]] ** 2))) ** power
        else:
            expected = cfg.lr / total**power
        assert g["lr"] == pytest.approx(expected, rel=1e-5), g["name"]
    # after a step the per-step rule recomputes, the per-epoch rule keeps its rate
    before = [g["lr"] for g in opt.param_groups]
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.3)
    rule.on_step_end()
    after = [g["lr"] for g in opt.param_groups]
    if every == "step":
        assert after == pytest.approx([b / 1.3**power for b in before], rel=1e-5)
    else:
        assert after == before


def test_angle_between_matches_float64_arccos():
    g = torch.Generator().manual_seed(0)
    for eps in (1e-1, 1e-3, 1e-5):
        a = [torch.randn(30, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g, dtype=torch.float64)]
        b = [x + eps * torch.randn(x.shape, generator=g, dtype=torch.float64) for x in a]
        va, vb = np.concatenate([x.numpy().ravel() for x in a]), np.concatenate([x.numpy().ravel() for x in b])
        # independent: the angle from the cross-product magnitude via Lagrange's identity, in float64
        cross = math.sqrt(max(np.dot(va, va) * np.dot(vb, vb) - np.dot(va, vb) ** 2, 0.0))
        expected = math.atan2(cross, float(np.dot(va, vb)))
        assert float(angle_between(a, b)) == pytest.approx(expected, rel=1e-6)


def test_global_norm_and_effective_lr():
    ts = [torch.tensor([3.0, 4.0]), torch.tensor([[12.0]])]
    assert float(global_norm(ts)) == pytest.approx(13.0)
    assert effective_lr(0.1, 2.0) == pytest.approx(0.025)  # lr / ||w||^2, the one formula the trainer logs
    assert effective_lr(0.1, 0.0) is None


def test_effective_lr_is_lr_over_the_squared_si_norm_for_floats_and_device_tensors():
    """Against lr / sum of the squared entries, in float64 by numpy; the trainer's per-step sums pass 0-d
    tensors, its log floats: both must give the one formula."""
    g = torch.Generator().manual_seed(3)
    for lr in (0.3, 2e-4):
        ts = [torch.randn(5, 3, generator=g, dtype=torch.float64) * 4, torch.randn(7, generator=g, dtype=torch.float64)]
        expected = lr / sum(float(np.sum(t.numpy() ** 2)) for t in ts)
        assert effective_lr(lr, float(global_norm(ts))) == pytest.approx(expected, rel=1e-12)
        assert float(effective_lr(torch.tensor(lr, dtype=torch.float64), global_norm(ts))) == pytest.approx(expected, rel=1e-12)
    assert effective_lr(0.1, 0.0) is None and effective_lr(0.1, math.nan) is None


def test_si_rate_is_the_rate_that_shrinks_the_total_norm_as_the_layers_rates_do():
    """Independent definition: one weight-decay step w_l <- (1 - lr_l lam) w_l per layer changes ||w||^2 by
    -2 lam sum_l lr_l ||w_l||^2 + O(lam^2) (docs/science.md, the norm recursion); the one rate giving the same
    change is si_rate. Measured in float64 at lam = 1e-7, and unlike the plain mean of the rates."""
    rng = np.random.default_rng(0)
    layers = [rng.standard_normal(n) * s for n, s in ((40, 0.3), (9, 2.0), (25, 1.0))]
    rates = np.array([0.5, 0.02, 0.1])
    lam = 1e-7
    before = sum(float(w @ w) for w in layers)
    after = sum(float(((1 - r * lam) * w) @ ((1 - r * lam) * w)) for r, w in zip(rates, layers))
    one_rate = (before - after) / (2 * lam * before)
    sq = np.array([float(w @ w) for w in layers])
    assert float(si_rate(rates, sq)) == pytest.approx(one_rate, rel=1e-6)
    assert float(si_rate(torch.tensor(rates), torch.tensor(sq))) == pytest.approx(one_rate, rel=1e-6)
    assert abs(rates.mean() - one_rate) > 0.1 * one_rate        # the layers' norms differ enough to tell


def test_guards_at_the_edges_of_the_norm():
    """Norms below 1 are ordinary (a rule's rate and the ELR follow the formula there); a zero, infinite or nan
    norm is a diverged run, for which the rule gives nan rather than raising; no tensors, a 0-d zero norm."""
    assert rule_lr(0.3, 0.5, 1) == pytest.approx(0.6) and rule_lr(0.3, 0.5, -2) == pytest.approx(0.075)
    assert effective_lr(0.1, 0.5) == pytest.approx(0.4)
    assert all(math.isnan(rule_lr(0.3, x, 1)) for x in (0.0, math.inf, math.nan, -1.0))
    empty = global_norm([])
    assert empty.shape == () and float(empty) == 0.0


def test_sphere_rule_holds_lr_at_elr_rho0_squared_and_projects_back_to_rho0():
    """SphereRule directly (docs/science.md, Kodryan et al. 2022): rho0 is the initial total SI norm, every group's
    lr = elr * rho0^2, after each step the SI weights are rescaled jointly (not per tensor) back to total norm
    rho0 with their direction kept, and the checkpoint carries rho0. Checked in float64 by numpy."""
    from elr.training.rule import SphereRule
    g = torch.Generator().manual_seed(11)
    w1 = nn.Parameter(torch.randn(4, 3, generator=g, dtype=torch.float64) * 0.7)
    w2 = nn.Parameter(torch.randn(5, generator=g, dtype=torch.float64) * 2.0)
    rest = nn.Parameter(torch.randn(3, generator=g, dtype=torch.float64))     # a non-SI weight: never rescaled
    opt = torch.optim.SGD([{"params": [w1], "name": "a"}, {"params": [w2], "name": "b"},
                           {"params": [rest], "name": "rest"}], lr=1.0)
    rho0 = math.sqrt(float(np.sum(w1.detach().numpy() ** 2) + np.sum(w2.detach().numpy() ** 2)))
    rule = SphereRule(opt, elr=0.01, si={"a": w1, "b": w2})
    assert isinstance(rule.rho0, float) and rule.rho0 == pytest.approx(rho0, rel=1e-12)
    assert rule.state_dict() == {"rho0": pytest.approx(rho0, rel=1e-12)}
    rule.on_epoch_start(1)
    assert [grp["lr"] for grp in opt.param_groups] == pytest.approx([0.01 * rho0**2] * 3, rel=1e-12)
    # a step that scales the layers unequally and moves the rest: the projection restores the total norm only
    with torch.no_grad():
        w1.mul_(3.0)
        w2.mul_(0.5)
        rest.mul_(4.0)
    a1, a2, r = w1.detach().numpy().copy(), w2.detach().numpy().copy(), rest.detach().numpy().copy()
    rule.on_step_end()
    scale = rho0 / math.sqrt(float(np.sum(a1 ** 2) + np.sum(a2 ** 2)))
    np.testing.assert_allclose(w1.detach().numpy(), scale * a1, rtol=1e-12)
    np.testing.assert_allclose(w2.detach().numpy(), scale * a2, rtol=1e-12)
    np.testing.assert_array_equal(rest.detach().numpy(), r)
    rule.on_epoch_end(1, 0.5)                                                  # a no-op: rates and weights stay
    assert [grp["lr"] for grp in opt.param_groups] == pytest.approx([0.01 * rho0**2] * 3, rel=1e-12)
    # a resumed run takes rho0 from the checkpoint: the rate and the radius follow it
    rule.load_state_dict({"rho0": 2.0})
    assert rule.rho0 == 2.0 and rule.state_dict() == {"rho0": 2.0}
    rule.on_epoch_start(2)
    assert [grp["lr"] for grp in opt.param_groups] == pytest.approx([0.04] * 3, rel=1e-12)
    rule.on_step_end()
    total = math.sqrt(float(np.sum(w1.detach().numpy() ** 2) + np.sum(w2.detach().numpy() ** 2)))
    assert total == pytest.approx(2.0, rel=1e-12)
    with pytest.raises(ValueError, match="^schedule 'sphere' needs a model with scale-invariant weights$"):
        SphereRule(opt, elr=0.01, si={})
