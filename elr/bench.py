"""`python -m elr bench`: steady-state training throughput, measured once by a person, never by a test.

    python -m elr bench --quick                      # < 2 min on a 2-core CPU: convnet_si:8, a glance at resnet18
    python -m elr bench                              # convnet_si:8, convnet_si, resnet18; loop, eager, fast, packed
    python -m elr bench --device cuda --precisions fp32,bf16 --pack 1,4,16
    python -m elr bench --models convnet_si:8 --images 5120 --data npz:cifar10.npz   # real images

For each model it times whole training epochs over CIFAR-shaped normal noise (--data noise, the default: no data
set needed) or over class-balanced subsets of a real data set (--data cifar10 | npz:PATH; on a CPU real images
run at a different speed than noise, so a CPU goal is measured on them) in four modes:

    loop    a plain PyTorch loop: DataLoader(TensorDataset, shuffle=True), SGD, cross-entropy, fp32, contiguous
    eager   the trainer's own epoch (elr.training.train.run_epoch, evaluation included), contiguous, not compiled
    fast    the same with channels_last and torch.compile (the trainer's defaults for long runs)
    packed  K runs stepped together by elr.training.pack.run_packed_epoch (vmapped on CUDA, in turn on a CPU)

and reports images/s, model-epochs/s (one epoch of the 50,000-image study), the ratios to loop and eager, the
model FLOP utilisation, the compile time, and the wall time each study scale in experiments/design.toml would
take at the measured speed. Everything is printed and written to a JSON file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import heapq
import math
import os
import platform
import re
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import runs
from .config import PRECISIONS, ConfigError, RunConfig, check_device
from .training.data import SYNTHETIC_TEST, SYNTHETIC_TRAIN, Data, n_batches
from .training.models import MODELS, build_model
from .progress import duration

BATCH = 128                      # the design's batch (experiments/design.toml batch_size)
MODEL_EPOCH = 50_000             # one epoch of the full study: CIFAR-10's training split (Krizhevsky 2009)
NUM_CLASSES = 10
IMAGE = (3, 32, 32)              # CIFAR-10's image shape (Krizhevsky 2009)
MODES = ("loop", "eager", "fast", "packed")
NOISE = "noise"   # --data's default: generated normal noise and uniform labels, no data set needed
DATA_ACCEPTED = "noise, synthetic, cifar10, npz:PATH"
DEFAULT_MODELS = "convnet_si:8,convnet_si,resnet18"   # width 8: the cpu study's convnet_si (design.toml)
QUICK_MODELS = "convnet_si:8,resnet18"
DEFAULTS = {"images": 2560, "test_images": 1000, "warmup": 1, "repeats": 3, "pack": "1,4,16"}
QUICK = {"images": 1280, "test_images": 500, "warmup": 1, "repeats": 2, "pack": "1,4"}
# --quick: a model over this many training FLOPs per image (convnet_si:8 has 2.2e7, convnet_si 3.4e8, resnet18
# 3.3e9) gets loop and eager over QUICK_BIG_IMAGES only (2 steps an epoch; resnet18 takes ~3 s a step on one
# core), and its fast and packed rows say "skipped (--quick)": a cold compile of resnet18 alone exceeds the budget
QUICK_MAX_TRAIN_FLOPS = 1e8
QUICK_BIG_IMAGES, QUICK_BIG_TEST = 256, 128
# split sizes of the data sets a design can name (elr.training.data): CIFAR-10 50,000/10,000 (Krizhevsky 2009)
SPLITS = {"cifar10": (50_000, 10_000), "synthetic": (SYNTHETIC_TRAIN, SYNTHETIC_TEST)}
# workers a scale's documented command uses: experiments/design.toml, "[scales.cpu] # pytest experiments/ --scale
# cpu --data npz:PATH -n 2"; the other scales run serially
WORKERS = {"cpu": 2}
# peak dense tensor throughput, FLOP/s: NVIDIA H100/H200 datasheet (SXM; TF32 989 and BF16 1979 TFLOPS are
# with sparsity, dense is half). PCIe and NVL parts have lower clocks, so they are measured instead.
GPU_PEAKS = {"H100": {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12},
             "H200": {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12}}
PACK_MISSING = "not available (elr.training.pack missing)"
SKIPPED = "skipped (--quick)"
OOM = "out of memory (K runs do not fit the device)"


# ---------------------------------------------------------------------------------------------- options
@dataclass
class Plan:
    """What to measure, resolved from the flags (and --quick) and validated."""

    models: list[tuple[str, int | None]]
    modes: tuple[str, ...]
    precisions: tuple[str, ...]
    pack: tuple[int, ...]
    device: str
    threads: int
    images: int
    test_images: int
    warmup: int
    repeats: int
    quick: bool
    out: Path
    profile: bool = False
    data: str = NOISE

    def command(self) -> str:
        """The command that reproduces this measurement, every setting explicit."""
        parts = ["python", "-m", "elr", "bench", "--models", ",".join(label(n, w) for n, w in self.models),
                 "--modes", ",".join(self.modes), "--precisions", ",".join(self.precisions),
                 "--pack", ",".join(map(str, self.pack)), "--device", self.device, "--threads", str(self.threads),
                 "--images", str(self.images), "--test-images", str(self.test_images),
                 "--warmup", str(self.warmup), "--repeats", str(self.repeats), "--data", self.data,
                 "--out", str(self.out)]
        return shlex.join(parts + (["--quick"] if self.quick else []) + (["--profile"] if self.profile else []))


def label(name: str, width: int | None) -> str:
    return name if width is None else f"{name}:{width}"


def _split(spec: str) -> list[str]:
    return [s.strip() for s in str(spec).split(",") if s.strip()]


def parse_models(spec: str, width: int | None = None) -> list[tuple[str, int | None]]:
    """'convnet_si:8,resnet18' -> [('convnet_si', 8), ('resnet18', width)]: NAME or NAME:WIDTH, comma-separated."""
    accepted = f"accepted: {', '.join(sorted(MODELS))}, as NAME or NAME:WIDTH, comma-separated"
    out = []
    for item in _split(spec):
        name, _, w = item.partition(":")
        if name not in MODELS:
            raise ConfigError(f"unknown model {name!r} in --models; {accepted}")
        if w:
            if not w.isdigit() or int(w) < 1:
                raise ConfigError(f"width {w!r} in --models {item!r} must be a positive integer; {accepted}")
            out.append((name, int(w)))
        else:
            out.append((name, width))
    if not out:
        raise ConfigError(f"--models is empty; {accepted}")
    return list(dict.fromkeys(out))  # a repeated model is measured once


def _positive_ints(flag: str, spec: str, minimum: int = 1) -> tuple[int, ...]:
    values = []
    for item in _split(spec):
        try:
            v = int(item)
        except ValueError:
            v = None
        if v is None or v < minimum:
            raise ConfigError(f"{flag} takes integers >= {minimum}, comma-separated; got {item!r}")
        values.append(v)
    if not values:
        raise ConfigError(f"{flag} is empty; it takes integers >= {minimum}, comma-separated")
    return tuple(dict.fromkeys(values))


def _choices(flag: str, spec: str, accepted: tuple[str, ...]) -> tuple[str, ...]:
    values = _split(spec)
    for v in values:
        if v not in accepted:
            raise ConfigError(f"unknown {flag[2:].rstrip('s')} {v!r} in {flag}; accepted: {', '.join(accepted)}")
    if not values:
        raise ConfigError(f"{flag} is empty; accepted: {', '.join(accepted)}")
    return tuple(dict.fromkeys(values))


def plan_from_args(args) -> Plan:
    """Resolve the flags (unset ones from --quick's or the full defaults) into a Plan; one-line ConfigError."""
    d = QUICK if args.quick else DEFAULTS
    pick = lambda key: d[key] if getattr(args, key) is None else getattr(args, key)  # noqa: E731
    if args.width is not None and args.width < 1:
        raise ConfigError(f"--width must be a positive integer, got {args.width}")
    models = parse_models(args.models or (QUICK_MODELS if args.quick else DEFAULT_MODELS), args.width)
    for flag, key, minimum in (("--images", "images", 2), ("--test-images", "test_images", 1),
                               ("--warmup", "warmup", 0), ("--repeats", "repeats", 1), ("--threads", "threads", 1)):
        value = pick(key) if key in d else getattr(args, key)
        if value < minimum:
            raise ConfigError(f"{flag} must be an integer >= {minimum}, got {value}")
    check_device(args.device)  # --device cuda without CUDA: one line, exit 2
    profile = getattr(args, "profile", False)
    if profile and not str(args.device).startswith("cpu"):
        raise ConfigError(f"--profile splits the fast epoch's CPU time, so it needs --device cpu, got {args.device!r}")
    if profile and "fast" not in _split(args.modes):
        raise ConfigError("--profile profiles the fast rows; add fast to --modes")
    data = str(getattr(args, "data", None) or NOISE).strip()
    if data not in (NOISE, "synthetic", "cifar10") and not data.startswith("npz:"):
        raise ConfigError(f"unknown --data {data!r}; accepted: {DATA_ACCEPTED}")
    return Plan(models=models, modes=_choices("--modes", args.modes, MODES),
                precisions=_choices("--precisions", args.precisions, PRECISIONS),
                pack=_positive_ints("--pack", pick("pack")), device=args.device, threads=args.threads,
                images=pick("images"), test_images=pick("test_images"), warmup=pick("warmup"),
                repeats=pick("repeats"), quick=args.quick, out=args.out, profile=profile,
                data=data)


# ---------------------------------------------------------------------------------------------- pure arithmetic
def count_flops(model: torch.nn.Module, batch: int = 2) -> tuple[float, float]:
    """(training, forward) FLOPs per image of `model` on CIFAR-shaped input: torch.utils.flop_counter counts the
    convolutions and matrix products of one forward, cross-entropy and backward (a first conv computes no input
    gradient: 2x its forward, the later ones 3x). BatchNorm, ReLU and pooling are not counted (O(activations),
    not O(activations x channels))."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.train()  # batch >= 2: BatchNorm in training mode needs two samples
    x = torch.randn(batch, *IMAGE, device=next(model.parameters()).device)
    y = torch.zeros(batch, dtype=torch.long, device=x.device)
    with FlopCounterMode(display=False) as fwd:
        loss = F.cross_entropy(model(x), y)
    with FlopCounterMode(display=False) as bwd:
        loss.backward()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    forward = fwd.get_total_flops() / batch
    return forward + bwd.get_total_flops() / batch, forward


# where a fast CPU epoch's time goes, by the name torch.profiler gives an event (self time, so nothing twice):
# oneDNN's convolutions, and the kernels inductor generates for everything between them (its names start graph_)
PROFILE_PARTS = (("convolution forward", ("aten::mkldnn_convolution",)),
                 ("convolution backward", ("aten::convolution_backward",)),
                 ("compiled kernels (BN, ReLU, pooling)", ("graph_",)))


def profile_shares(events: list[tuple[str, float]]) -> dict[str, float]:
    """Share of the total self time per PROFILE_PARTS part (by name prefix), the rest under "other"."""
    total = sum(t for _, t in events)
    parts = {name: 0.0 for name, _ in PROFILE_PARTS} | {"other": 0.0}
    for key, t in events:
        part = next((name for name, prefixes in PROFILE_PARTS if key.startswith(prefixes)), "other")
        parts[part] += t
    return {name: (t / total if total > 0 else 0.0) for name, t in parts.items()}


def mfu(train_images: int, eval_images: int, seconds: float, flops: tuple[float, float], peak: float) -> float:
    """Model FLOP utilisation: FLOPs the epoch needed (training images at the training count, evaluated images at
    the forward count) per second, over the peak (Chowdhery et al. 2022, PaLM, appendix B)."""
    train_flops, forward_flops = flops
    return (train_images * train_flops + eval_images * forward_flops) / seconds / peak


def seconds_per_unit(epoch_s: float, train_images: int, eval_images: int, forward_share: float) -> float:
    """Seconds per training-image equivalent: an evaluated image costs forward_share of a trained one (the ratio
    of their FLOP counts, count_flops), so an epoch of the bench is train + share x eval units."""
    return epoch_s / (train_images + forward_share * eval_images)


def split_sizes(cfg: RunConfig) -> tuple[int, int]:
    """(train, test) images a run sees per epoch, by elr.training.data's rules: the data set's splits (CIFAR-10 for an
    npz file, its usual content), a --subset of the training split, a test subset of --test-subset images or
    proportional to the subset, rounded half up (elr.training.data._subset_indices)."""
    n_train, n_test = SPLITS.get(cfg.data, SPLITS["cifar10"])
    if cfg.test_subset is not None:
        test = cfg.test_subset
    elif cfg.subset is not None:
        test = min(n_test, max(1, math.floor(cfg.subset * n_test / n_train + 0.5)))
    else:
        test = n_test
    return (cfg.subset or n_train), test


def makespan(durations: list[float], workers: int) -> float:
    """Wall time of runs taken in order by `workers` processes, each taking the next unclaimed run when free:
    elr.study.train_all's claim order (greedy list scheduling, Graham 1966)."""
    free = [0.0] * max(1, workers)
    for d in durations:
        heapq.heapreplace(free, free[0] + d)
    return max(free)


def project(configs: list[tuple[str, RunConfig]], speeds: dict, workers: int = 1) -> dict:
    """The wall time of a study's runs at the measured speeds. speeds[(model, width, precision)] = {"label",
    "mode", "images_per_s", "seconds_per_unit", "forward_share"}, width resolved (never None). A run takes
    epochs x (train + forward_share x test) x seconds_per_unit (excluding start-up, the epoch-0 evaluation and
    checkpoints); a run whose model was not measured is listed in "missing" and left out of the totals."""
    durations, used, missing = [], {}, []
    for _, cfg in configs:
        key = (cfg.model, resolved_width(cfg.model, cfg.width), cfg.precision)
        speed = speeds.get(key)
        if speed is None:
            missing.append(label(cfg.model, key[1]) + ("" if cfg.precision == "fp32" else f" {cfg.precision}"))
            continue
        n_train, n_test = split_sizes(cfg)
        seconds = cfg.epochs * (n_train + speed["forward_share"] * n_test) * speed["seconds_per_unit"]
        durations.append(seconds)
        u = used.setdefault(speed["label"], {"mode": speed["mode"], "images_per_s": speed["images_per_s"],
                                             "runs": 0, "hours": 0.0})
        u["runs"] += 1
        u["hours"] += seconds / 3600
    serial = sum(durations)
    return {"runs": len(configs), "measured_runs": len(durations), "serial_hours": serial / 3600,
            "workers": workers, "hours": makespan(durations, workers) / 3600, "models": used,
            "missing": sorted(set(missing))}


def add_ratios(rows: list[dict]) -> None:
    """× loop and × eager: each row's images/s over its model's loop row and its eager fp32 row."""
    base = {(r["model"], r["mode"]): r["images_per_s"] for r in rows
            if r["status"] == "ok" and r["precision"] == "fp32" and r["mode"] in ("loop", "eager")}
    for r in rows:
        for col, mode in (("x_loop", "loop"), ("x_eager", "eager")):
            ref = base.get((r["model"], mode))
            r[col] = r["images_per_s"] / ref if ref and r["status"] == "ok" else None


# ---------------------------------------------------------------------------------------------- measuring
_WIDTHS: dict = {}


def resolved_width(name: str, width: int | None) -> int:
    """The width a model is built at (None: the model's default), read from the built model's first conv, so
    that convnet_si and convnet_si:32 name one measurement."""
    if width is not None:
        return width
    if name not in _WIDTHS:
        with torch.random.fork_rng(devices=[]):
            model = build_model(name, width=None)
        _WIDTHS[name] = next(m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    return _WIDTHS[name]


def synthetic(n_train: int, n_test: int, device: torch.device, seed: int = 0) -> Data:
    """Normal noise and uniform labels, CIFAR-shaped, on the device (--data noise): no data set needed. On a CPU
    the content changes the speed (aten's kernels branch on the data), so --data npz:PATH times real images."""
    g = torch.Generator().manual_seed(seed)
    x_train, x_test = torch.randn(n_train, *IMAGE, generator=g), torch.randn(n_test, *IMAGE, generator=g)
    y_train = torch.randint(0, NUM_CLASSES, (n_train,), generator=g)
    y_test = torch.randint(0, NUM_CLASSES, (n_test,), generator=g)
    return Data(x_train.to(device), y_train.to(device), x_test.to(device), y_test.to(device),
                num_classes=NUM_CLASSES, name="bench", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def bench_data(spec: str, n_train: int, n_test: int, device: torch.device) -> Data:
    """The epoch's images: noise, or class-balanced subsets of n_train / n_test images of a data set as
    elr.training.data loads it for a run (normalised, on the device); DataError, one line, where it cannot."""
    if spec == NOISE:
        return synthetic(n_train, n_test, device)
    from .training.data import DataError, load_data

    try:
        return load_data(spec, subset=n_train, test_subset=n_test, device=device)
    except DataError as e:   # load_data names elr train's options; here the sizes are --images / --test-images
        what = re.match(r"(test_subset|subset) \d+ is outside ", str(e))
        if what is None:
            raise
        flag = {"subset": "--images", "test_subset": "--test-images"}[what.group(1)]
        # only the option's two mentions: the data set's own name may contain "subset" too
        text = flag + str(e)[len(what.group(1)):]
        raise DataError(text.replace(f" <= {what.group(1)} <= ", f" <= {flag} <= ")) from None


def data_description(spec: str, datasets: dict) -> str:
    """What the epochs ran on, for the report: noise, or the data set and its subsets' sizes."""
    if spec == NOISE:
        return "noise (normal, uniform labels; --data noise)"
    sizes = ", ".join(f"{a}/{b}" for a, b in datasets)
    return f"{next(iter(datasets.values())).name}, class-balanced subsets of {sizes} train/test images"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_epochs(epoch, n: int, device: torch.device) -> list[float]:
    """Wall seconds of n calls of epoch(), each bracketed by a device sync (CUDA runs asynchronously)."""
    times = []
    for _ in range(n):
        _sync(device)
        t = time.perf_counter()
        epoch()
        _sync(device)
        times.append(time.perf_counter() - t)
    return times


# the convolution that measures a CPU's peak: 3x3, 128 -> 128 channels, 16x16, batch 32, channels_last. oneDNN
# runs it as a direct convolution (ONEDNN_VERBOSE=1 names brg_conv_fwd:avx512_core, alg:convolution_direct on the
# 2-core AMD CPU), so its FLOPs are the ones torch.utils.flop_counter counts for a model's convolutions
PEAK_CONV = (32, 128, 16)   # batch, channels, height = width


def measure_peak(device: torch.device, precision: str) -> tuple[float, str]:
    """Peak FLOP/s for MFU: the datasheet's for an H100/H200 SXM; elsewhere the best of a few square matrix
    products (2 n^3 FLOPs each: n^2 outputs of n multiply-adds) at the current thread count, and on a CPU the
    faster of that and a direct 3x3 convolution: on the 2-core AMD CPU torch.mm reached ~105 GFLOP/s and
    oneDNN's AVX-512 convolutions ~260, so a matrix-product peak alone would put a convolution net's MFU over
    100%."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        family = next((k for k in GPU_PEAKS if k in name and "PCIe" not in name and "NVL" not in name), None)
        if family:
            # fp32 convolutions run on TF32 tensor cores when cuDNN may use them (torch's default)
            kind = "tf32" if precision == "fp32" and torch.backends.cudnn.allow_tf32 else precision
            return GPU_PEAKS[family][kind], f"NVIDIA {family} datasheet, dense {kind}"
    n, tries = (4096, 10) if device.type == "cuda" else (1024, 5)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)  # first call: allocation and kernel selection
    seconds = min(time_epochs(lambda: torch.mm(a, b), tries, device))
    what = "sgemm" if dtype == torch.float32 else "bf16 gemm"
    gemm = 2 * n**3 / seconds
    threads = f"threads {torch.get_num_threads()}"
    if device.type == "cuda":
        return gemm, f"measured {what} peak: best of {tries} {n}x{n} torch.mm, {threads}"
    batch, c, hw = PEAK_CONV
    x = torch.randn(batch, c, hw, hw, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(c, c, 3, 3, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    F.conv2d(x, w, padding=1)
    # a 'same' 3x3 convolution: 2 * 9 * Cin * Cout FLOPs per output pixel (one multiply and one add per weight)
    conv = 2 * 9 * c * c * hw * hw * batch / min(time_epochs(lambda: F.conv2d(x, w, padding=1), tries, device))
    return max(gemm, conv), (f"measured peak: the faster of {what} (best of {tries} {n}x{n} torch.mm, "
                             f"{gemm / 1e9:,.1f} GFLOP/s) and a direct 3x3 convolution ({c}->{c} channels, {hw}x{hw}, "
                             f"batch {batch}, channels_last, best of {tries}: {conv / 1e9:,.1f} GFLOP/s), {threads}")


def _loop_epoch(name: str, width: int | None, data: Data, device: torch.device):
    """The naive baseline: the data in host memory behind a DataLoader (per-sample indexing and collation),
    each batch copied to the device, SGD with L2, cross-entropy, fp32, contiguous, nothing else."""
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    model = build_model(name, width=width, num_classes=data.num_classes).to(device)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, weight_decay=5e-4)
    n = len(data.y_train)
    loader = DataLoader(TensorDataset(data.x_train.cpu(), data.y_train.cpu()), batch_size=BATCH, shuffle=True,
                        generator=torch.Generator().manual_seed(0), drop_last=n % BATCH == 1)  # BatchNorm needs 2

    def epoch():
        model.train()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return epoch


def bench_config(name: str, width: int | None, precision: str, device: str, channels_last: bool, compile: bool,
                 seed: int = 0) -> RunConfig:
    """The trainer's settings for the bench: an ELR-rule run (the study's main arm) in a given layout."""
    return RunConfig(model=name, width=width, batch_size=BATCH, schedule="elr", lr=0.3, weight_decay=5e-4,
                     channels_last=channels_last, compile="on" if compile else "off", device=device,
                     precision=precision, seed=seed).validate()


def to_channels_last(data: Data) -> Data:
    """NHWC once, as elr.training.train does: a minibatch gathered along N keeps the layout, so no per-step copy."""
    return dataclasses.replace(data, x_train=data.x_train.contiguous(memory_format=torch.channels_last),
                               x_test=data.x_test.contiguous(memory_format=torch.channels_last))


def _trainer_epoch(state, data: Data, cfg: RunConfig):
    from .training.train import run_epoch

    def epoch():
        record = run_epoch(state, data, cfg)
        state.schedule.on_epoch_end(state.epoch, record["test_loss"])  # as elr.training.train's loop does
    return epoch


def _row(name, width, mode, precision, k=None, status="ok", note="") -> dict:
    return {"model": label(name, width), "name": name, "width": resolved_width(name, width), "mode": mode,
            "precision": precision, "K": k, "status": status, "images_per_s": None, "model_epochs_per_s": None,
            "x_loop": None, "x_eager": None, "mfu": None, "compile_s": None, "epoch_s": None, "spread": None,
            "epoch_times": [], "train_images": None, "eval_images": None, "seconds_per_unit": None, "note": note}


def _fill(row: dict, times: list[float], warmup: int, train_images: int, eval_images: int,
          flops: tuple[float, float], peak: float) -> dict:
    timed = times[warmup:]
    steady = statistics.median(timed)  # the median of the timed epochs: robust to one slow epoch
    train_flops, forward_flops = flops
    row.update(epoch_s=steady, epoch_times=times, spread=(max(timed) - min(timed)) / steady,
               train_images=train_images, eval_images=eval_images,
               images_per_s=train_images / steady, model_epochs_per_s=train_images / steady / MODEL_EPOCH,
               mfu=mfu(train_images, eval_images, steady, flops, peak),
               seconds_per_unit=seconds_per_unit(steady, train_images, eval_images, forward_flops / train_flops))
    return row


def trained(n: int) -> int:
    """Images an epoch over n trains on: all but a dropped last batch of one (elr.training.data.n_batches;
    BatchNorm)."""
    return min(n, n_batches(n, BATCH) * BATCH)


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError))


def measure_model(name: str, width: int | None, plan: Plan, peaks: dict, flops: tuple[float, float],
                  say, datasets: dict | None = None) -> list[dict]:
    """Every requested row of one model, in order: loop, then eager, fast and packed K per precision."""
    from .training.train import build_state

    device = torch.device(plan.device)
    big = plan.quick and flops[0] > QUICK_MAX_TRAIN_FLOPS
    n_train, n_test = (QUICK_BIG_IMAGES, QUICK_BIG_TEST) if big else (plan.images, plan.test_images)
    datasets = {} if datasets is None else datasets   # (n_train, n_test) -> Data: a data set loads once
    if (n_train, n_test) not in datasets:
        datasets[(n_train, n_test)] = bench_data(plan.data, n_train, n_test, device)
    data = datasets[(n_train, n_test)]
    nhwc = to_channels_last(data) if {"fast", "packed"} & set(plan.modes) else None
    runs_n = plan.warmup + plan.repeats
    rows = []

    def done(row):
        rows.append(row)
        if row["status"] == "ok":
            extra = f", compile {row['compile_s']:.1f} s" if row["compile_s"] is not None else ""
            say(f"{row['model']} {row['mode']}{'' if row['K'] is None else ' K=' + str(row['K'])} "
                f"{row['precision']}: {row['images_per_s']:,.0f} images/s (median of {plan.repeats} timed "
                f"epoch{'s' if plan.repeats > 1 else ''}: {row['epoch_s']:.2f} s{extra})")
        else:
            say(f"{row['model']} {row['mode']}{'' if row['K'] is None else ' K=' + str(row['K'])} "
                f"{row['precision']}: {row['status']}")

    if "loop" in plan.modes:
        row = _row(name, width, "loop", "fp32")
        epoch = _loop_epoch(name, width, data, device)
        done(_fill(row, time_epochs(epoch, runs_n, device), plan.warmup, trained(n_train), 0, flops, peaks["fp32"]))
    for precision in plan.precisions:
        peak = peaks[precision]
        if "eager" in plan.modes:
            cfg = bench_config(name, width, precision, plan.device, channels_last=False, compile=False)
            state = build_state(cfg, data.num_classes, device)
            times = time_epochs(_trainer_epoch(state, data, cfg), runs_n, device)
            done(_fill(_row(name, width, "eager", precision), times, plan.warmup, trained(n_train), n_test,
                       flops, peak))
            del state
        if "fast" in plan.modes:
            if big:
                done(_row(name, width, "fast", precision, status=SKIPPED))
            else:
                done(_measure_fast(name, width, precision, plan, nhwc, flops, peak, say))
        if "packed" in plan.modes:
            for k in plan.pack:
                if big:
                    done(_row(name, width, "packed", precision, k, status=SKIPPED))
                else:
                    done(_measure_packed(name, width, precision, k, plan, nhwc, flops, peak))
    return rows


def _measure_fast(name, width, precision, plan: Plan, nhwc: Data, flops, peak, say) -> dict:
    import torch._dynamo

    from .training.train import build_state, setup_compile

    device = torch.device(plan.device)
    notes = []
    notice = lambda text: (notes.append(text), say(text))  # noqa: E731
    cfg = bench_config(name, width, precision, plan.device, channels_last=True, compile=True)
    state = build_state(cfg, nhwc.num_classes, device)
    # every fast row compiles from the same start: dynamo's in-memory caches (and its recompile limit) emptied;
    # torch's on-disk inductor cache stays, as it does between a user's runs
    torch._dynamo.reset()
    epoch = _trainer_epoch(state, nhwc, cfg)
    with _kernel_names(plan.profile):
        compiled = setup_compile(state, cfg, steps=10**6, device=device, notice=notice)
        times = time_epochs(epoch, plan.warmup + plan.repeats, device)
    row = _fill(_row(name, width, "fast", precision), times, plan.warmup, trained(len(nhwc.y_train)),
                len(nhwc.y_test), flops, peak)
    if plan.profile:
        row["profile"] = profile_epoch(epoch)
    if compiled and state.forward.active:
        row["compile_s"] = times[0] - row["epoch_s"]  # the first epoch's excess over a steady one
    else:
        row["note"] = "not compiled (" + "; ".join(notes)[:80] + "): eager channels_last" if notes else \
            "not compiled: eager channels_last"
    return row


@contextlib.contextmanager
def _kernel_names(on: bool):
    """Have inductor name each generated CPU kernel in the profiler (it compiles them in, so set before the
    first epoch); off again afterwards, so later rows compile as the trainer does."""
    import torch._inductor.config as inductor

    before = inductor.cpp.enable_kernel_profile
    inductor.cpp.enable_kernel_profile = on or before
    try:
        yield
    finally:
        inductor.cpp.enable_kernel_profile = before


def profile_epoch(epoch) -> dict[str, float]:
    """One more (steady) epoch under torch.profiler: the share of its CPU time per PROFILE_PARTS part."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        epoch()
    return profile_shares([(e.key, e.self_cpu_time_total) for e in prof.key_averages()])


def _measure_packed(name, width, precision, k, plan: Plan, nhwc: Data, flops, peak) -> dict:
    from .training.train import build_state

    row = _row(name, width, "packed", precision, k)
    try:
        from .training.pack import run_packed_epoch
    except ImportError:
        row["status"] = PACK_MISSING
        return row
    device = torch.device(plan.device)
    states = None
    try:
        # as elr.training.train.train_many runs a pack: channels_last (the default), not compiled, one seed per run
        cfgs = [bench_config(name, width, precision, plan.device, channels_last=True, compile=False, seed=s)
                for s in range(k)]
        states = [build_state(c, nhwc.num_classes, device) for c in cfgs]
        evaluated = []

        def epoch():
            records = run_packed_epoch(states, nhwc, cfgs)
            for s, r in zip(states, records):   # as elr.training.train's loop ends each run's epoch
                s.schedule.on_epoch_end(s.epoch, r["test_loss"])
            evaluated.append(all(r.get("test_acc") is not None for r in records))
        times = time_epochs(epoch, plan.warmup + plan.repeats, device)
    except Exception as e:
        if not _is_oom(e):
            raise
        row["status"] = OOM
        return row
    finally:
        states = None   # the K models go now (the epoch closure holds the name, not the list)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    n_train, n_test = len(nhwc.y_train), len(nhwc.y_test)
    return _fill(row, times, plan.warmup, k * trained(n_train), k * n_test if all(evaluated) else 0, flops, peak)


# ---------------------------------------------------------------------------------------------- the command
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def invoked_command(plan: Plan) -> str:
    """The command as typed when this process is `python -m elr` or `elr`, else the resolved one."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name == "__main__.py" and argv0.parent.name == "elr":
        return shlex.join(["python", "-m", "elr", *sys.argv[1:]])
    if argv0 is not None and argv0.name == "elr":
        return shlex.join(["elr", *sys.argv[1:]])
    return plan.command()


def design_path() -> Path:
    from .study import default_design

    return default_design()


def projection(rows: list[dict], flops_per_image: dict, path: Path | None = None) -> dict:
    """Every scale of the design at the best measured single-run mode (eager or fast, what elr train runs),
    and, where packing measured faster, at the best packed K."""
    from .study import Design, expand

    path = design_path() if path is None else path
    if not path.is_file():
        return {"error": "no design.toml found"}
    design = Design.load(path)
    best, best_packed = {}, {}
    for r in rows:
        if r["status"] != "ok" or r["mode"] == "loop":
            continue
        key = (r["name"], r["width"], r["precision"])
        train_flops, forward_flops = flops_per_image[r["model"]]["train"], flops_per_image[r["model"]]["forward"]
        speed = {"label": r["model"] + ("" if r["precision"] == "fp32" else f" {r['precision']}"),
                 "mode": r["mode"] + ("" if r["K"] is None else f" K={r['K']}"), "images_per_s": r["images_per_s"],
                 "seconds_per_unit": r["seconds_per_unit"], "forward_share": forward_flops / train_flops}
        table = best_packed if r["mode"] == "packed" else best
        if key not in table or speed["seconds_per_unit"] < table[key]["seconds_per_unit"]:
            table[key] = speed
    out = {"design": str(path), "scales": {}}
    for scale in design.scales:
        configs = expand(design, scale)
        p = project(configs, best, WORKERS.get(scale, 1))
        packed = {**best, **{k: v for k, v in best_packed.items()
                             if k not in best or v["seconds_per_unit"] < best[k]["seconds_per_unit"]}}
        q = project(configs, packed, WORKERS.get(scale, 1))
        if any(" K=" in u["mode"] for u in q["models"].values()):  # packing beat a single run for a model here
            p["packed"] = q
        out["scales"][scale] = p
    return out


def _cell(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _percent(share) -> str:
    return "-" if share is None else f"{100 * share:.1f}%"


def table(rows: list[dict]) -> str:
    head = ["model", "mode", "precision", "K", "images/s", "± spread", "model-epochs/s", "× loop", "× eager", "MFU",
            "compile s", "note"]
    body = []
    for r in rows:
        ok = r["status"] == "ok"
        body.append([r["model"], r["mode"], r["precision"], _cell(r["K"], "d"),
                     _cell(r["images_per_s"], ",.0f"),
                     "-" if r["spread"] is None else f"{100 * r['spread']:.0f}%",
                     _cell(r["model_epochs_per_s"], ".4f"),
                     _cell(r["x_loop"], ".2f"), _cell(r["x_eager"], ".2f"),
                     _percent(r["mfu"]),
                     _cell(r["compile_s"], ".1f"), r["note"] if ok else r["status"]])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    line = lambda cells: " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), "-+-".join("-" * w for w in widths)] + [line(b) for b in body])


def report_text(result: dict) -> str:
    lines = [table(result["rows"]), "",
             "notes: images/s = training images / median epoch time over the timed epochs (± spread: their range "
             "over the median); loop epochs train only, "
             "eager/fast/packed epochs include the trainer's evaluation of the test images (counted in MFU, not in "
             "images/s); model-epoch = 50,000 images; × loop and × eager: over the model's fp32 loop and eager rows; "
             "eager is contiguous and not compiled; fast is channels_last and compiled; packed K steps K runs together "
             "through elr.training.pack.run_packed_epoch with its defaults (one vmapped forward on CUDA, each model "
             "in turn on a CPU), channels_last and not compiled, as elr.training.train.train_many packs; its images/s "
             "count all K runs' training images; compile s = first epoch - steady epoch."]
    if any((r["mfu"] or 0) > 1 for r in result["rows"]):
        lines.append("MFU over 100%: the peak is measured, not a datasheet's, and a model's own kernels beat the "
                     "kernels that measured it (or a backend convolves with fewer multiplications than the direct "
                     "convolution's count).")
    for r in result["rows"]:
        if r.get("profile"):
            lines.append(f"profile of one more fast epoch, {r['model']} {r['precision']} (torch.profiler, share of "
                         "self CPU time): " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["profile"].items()))
    if result.get("data"):
        lines.append(f"data: {result['data']}")
    peaks = "; ".join(f"{p}: {v['value'] / 1e9:,.1f} GFLOP/s ({v['source']})" for p, v in result["peak_flops"].items())
    lines.append(f"peak for MFU: {peaks}")
    lines.append("FLOPs per image (torch.utils.flop_counter: convolutions and matrix products): " + "; ".join(
        f"{m} train {f['train'] / 1e6:,.1f} MFLOP, forward {f['forward'] / 1e6:,.1f} MFLOP"
        for m, f in result["flops_per_image"].items()))
    proj = result["projection"]
    if "error" in proj:
        lines.append(f"projection: {proj['error']}")
    else:
        lines.append(f"projection ({proj['design']}; a run takes epochs x (train + test x forward/train FLOPs) images "
                     "at the best measured speed of eager or fast, as elr train runs it; start-up and checkpoints "
                     "excluded; a scale whose epochs have few steps also pays per-epoch costs that the bench's "
                     "longer epochs spread thin: for its projection set --images/--test-images to its split, e.g. "
                     "1000/1000 for cpu):")
        for scale, p in proj["scales"].items():
            used = ", ".join(f"{m} {u['mode']} at {u['images_per_s']:,.0f} images/s ({u['runs']} runs)"
                             for m, u in p["models"].items())
            if not p["measured_runs"]:
                lines.append(f"  {scale}: " + ", ".join(f"model {m} not measured" for m in p["missing"]))
                continue
            text = f"  {scale}: {p['measured_runs']}/{p['runs']} runs, {duration(p['serial_hours'] * 3600)} serial"
            if p["workers"] > 1:
                text += f", {duration(p['hours'] * 3600)} with -n {p['workers']} workers"
            text += f" [{used or 'nothing measured'}]"
            if p["missing"]:
                text += "; " + ", ".join(f"model {m} not measured" for m in p["missing"])
            if "packed" in p:
                q = p["packed"]
                text += f"; packed: {duration(q['serial_hours'] * 3600)} serial" + (
                    f", {duration(q['hours'] * 3600)} with -n {q['workers']}" if q["workers"] > 1 else "") + " [" + ", ".join(
                    f"{m} {u['mode']}" for m, u in q["models"].items()) + "]"
            lines.append(text)
    load = result.get("load") or {}
    busy = "" if load.get("start") is None else f"load {load['start']:.1f} -> {load['end']:.1f} | "
    lines.append(f"{result['date']} | {result['device']} | torch {result['torch']} | threads {result['threads']} | "
                 f"{busy}{result['command']}")
    return "\n".join(lines)


def _load() -> float | None:
    """The 1-minute load average: other processes on the cores make every speed here lower."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def run(plan: Plan, say=None) -> dict:
    """Measure every row of the plan, write the JSON to plan.out, return the result."""
    say = say or (lambda text: print(f"bench: {text}", file=sys.stderr, flush=True))
    device = torch.device(plan.device)
    load_start = _load()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(plan.threads)
    started = time.perf_counter()
    clock = lambda text: say(f"[{time.perf_counter() - started:5.0f} s] {text}")  # noqa: E731
    try:
        # the data first: a missing or unusable data set ends the command in one line before anything is timed
        datasets = {(plan.images, plan.test_images): bench_data(plan.data, plan.images, plan.test_images, device)}
        num_classes = datasets[(plan.images, plan.test_images)].num_classes   # the head's FLOPs count too
        peaks, peak_flops = {}, {}
        for precision in plan.precisions:
            peaks[precision], source = measure_peak(device, precision)
            peak_flops[precision] = {"value": peaks[precision], "source": source}
            clock(f"peak {precision}: {peaks[precision] / 1e9:,.1f} GFLOP/s ({source})")
        if "loop" in plan.modes and "fp32" not in peaks:  # the loop is fp32 whatever --precisions says
            peaks["fp32"], source = measure_peak(device, "fp32")
            peak_flops["fp32"] = {"value": peaks["fp32"], "source": source}
        rows, flops_per_image = [], {}
        for name, width in plan.models:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                flops = count_flops(build_model(name, width=width, num_classes=num_classes))
            flops_per_image[label(name, width)] = {"train": flops[0], "forward": flops[1]}
            clock(f"{label(name, width)}: {flops[0] / 1e6:,.1f} MFLOP per training image")
            rows += measure_model(name, width, plan, peaks, flops, clock, datasets)
        add_ratios(rows)
    finally:
        torch.set_num_threads(previous_threads)
    result = {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "device": device_name(device),
              "torch": torch.__version__, "threads": plan.threads, "command": invoked_command(plan),
              "data": data_description(plan.data, datasets),
              "load": {"start": load_start, "end": _load()},
              "rerun": plan.command(), "rows": rows, "peak_flops": peak_flops, "flops_per_image": flops_per_image,
              "projection": projection(rows, flops_per_image), "seconds": time.perf_counter() - started}
    runs.write_json(plan.out, result)
    return result
