"""One run's configuration: a plain dataclass, validated at the edge with one-line errors."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A bad configuration value; the message is one line naming the problem and the accepted values."""


ELR_NORMS = ("all", "si")
ELR_EVERY = ("epoch", "step")
# lr = lr0 / ||w||^p. p = 1: the seed's rule. p = -2: lr = lr0 ||w||^2, which holds the SGD effective LR
# eta/||w||^2 at lr0 (van Laarhoven 2017). p = -1 holds lr/||w|| (Adam's angular step) at lr0. p = 2: lr0/||w||^2.
ELR_POWERS = (1, 2, -1, -2)
COMPILE = ("auto", "on", "off")
PRECISIONS = ("fp32", "bf16")


@dataclass
class RunConfig:
    # --- model and data
    model: str = "convnet_si"        # a name in elr.training.models.MODELS
    width: int | None = None         # base channel width; None = the model's default
    data: str = "synthetic"          # cifar10 | npz:PATH | synthetic
    subset: int | None = None        # class-balanced training subset size (test subset proportional)
    test_subset: int | None = None   # class-balanced test subset size; None = proportional to subset
    data_seed: int = 0               # seeds the subset draw: the same images for every run of a study
    # --- optimisation
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1                  # initial rate lr0; for schedule "sphere" the ELR (applied rate lr * rho0^2)
    momentum: float = 0.0            # SGD/RMSprop momentum (Adam/AdamW keep their betas 0.9, 0.999)
    nesterov: bool = False
    weight_decay: float = 0.0        # lambda: adds lambda*w to the gradient, i.e. an L2 term (lambda/2)||w||^2
    # --- schedule
    schedule: str = "constant"
    step_size: int = 30              # step: epochs between decays
    milestones: list[int] = field(default_factory=lambda: [50, 75])  # multistep: decay epochs
    gamma: float = 0.1               # step/multistep/exponential decay factor
    warmup_epochs: int = 5           # warmup: linear ramp length, then constant
    plateau_patience: int = 10       # plateau: epochs without test-loss improvement before decaying
    # --- the effective-LR rule (schedule "elr"): lr = lr0 / ||w||^p
    elr_power: int = 1               # p in {1, 2, -1, -2}: 1 = the seed's rule; -2 keeps eta/||w||^2 = lr0 (van Laarhoven)
    elr_norm: str = "all"            # ||w|| over all trainable weights (the seed) or the scale-invariant ones
    elr_per_layer: bool = False      # one rate per scale-invariant layer instead of one global rate
    elr_every: str = "epoch"         # recompute every epoch (the seed) or after every step
    # --- run
    seed: int = 0                    # model init and batch order
    device: str = "cpu"
    threads: int | None = None       # torch intra-op threads for this run; None = torch's default (all cores)
    # --- speed: how the arithmetic is laid out, never what it computes (float32 rounding aside; tests bound it)
    channels_last: bool = True       # NHWC activations and conv weights: ~1.5x on CPU (oneDNN) and CUDA (cuDNN)
    compile: str = "auto"            # torch.compile the model: on | off | auto (on for runs of >= 1000 steps)
    precision: str = "fp32"          # fp32 | bf16 (autocast for the forward and backward; fp32 weights, optimizer, norms)
    checkpoint_every: int = 1        # epochs between checkpoints (and always at the end / on interrupt)
    labels: dict = field(default_factory=dict)  # free-form study labels, e.g. {"group": "elr"}

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; accepted: {', '.join(sorted(known))}")
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | Path) -> "RunConfig":
        return cls.from_dict(load_mapping(path))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def identity(self) -> dict:
        """The fields that define the run: a run directory refuses a different identity."""
        d = self.to_dict()
        for k in ("device", "checkpoint_every", "threads", "channels_last", "compile"):  # where, how often and how
            # fast, not what, is trained (precision stays: bf16 changes what the run computes)
            d.pop(k)
        return d

    def check_types(self) -> "RunConfig":
        """Every field's type, before any value is used: a TOML `nesterov = "false"` is a non-empty string,
        which Python takes as true, and a `seed = true` an integer 1."""
        for name, kind in FIELD_TYPES.items():
            value = getattr(self, name)
            if not _is(value, kind):
                raise ConfigError(f"{name} must be {TYPE_NAMES[kind]}, got {value!r} ({type(value).__name__})")
        for name in ("seed", "data_seed"):
            if not 0 <= getattr(self, name) < 2**32:
                raise ConfigError(f"{name} must be an integer in 0..2**32-1 (numpy's seed range), "
                                  f"got {getattr(self, name)!r}")
        return self

    def validate(self) -> "RunConfig":
        from .training.models import MODELS  # lazy: the registries import torch and torchvision
        from .training.optim import OPTIMIZERS, SCHEDULES

        def one_of(name, value, accepted):
            if value not in accepted:
                raise ConfigError(f"unknown {name} {value!r}; accepted: {', '.join(accepted)}")

        def positive(name, value, integer=False):
            ok = isinstance(value, int) and not isinstance(value, bool) if integer else isinstance(value, (int, float))
            if not ok or not math.isfinite(value) or value <= 0:
                kind = "a positive integer" if integer else "a positive number"
                raise ConfigError(f"{name} must be {kind}, got {value!r}")

        def nonneg(name, value):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")

        self.check_types()
        one_of("model", self.model, sorted(MODELS))
        one_of("optimizer", self.optimizer, sorted(OPTIMIZERS))
        one_of("schedule", self.schedule, list(SCHEDULES))
        one_of("elr_norm", self.elr_norm, ELR_NORMS)
        one_of("elr_every", self.elr_every, ELR_EVERY)
        one_of("compile", self.compile, COMPILE)
        one_of("precision", self.precision, PRECISIONS)
        if not isinstance(self.channels_last, bool):
            raise ConfigError(f"channels_last must be true or false, got {self.channels_last!r}")
        if self.elr_power not in ELR_POWERS:
            raise ConfigError(f"elr_power must be one of 1, 2, -1, -2, got {self.elr_power!r}")
        positive("lr", self.lr)
        positive("epochs", self.epochs, integer=True)
        positive("checkpoint_every", self.checkpoint_every, integer=True)
        if not isinstance(self.batch_size, int) or self.batch_size < 2:
            raise ConfigError(f"batch_size must be an integer >= 2 (BatchNorm needs 2 samples), got {self.batch_size!r}")
        if self.width is not None:
            positive("width", self.width, integer=True)
        for name in ("subset", "test_subset", "threads"):
            if getattr(self, name) is not None:
                positive(name, getattr(self, name), integer=True)
        nonneg("weight_decay", self.weight_decay)
        if not isinstance(self.momentum, (int, float)) or not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.momentum and self.optimizer in ("adam", "adamw"):
            raise ConfigError(f"momentum applies to sgd and rmsprop; {self.optimizer} uses betas (0.9, 0.999): set momentum 0")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ConfigError("nesterov needs optimizer sgd with momentum > 0")
        positive("gamma", self.gamma)
        positive("step_size", self.step_size, integer=True)
        positive("plateau_patience", self.plateau_patience, integer=True)
        if not isinstance(self.warmup_epochs, int) or self.warmup_epochs < 0:
            raise ConfigError(f"warmup_epochs must be an integer >= 0, got {self.warmup_epochs!r}")
        if not all(isinstance(m, int) and m > 0 for m in self.milestones):
            raise ConfigError(f"milestones must be positive integers, got {self.milestones!r}")
        if not isinstance(self.labels, dict):
            raise ConfigError(f"labels must be a mapping, got {self.labels!r}")
        check_device(self.device)
        return self


FIELD_TYPES = {
    **dict.fromkeys(("model", "data", "optimizer", "schedule", "elr_norm", "elr_every", "device", "compile",
                     "precision"), "str"),
    **dict.fromkeys(("data_seed", "epochs", "batch_size", "step_size", "warmup_epochs", "plateau_patience",
                     "elr_power", "seed", "checkpoint_every"), "int"),
    **dict.fromkeys(("width", "subset", "test_subset", "threads"), "int?"),
    **dict.fromkeys(("lr", "momentum", "weight_decay", "gamma"), "float"),
    **dict.fromkeys(("nesterov", "elr_per_layer", "channels_last"), "bool"),
    "milestones": "ints", "labels": "dict",
}
TYPE_NAMES = {"str": "a string", "int": "an integer", "int?": "an integer or absent", "float": "a number",
              "bool": "true or false", "ints": "a list of integers", "dict": "a mapping"}


def _is(value, kind: str) -> bool:
    integer = isinstance(value, int) and not isinstance(value, bool)   # bool is an int subclass: true is not 1 here
    return {"str": isinstance(value, str), "int": integer, "int?": value is None or integer,
            "float": integer or isinstance(value, float), "bool": isinstance(value, bool),
            "ints": isinstance(value, list) and all(_is(v, "int") for v in value),
            "dict": isinstance(value, dict)}[kind]


def check_device(device: str) -> None:
    import torch

    if device == "cpu":
        return
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device} requested but CUDA is not available here; accepted: cpu")
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ConfigError(f"no CUDA device {device!r}; accepted: cuda, cuda:0..cuda:{torch.cuda.device_count() - 1}")
        return
    raise ConfigError(f"unknown device {device!r}; accepted: cpu, cuda, cuda:N")


def toml_loads(text: str) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10: the same parser, packaged
        import tomli as tomllib
    return tomllib.loads(text)


def load_mapping(path: str | Path) -> dict:
    """A JSON or TOML file holding one mapping."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        if path.suffix == ".toml":
            d = toml_loads(text)
        else:
            d = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"config file {path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {e}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"config file {path} must hold a mapping of config keys")
    return d
