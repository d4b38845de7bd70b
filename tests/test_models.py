"""elr.training.models: the registry, the architectures, and the scale-invariant (SI) weights.

The SI maths (f(c*w) = f(w), grad(c*w) = grad(w)/c, <grad, w> = 0) is checked numerically in float64,
train mode, with every BN's eps set to 1e-30 so that the invariance is exact to rounding; the expected
SI sets are stated from each architecture's definition, independently of the detector under test.
Runtime: about 7 s on a shared 2-core CPU box (python -m pytest tests/test_models.py).
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.modules.batchnorm import _BatchNorm

from elr.training.models import (MODELS, BasicBlock, ConvNetSI, PreActBlockSI, PreActResNet18SI, ResNet18, build_model,
                        scale_invariant_params)

# c in [1e-2, 1e2], log-uniform so both decades are exercised
SCALES = st.floats(min_value=-2.0, max_value=2.0).map(lambda e: 10.0 ** e)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # these models are tiny: on a shared 2-core box, intra-op threads only spin against each other
    # (measured: the file took 69 s with torch's default threads under load 4, 7 s with one)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _fresh_cases():
    # _case's cache lives for one test only: every test that reads a model builds it, so mutation testing
    # (bench/mutation.sh) links the test to the constructors, and a worker forked after an earlier test run
    # builds its own (possibly mutated) model instead of reusing the parent's
    _case.cache_clear()


def _exact_bn_float64(model: nn.Module) -> nn.Module:
    """A float64, train-mode copy with eps = 1e-30 in every BN (torch refuses 0): scale invariance then
    holds to ~eps / var, far below float64 rounding."""
    model = copy.deepcopy(model).double().train()
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.eps = 1e-30
    return model


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(x)
    return out, F.cross_entropy(out, y)


@functools.lru_cache(maxsize=None)
def _case(name: str, width: int):
    """(model, x, y, output, {si name: grad}) at the unscaled weights, built once per model."""
    torch.manual_seed(0)
    model = _exact_bn_float64(build_model(name, width=width))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64, generator=gen)
    y = torch.tensor([0, 3, 7, 9])
    si = scale_invariant_params(model)
    out, loss = _loss(model, x, y)
    grads = dict(zip(si, torch.autograd.grad(loss, list(si.values()))))
    return model, x, y, out.detach(), grads


def _scaled_forward(model, x, y, name: str, c: float):
    """Output and the gradient of weight `name` with that weight multiplied by c (restored afterwards)."""
    param = dict(model.named_parameters())[name]
    original = param.detach().clone()
    try:
        with torch.no_grad():
            param.mul_(c)
        out, loss = _loss(model, x, y)
        (grad,) = torch.autograd.grad(loss, [param])
        return out.detach(), grad, param.detach().clone()
    finally:
        with torch.no_grad():
            param.copy_(original)


def _output_with(model, x, scales: dict[str, float]) -> torch.Tensor:
    """Output (no grad) with each named parameter multiplied by its scale, restored afterwards."""
    params = dict(model.named_parameters())
    saved = {n: params[n].detach().clone() for n in scales}
    try:
        with torch.no_grad():
            for n, c in scales.items():
                params[n].mul_(c)
            return model(x)
    finally:
        with torch.no_grad():
            for n, value in saved.items():
                params[n].copy_(value)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# ---------------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------------

DEFAULT_WIDTH = {"convnet_si": 32, "resnet18": 64, "resnet18_si": 64, "tv_resnet18": 64}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_maps_a_cifar_batch_to_ten_logits(name):
    assert set(MODELS) == set(DEFAULT_WIDTH)
    torch.manual_seed(0)
    model = build_model(name)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    last = model.fc if name == "tv_resnet18" else model.linear
    assert last.in_features == 8 * DEFAULT_WIDTH[name]  # channels c, 2c, 4c, 8c at the default width


@pytest.mark.parametrize("name", ["convnet_si", "resnet18", "resnet18_si"])
def test_width_and_classes_are_honoured(name):
    model = build_model(name, width=8, num_classes=7)
    assert model.linear.in_features == 64
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_resnet18_is_the_standard_cifar_resnet18():
    model = build_model("resnet18")
    assert 11.1e6 <= sum(p.numel() for p in model.parameters()) <= 11.2e6
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)  # CIFAR stem
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert all(m.affine for m in model.modules() if isinstance(m, _BatchNorm))
    assert model.linear.bias is not None


def test_unknown_model_is_refused_with_the_accepted_names():
    with pytest.raises(ValueError) as err:
        build_model("resnet50")
    accepted = "convnet_si, resnet18, resnet18_si, tv_resnet18"
    assert str(err.value) == f"unknown model 'resnet50'; accepted: {accepted}"


@pytest.mark.parametrize("name,width", [("tv_resnet18", 32), ("convnet_si", 0), ("resnet18", -4),
                                        ("resnet18_si", 2.5), ("convnet_si", True)])
def test_bad_width_is_refused(name, width):
    with pytest.raises(ValueError, match="width"):
        build_model(name, width=width)


def test_tv_resnet18_accepts_its_own_width():
    assert build_model("tv_resnet18", width=64).fc.out_features == 10


def test_bad_size_messages_name_the_argument_and_the_smallest_size_is_accepted():
    for kwargs, what in (({"width": 0}, "width"), ({"num_classes": 0}, "num_classes")):
        with pytest.raises(ValueError) as err:
            build_model("convnet_si", **kwargs)
        assert str(err.value) == f"{what} must be a positive integer; got 0"
    with torch.no_grad():  # 1 is a positive integer: width 1 and a single class are legal, if useless
        assert build_model("convnet_si", width=1, num_classes=1)(torch.randn(2, 3, 32, 32)).shape == (2, 1)


@pytest.mark.parametrize("cls,name", [(ConvNetSI, "convnet_si"), (ResNet18, "resnet18"),
                                      (PreActResNet18SI, "resnet18_si")])
def test_class_defaults_are_the_registry_defaults(cls, name):
    # the classes are importable on their own: constructed without arguments they are the registered model
    model = cls()
    assert (model.linear.in_features, model.linear.out_features) == (8 * DEFAULT_WIDTH[name], 10)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_initialization_is_determined_by_the_global_seed(name):
    width = None if name == "tv_resnet18" else 8
    states = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        states.append(build_model(name, width=width).state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


@pytest.mark.parametrize("name", ["convnet_si", "resnet18_si"])
def test_si_models_have_a_frozen_bias_free_last_layer_at_norm_10(name):
    model = build_model(name, width=8)
    assert model.linear.bias is None
    assert not model.linear.weight.requires_grad
    assert model.linear.weight.norm().item() == pytest.approx(10.0, rel=1e-6)
    assert not any(m.affine for m in model.modules() if isinstance(m, _BatchNorm))


# ---------------------------------------------------------------------------------------------------
# the architectures' shapes, stage by stage (c = 8, a 32x32 input)
# ---------------------------------------------------------------------------------------------------

def _output_shapes(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """The output shape of each named submodule on input x."""
    shapes, modules = {}, dict(model.named_modules())
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape)))
             for n in names]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def test_convnet_si_layers_are_c_2c_4c_8c_pooled_to_one_pixel():
    model = build_model("convnet_si", width=8)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    shapes = _output_shapes(model, convs + ["features", "pool"], torch.randn(2, 3, 32, 32))
    # no pool after the first conv, a 2x2 pool after each of the others (in the next conv's input)
    assert [shapes[n] for n in convs] == [(2, 8, 32, 32), (2, 16, 32, 32), (2, 32, 16, 16), (2, 64, 8, 8)]
    assert shapes["features"] == (2, 64, 4, 4) and shapes["pool"] == (2, 64, 1, 1)
    assert all(m.kernel_size == (3, 3) and m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))


STAGES = {"conv1": (8, 32), "layer1": (8, 32), "layer2": (16, 16), "layer3": (32, 8), "layer4": (64, 4)}


@pytest.mark.parametrize("name", ["resnet18", "resnet18_si"])
def test_resnet_stages_halve_the_resolution_and_double_the_width(name):
    model = build_model(name, width=8)
    shapes = _output_shapes(model, list(STAGES), torch.randn(2, 3, 32, 32))
    assert shapes == {n: (2, ch, px, px) for n, (ch, px) in STAGES.items()}
    # every block, not only each stage's output: the first block of a stage strides, the second does not
    blocks = [n for n, m in model.named_modules() if isinstance(m, (BasicBlock, PreActBlockSI))]
    assert len(blocks) == 8
    shapes = _output_shapes(model, blocks, torch.randn(2, 3, 32, 32))
    for n in blocks:
        ch, px = STAGES[n.split(".")[0]]
        assert shapes[n] == (2, ch, px, px), n


def test_resnet18_si_convs_are_bias_free_and_its_shortcuts_bn_then_1x1():
    # nets/resnet_si.py: no conv has a bias (a bias written into the residual stream is not SI), and the
    # projection shortcut is BN(affine=False) -> conv1x1
    model = build_model("resnet18_si", width=8)
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    shortcuts = [m.shortcut for m in model.modules() if isinstance(m, PreActBlockSI) and m.shortcut is not None]
    assert len(shortcuts) == 3
    for sc in shortcuts:
        assert [type(m) for m in sc] == [nn.BatchNorm2d, nn.Conv2d] and sc[1].kernel_size == (1, 1)


@pytest.mark.parametrize("block", [BasicBlock, PreActBlockSI])
def test_a_block_projects_the_shortcut_when_either_the_width_or_the_stride_changes(block):
    x = torch.randn(2, 4, 8, 8)
    cases = [((4, 4), (2, 4, 8, 8), False), ((4, 8, 1), (2, 8, 8, 8), True), ((4, 4, 2), (2, 4, 4, 4), True)]
    for args, shape, projects in cases:  # (4, 4): the default stride is 1, an identity shortcut
        b = block(*args)
        has_projection = isinstance(b.shortcut, nn.Sequential) and len(b.shortcut) > 0
        assert has_projection == projects, args
        with torch.no_grad():
            assert b(x).shape == shape, args


@pytest.mark.parametrize("args", [(4, 4), (4, 8, 2)])
def test_blocks_add_the_shortcut_as_their_definitions_state(args):
    # each block's forward against its docstring's formula, composed here from the block's own submodules
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8)
    b = BasicBlock(*args)
    sc = b.shortcut(x) if len(b.shortcut) else x
    expected = F.relu(b.bn2(b.conv2(F.relu(b.bn1(b.conv1(x))))) + sc)
    p = PreActBlockSI(*args)
    h = F.relu(p.bn1(x))
    expected_si = p.conv2(F.relu(p.bn2(p.conv1(h)))) + (x if p.shortcut is None else p.shortcut(h))
    with torch.no_grad():
        torch.testing.assert_close(b(x), expected)
        torch.testing.assert_close(p(x), expected_si)


# ---------------------------------------------------------------------------------------------------
# the SI set matches each architecture's definition (stated here without the detector)
# ---------------------------------------------------------------------------------------------------

def _conv_weights(model: nn.Module) -> set[str]:
    return {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_convnet_si_set_is_its_four_conv_weights():
    model = build_model("convnet_si", width=8)
    expected = _conv_weights(model)
    assert len(expected) == 4
    assert set(scale_invariant_params(model)) == expected  # the frozen last linear is excluded


@pytest.mark.parametrize("name,width", [("resnet18", 8), ("tv_resnet18", None)])
def test_post_activation_resnet_set_is_every_conv_weight(name, width):
    # every conv (stem, both block convs, projection shortcuts) is followed directly by a BN
    model = build_model(name, width=width)
    expected = _conv_weights(model)
    assert len(expected) == 1 + 16 + 3
    assert set(scale_invariant_params(model)) == expected


def test_resnet18_si_set_is_the_first_conv_of_every_preact_block():
    # definition: only a block's conv1 feeds straight into a BN (bn2); the stem, the conv2's and the
    # shortcut convs feed the residual add
    model = build_model("resnet18_si", width=8)
    expected = {f"{n}.conv1.weight" for n, m in model.named_modules() if isinstance(m, PreActBlockSI)}
    assert len(expected) == 8 and len(_conv_weights(model)) == 20
    found = scale_invariant_params(model)
    assert set(found) == expected
    names = [n for n, _ in model.named_parameters()]
    assert list(found) == [n for n in names if n in expected]  # named_parameters() order
    assert all(found[n] is dict(model.named_parameters())[n] for n in found)


# ---------------------------------------------------------------------------------------------------
# the SI property itself: Hypothesis over c in [1e-2, 1e2] and the layer
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,width,examples", [("convnet_si", 8, 25), ("resnet18", 8, 12),
                                                 ("resnet18_si", 8, 8)])
def test_each_si_weight_is_scale_invariant(name, width, examples):
    model, x, y, out0, grads0 = _case(name, width)
    assert grads0, "the model reports no SI weight"

    @settings(max_examples=examples)
    @given(c=SCALES, layer=st.sampled_from(sorted(grads0)))
    def check(c, layer):
        out, grad, w = _scaled_forward(model, x, y, layer, c)
        g0 = grads0[layer]
        assert g0.norm() > 0  # the loss depends on this layer: the checks below are not vacuous
        # f(c w) = f(w)  (derived: BN(c z) = BN(z) as eps -> 0, z linear in w)
        assert (out - out0).abs().max() <= 1e-10 * out0.abs().max()
        # grad L(c w) = grad L(w) / c  (van Laarhoven 2017, arXiv 1706.05350: derived from f(c w) = f(w))
        assert _rel(c * grad, g0) <= 1e-8
        # <grad L(w), w> = 0  (Euler's theorem for a degree-0 homogeneous function)
        assert abs(torch.dot(grad.flatten(), w.flatten())) <= 1e-10 * grad.norm() * w.norm()

    check()


@pytest.mark.parametrize("name", ["convnet_si", "resnet18_si"])
@given(c=SCALES)
@settings(max_examples=5)
def test_si_models_are_fully_scale_invariant(name, c):
    # Lobacheva et al. 2021: with the last layer frozen, scaling every trainable weight at once is a no-op
    model, x, _, out0, _ = _case(name, 8)
    out = _output_with(model, x, {n: c for n, p in model.named_parameters() if p.requires_grad})
    assert (out - out0).abs().max() <= 1e-10 * out0.abs().max()


def _residual_streams(model: nn.Module) -> list[list[str]]:
    """The conv weights that write into each stage's residual stream of resnet18_si."""
    streams = []
    for k in range(1, 5):
        entry = "conv1.weight" if k == 1 else f"layer{k}.0.shortcut.1.weight"
        streams.append([entry, f"layer{k}.0.conv2.weight", f"layer{k}.1.conv2.weight"])
    return streams


def test_resnet18_si_stream_convs_are_si_only_as_a_group():
    # why the detector leaves them out: each alone changes the output, each stream jointly does not
    model, x, _, out0, _ = _case("resnet18_si", 8)
    streams = _residual_streams(model)
    assert len({n for s in streams for n in s}) == 12
    assert {n for s in streams for n in s} | set(scale_invariant_params(model)) == _conv_weights(model)
    for stream in streams:
        assert _rel(_output_with(model, x, {stream[0]: 3.0}), out0) > 1e-3
        assert _rel(_output_with(model, x, {stream[1]: 3.0}), out0) > 1e-3
        assert _rel(_output_with(model, x, {n: 3.0 for n in stream}), out0) <= 1e-12


# ---------------------------------------------------------------------------------------------------
# the detector on hand-made structures
# ---------------------------------------------------------------------------------------------------

class _Probe(nn.Module):
    """One case per rule: SI conv, biased conv, conv feeding BN and an add, frozen conv, conv shared
    between a BN path and a plain path, weight also read directly, bias-free Linear into BatchNorm1d."""

    def __init__(self):
        super().__init__()
        conv = functools.partial(nn.Conv2d, 3, 4, 3, padding=1)
        self.si, self.bn_si = conv(bias=False), nn.BatchNorm2d(4)
        self.biased, self.bn_biased = conv(bias=True), nn.BatchNorm2d(4)
        self.forked, self.bn_forked = conv(bias=False), nn.BatchNorm2d(4)
        self.frozen, self.bn_frozen = conv(bias=False).requires_grad_(False), nn.BatchNorm2d(4)
        self.shared, self.bn_shared = conv(bias=False), nn.BatchNorm2d(4)
        self.read, self.bn_read = conv(bias=False), nn.BatchNorm2d(4)
        self.lin, self.bn_lin = nn.Linear(4, 4, bias=False), nn.BatchNorm1d(4)

    def forward(self, x):
        forked = self.forked(x)
        h = (self.bn_si(self.si(x)) + self.bn_biased(self.biased(x)) + self.bn_forked(forked) + forked
             + self.bn_frozen(self.frozen(x)) + self.bn_shared(self.shared(x)) + self.shared(x)
             + self.bn_read(self.read(x)) * self.read.weight.mean())
        return self.bn_lin(self.lin(h.mean((2, 3))))


def test_detector_follows_the_rule_on_hand_made_structures():
    found = scale_invariant_params(_Probe())
    assert list(found) == ["si.weight", "lin.weight"]


def test_detector_agrees_with_the_definition_on_the_probe():
    # checked numerically: what is detected is SI; the trainable weights left out for feeding something
    # besides BN are not. (biased.weight is left out by the bias clause alone: train-mode BN cancels a
    # per-channel bias, so it is numerically SI, which is checked too, to pin down what the rule means.)
    torch.manual_seed(0)
    model = _exact_bn_float64(_Probe())
    x = torch.randn(8, 3, 6, 6, dtype=torch.float64)
    out0 = model(x).detach()
    found = set(scale_invariant_params(model))
    assert found == {"si.weight", "lin.weight"}
    for name in ["si.weight", "lin.weight", "biased.weight", "forked.weight", "shared.weight", "read.weight"]:
        change = _rel(_output_with(model, x, {name: 3.0}), out0)
        assert (change <= 1e-12) == (name in found or name == "biased.weight"), (name, change)


def test_untraceable_model_gives_a_clear_error():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    with pytest.raises(TypeError, match="Branchy.*torch.fx"):
        scale_invariant_params(Branchy())


def test_a_conv_whose_output_is_unused_is_not_reported():
    # "every user of its output is a BatchNorm" must not hold vacuously: a dead conv feeds no BN
    class Dead(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)
            self.dead = nn.Conv2d(3, 4, 3, bias=False)

        def forward(self, x):
            self.dead(x)
            return self.bn(self.conv(x))

    assert list(scale_invariant_params(Dead())) == ["conv.weight"]


def test_a_weight_shared_with_a_module_of_another_kind_is_not_reported():
    # the same Parameter in a bias-free conv feeding BN and in a biased conv feeding the output
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.si, self.bn = nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)
            self.tied, self.bn2 = nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)
            self.plain = nn.Conv2d(3, 4, 3, bias=True)
            self.plain.weight = self.tied.weight

        def forward(self, x):
            return self.bn(self.si(x)) + self.bn2(self.tied(x)) + self.plain(x)

    assert list(scale_invariant_params(Tied())) == ["si.weight"]
