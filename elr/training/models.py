"""The models, a registry by name, and the structural detector of scale-invariant weights.

    MODELS["convnet_si"]   Lobacheva et al. 2021's 4-layer fully scale-invariant ConvNet (width c = 32)
    MODELS["resnet18_si"]  their fully scale-invariant pre-activation ResNet-18 (width 64)
    MODELS["resnet18"]     the standard CIFAR ResNet-18 with affine BatchNorm (11,173,962 parameters)
    MODELS["tv_resnet18"]  torchvision's ResNet-18 (ImageNet stem), 10 classes

    model = build_model("convnet_si", width=32)      # torch.manual_seed(...) first: init is seeded
    si = scale_invariant_params(model)               # {name: Parameter}, found from the graph

A weight w is scale-invariant (SI) when f(c*w) = f(w) for every c > 0 (in train mode, up to BN's eps).
The SI set drives the effective learning rate lr / ||w_SI||^2 (van Laarhoven 2017, arXiv 1706.05350),
so it is read off the traced module graph, never off a list of parameter names.

Sources: Lobacheva, Kodryan, Chirkova, Malinin, Vetrov, "On the periodic behavior of neural network
training with batch normalization and weight decay", NeurIPS 2021, arXiv 2106.15739; their code
github.com/tipt0p/periodic_behavior_bn_wd (nets/convnet_si.py, nets/resnet_si.py, train.py, README.md).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

# Lobacheva et al. 2021, code README: "initscale = 10 (norm of the last layer weight matrix)", frozen
# with "fix_noninvlr = 0.0", so the loss depends on the SI weights only through their directions.
LAST_LAYER_NORM = 10.0


def _freeze_at_norm(linear: nn.Linear, norm: float = LAST_LAYER_NORM) -> None:
    """Rescale a bias-free linear layer to Frobenius norm `norm` and freeze it (requires_grad=False)."""
    with torch.no_grad():
        # tipt0p/periodic_behavior_bn_wd nets/resnet_si.py: W <- alpha * W / ||W||_F, alpha = 10
        linear.weight.mul_(norm / linear.weight.norm())
    linear.weight.requires_grad_(False)


# ---------------------------------------------------------------------------------------------------
# convnet_si
# ---------------------------------------------------------------------------------------------------

class ConvNetSI(nn.Module):
    """4 x [conv3x3 (no bias) -> BN(affine=False) -> ReLU], channels c, 2c, 4c, 8c, max-pool 2 after
    convs 2-4, max-pool 4, then a frozen bias-free linear layer at norm 10.

    tipt0p/periodic_behavior_bn_wd nets/convnet_si.py (ConvNetDepth, max_depth=3). Their last layer has a
    bias, frozen at its random init by noninvlr=0; here it has none (a constant offset of the logits
    plays no part in scale invariance), as docs/science.md states the model.
    """

    def __init__(self, width: int = 32, num_classes: int = 10):
        super().__init__()
        c = width
        channels = [3, c, 2 * c, 4 * c, 8 * c]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [
                # no bias: BN removes it anyway, and a bias-free conv is what makes the weight SI
                nn.Conv2d(channels[i], channels[i + 1], 3, padding=1, bias=False),
                nn.BatchNorm2d(channels[i + 1], affine=False),  # no affine: the whole net is SI (their code)
                nn.ReLU(),
            ]
            if i > 0:  # nets/convnet_si.py: "no max pooling at end of first layer"
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.MaxPool2d(4)  # 32 -> 4 after three pools of 2, then 4 -> 1
        self.linear = nn.Linear(8 * c, num_classes, bias=False)
        _freeze_at_norm(self.linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(self.pool(self.features(x)), 1))


# ---------------------------------------------------------------------------------------------------
# resnet18: the standard CIFAR ResNet-18 (He et al. 2016, arXiv 1512.03385; kuangliu/pytorch-cifar)
# ---------------------------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut (identity, or 1x1 conv + BN when the shape changes),
    then ReLU. Every conv feeds a BN, so every conv weight is SI; the BN affine parameters are not."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:  # He et al. 2016, option B: projection shortcut
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18: 3x3 stride-1 stem, no max-pool, BasicBlocks [2, 2, 2, 2] at widths
    c, 2c, 4c, 8c, global average pool, Linear(8c, num_classes) with bias."""

    def __init__(self, width: int = 64, num_classes: int = 10):
        super().__init__()
        c = width
        self.conv1 = nn.Conv2d(3, c, 3, stride=1, padding=1, bias=False)  # CIFAR stem: 32x32 inputs
        self.bn1 = nn.BatchNorm2d(c)
        stages, in_planes = [], c
        for planes, stride in [(c, 1), (2 * c, 2), (4 * c, 2), (8 * c, 2)]:
            stages.append(nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # = kuangliu's avg_pool2d(4) on 32x32 inputs
        self.linear = nn.Linear(8 * c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(self.avgpool(out), 1))


# ---------------------------------------------------------------------------------------------------
# resnet18_si: tipt0p/periodic_behavior_bn_wd nets/resnet_si.py (PreActResNet, ResNet18SI)
# ---------------------------------------------------------------------------------------------------

class PreActBlockSI(nn.Module):
    """Pre-activation block (He et al. 2016, arXiv 1603.05027) with affine-free BN:

        h = relu(bn1(x));  out = conv2(relu(bn2(conv1(h)))) + shortcut

    shortcut = x, or bn_sc -> conv1x1 applied to h when the shape changes (nets/resnet_si.py: the extra
    BN "in the shortcut before downsampling", Li & Arora 2020, arXiv 1910.07454).

    conv1 feeds bn2 only: SI on its own. conv2 and the shortcut conv write into the residual stream, which
    is normalized only later (the next stage's bn1, or the final BN), so each is SI only jointly with the
    other weights writing into the same stream."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes, affine=False)  # nets/resnet_si.py: affine=False throughout
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, affine=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.BatchNorm2d(in_planes, affine=False),  # nets/resnet_si.py: extra BN in the shortcut
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(x))
        # nets/resnet_si.py: the projection reads the pre-activated h, the identity reads the raw x
        shortcut = x if self.shortcut is None else self.shortcut(h)
        return self.conv2(F.relu(self.bn2(self.conv1(h)))) + shortcut


class PreActResNet18SI(nn.Module):
    """Fully scale-invariant pre-activation ResNet-18 (Lobacheva et al. 2021): stem conv, blocks
    [2, 2, 2, 2] at widths c, 2c, 4c, 8c, a final affine-free BN and ReLU, global average pool, and a
    bias-free linear layer rescaled to norm 10 and frozen.

    Scaling ALL conv weights by c > 0 leaves the output unchanged (every residual stream is read only
    through a BN). Individually SI, by this module's definition (a weight feeding straight into BN):
    the 8 blocks' conv1 weights. The other 12 conv weights (stem, conv2's, shortcut convs) are SI only
    as groups, one group per residual stream: {stem, layer1.*.conv2}, {layer2.0.shortcut conv,
    layer2.*.conv2}, ... (cf. get_resnet_prebn_groups(3) in their training_utils.py)."""

    def __init__(self, width: int = 64, num_classes: int = 10):
        super().__init__()
        c = width
        self.conv1 = nn.Conv2d(3, c, 3, stride=1, padding=1, bias=False)
        stages, in_planes = [], c
        for planes, stride in [(c, 1), (2 * c, 2), (4 * c, 2), (8 * c, 2)]:
            blocks = [PreActBlockSI(in_planes, planes, stride), PreActBlockSI(planes, planes, 1)]
            stages.append(nn.Sequential(*blocks))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(8 * c, affine=False)  # nets/resnet_si.py: final BN makes layer4 SI
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # = their AvgPool2d(4) on 32x32 inputs
        self.linear = nn.Linear(8 * c, num_classes, bias=False)  # nets/resnet_si.py: linear_bias=False
        _freeze_at_norm(self.linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        out = F.relu(self.bn(out))
        return self.linear(torch.flatten(self.avgpool(out), 1))


# ---------------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------------

def _tv_resnet18(width: int | None, num_classes: int) -> nn.Module:
    import torchvision  # lazy: only this model needs it

    if width not in (None, 64):
        raise ValueError(f"model 'tv_resnet18' has a fixed width of 64; got --width {width}")
    return torchvision.models.resnet18(weights=None, num_classes=num_classes)


MODELS: dict[str, Callable[[int | None, int], nn.Module]] = {
    "convnet_si": lambda width, num_classes: ConvNetSI(32 if width is None else width, num_classes),
    "resnet18": lambda width, num_classes: ResNet18(64 if width is None else width, num_classes),
    "resnet18_si": lambda width, num_classes: PreActResNet18SI(64 if width is None else width, num_classes),
    "tv_resnet18": _tv_resnet18,
}


def build_model(name: str, *, width: int | None = None, num_classes: int = 10) -> nn.Module:
    """Build a registered model; width None means the model's default (convnet_si 32, resnets 64).
    Parameters are drawn from torch's global RNG: seed it first for a reproducible initialization."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; accepted: {', '.join(sorted(MODELS))}")
    for what, value in (("width", width), ("num_classes", num_classes)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{what} must be a positive integer; got {value!r}")
    return MODELS[name](width, num_classes)


# ---------------------------------------------------------------------------------------------------
# the scale-invariant weights, from the module structure
# ---------------------------------------------------------------------------------------------------

_LINEAR_MAPS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def scale_invariant_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """The individually scale-invariant weights of `model`, {name: Parameter} in named_parameters() order.

    Rule (read off the graph traced by torch.fx): the weight of a Conv{1,2,3}d or Linear module is SI when
      - the module has no bias,
      - the weight is trainable (requires_grad), and
      - at every call of the module, every user of its output is a BatchNorm module
        (the output feeds straight into BN, and into nothing else).
    Why: y = conv(x; c*w) = c*y without a bias, and train-mode BN(c*y) = BN(y) (exact up to BN's eps),
    so the loss does not depend on ||w|| (derived; van Laarhoven 2017, arXiv 1706.05350).
    A weight also used elsewhere (read directly, or shared with a module of another kind) is excluded.

    A sufficient condition, not a necessary one. Not reported: weights SI only jointly with others (a
    pre-activation ResNet's convs writing into the residual stream), or through a positively homogeneous
    op (conv -> ReLU -> BN), and the weight of a biased layer feeding BN (train-mode BN cancels a
    per-channel bias, so that weight is SI too, but the rule counts bias-free layers only).
    Trace before wrapping or compiling the model.
    """
    try:
        graph = torch.fx.Tracer().trace(model)
    except Exception as err:  # fx raises many types; the caller needs one clear message
        raise TypeError(f"cannot find the scale-invariant weights of {type(model).__name__}: "
                        f"torch.fx could not trace it ({err})") from err

    def is_bn(node: torch.fx.Node) -> bool:
        return node.op == "call_module" and isinstance(model.get_submodule(node.target), _BatchNorm)

    qualified: set[int] = set()     # id(parameter) of weights seen feeding only BN
    disqualified: set[int] = set()  # id(parameter) of anything used any other way
    for node in graph.nodes:
        if node.op == "call_module":
            module = model.get_submodule(node.target)
            if isinstance(module, _LINEAR_MAPS) and module.bias is None:
                feeds_bn_only = len(node.users) > 0 and all(is_bn(user) for user in node.users)
                (qualified if feeds_bn_only else disqualified).add(id(module.weight))
            else:
                disqualified.update(id(p) for p in module.parameters())
        elif node.op == "get_attr":  # a parameter read directly, outside its module
            try:
                disqualified.add(id(model.get_parameter(node.target)))
            except AttributeError:  # a buffer or a constant, not a parameter
                pass
    return {name: p for name, p in model.named_parameters()
            if p.requires_grad and id(p) in qualified and id(p) not in disqualified}

