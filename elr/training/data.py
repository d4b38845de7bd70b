"""The data: image classification splits as normalized tensors on the training device.

    load_data("cifar10")                  torchvision's CIFAR-10, downloaded once to a cache directory
    load_data("npz:PATH")                 any .npz with x_train, y_train, x_test, y_test (uint8 NHWC images)
    load_data("synthetic")                10 generated classes, 2000/500 images, the same on every run
    load_data(spec, subset=N, seed=s)     a class-balanced, seeded subset of N training images and
                                          round(N * n_test / n_train) test images

There is no augmentation and no DataLoader: the whole split is converted once and held on the device,
and the trainer gathers each minibatch by index from one seeded permutation (`batch_indices`), as
airbench does -- no worker processes, no per-batch host-to-device copies, and the order of batches is
the state of one torch.Generator, which the trainer checkpoints.

Every problem with the input is a DataError (a ValueError) whose message is one line naming the
problem and what is accepted; the CLI prints it and exits 2.
"""

from __future__ import annotations

import functools
import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ACCEPTED = "cifar10, npz:PATH, synthetic"
ARRAYS = ("x_train", "y_train", "x_test", "y_test")


class DataError(ValueError):
    """A data set that cannot be used as asked; the message is one line naming the problem and the fix."""


@dataclass
class Data:
    x_train: torch.Tensor  # (N, C, H, W) float32, normalized, on the device
    y_train: torch.Tensor  # (N,) int64, on the device
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    name: str  # "cifar10", "npz:cifar10.npz", "synthetic"
    mean: tuple[float, ...]  # per channel, of the full training split, pixel values scaled to [0, 1]
    std: tuple[float, ...]


def load_data(spec: str, *, subset: int | None = None, test_subset: int | None = None, seed: int = 0,
              device="cpu", cache_dir=None) -> Data:
    """Load the data set named by `spec`, take a class-balanced subset if asked, normalize, move it to `device`.
    `test_subset` sets the test subset's size (default: proportional to `subset`, or the whole split).
    Raises DataError, with a one-line message, for anything that cannot be used as asked."""
    spec = str(spec).strip()
    if spec == "cifar10":
        name, arrays = "cifar10", _cifar10_arrays(cache_dir)
    elif spec == "synthetic":
        name, arrays = "synthetic", synthetic_arrays()
    elif spec.startswith("npz:"):
        path = spec[len("npz:"):]
        if not path:
            raise DataError(f"--data npz: needs a path, as in npz:data/cifar10.npz; accepted: {ACCEPTED}")
        name, arrays = f"npz:{Path(path).name}", _npz_arrays(Path(path).expanduser())
    else:
        raise DataError(f"unknown data {spec!r}; accepted: {ACCEPTED}")

    x_train, y_train, x_test, y_test = arrays
    num_classes = _validate(name, x_train, y_train, x_test, y_test)

    # Normalization: per-channel mean and std of the FULL training images (before any subset, so a
    # subset run sees its inputs on the same scale as the full run), applied once to train and test.
    mean, std = channel_stats(x_train)
    if np.any(std == 0):
        raise DataError(f"{name}: channel {int(np.argmin(std))} of x_train is constant, so it cannot be "
                        "normalized; every channel must vary")

    if (subset is not None and subset != len(y_train)) or test_subset is not None:
        train_idx, test_idx = _subset_indices(name, y_train, y_test, num_classes, subset, seed, test_subset)
        x_train, y_train = x_train[train_idx], y_train[train_idx]
        x_test, y_test = x_test[test_idx], y_test[test_idx]

    device = torch.device(device)
    return Data(x_train=_images_to_tensor(x_train, mean, std, device),
                y_train=torch.from_numpy(y_train.astype(np.int64)).to(device),
                x_test=_images_to_tensor(x_test, mean, std, device),
                y_test=torch.from_numpy(y_test.astype(np.int64)).to(device),
                num_classes=num_classes, name=name,
                mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std))


# ---------------------------------------------------------------------------------------- sources

def default_cache_dir() -> Path:
    return Path(os.environ.get("ELR_DATA_DIR") or Path.home() / ".cache" / "elr").expanduser()


def _cifar10_arrays(cache_dir) -> tuple[np.ndarray, ...]:
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    import torchvision  # imported here: it is slow to import and only this source needs it

    try:
        # download=True is a no-op when the files are present and intact (torchvision checks their md5)
        train = torchvision.datasets.CIFAR10(root=str(root), train=True, download=True)
        test = torchvision.datasets.CIFAR10(root=str(root), train=False, download=True)
    except Exception as e:  # offline: URLError, OSError, RuntimeError ... all mean the same thing here
        raise DataError(f"CIFAR-10 is not in {root} and could not be downloaded ({_one_line(e)}): put "
                        "cifar-10-python.tar.gz or cifar-10-batches-py/ there, set ELR_DATA_DIR, "
                        "or use --data npz:PATH") from e
    return (np.asarray(train.data), np.asarray(train.targets, dtype=np.int64),
            np.asarray(test.data), np.asarray(test.targets, dtype=np.int64))


def _npz_arrays(path: Path) -> tuple[np.ndarray, ...]:
    required = ", ".join(ARRAYS)
    if not path.is_file():
        raise DataError(f"npz file {path} does not exist (or is not a file); give --data npz:PATH to an "
                        f".npz holding {required}")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as e:  # not a zip / truncated / unreadable: numpy raises several kinds
        raise DataError(f"cannot read {path} as an .npz archive ({_one_line(e)}); it must be made by "
                        f"numpy.savez with arrays {required}") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path} holds a single .npy array, not an .npz archive; save it with "
                        f"numpy.savez(path, {required.replace(', ', '=..., ')}=...)")
    with archive:
        missing = [a for a in ARRAYS if a not in archive.files]
        if missing:
            raise DataError(f"{path} lacks array(s) {', '.join(missing)}; it has "
                            f"{', '.join(archive.files) or 'none'}, and needs {required}")
        try:
            return tuple(archive[a] for a in ARRAYS)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise DataError(f"{path} is damaged: an array could not be read ({_one_line(e)})") from e


# The synthetic task: each class is a smooth random colour pattern (a template, periodic on the image);
# an image is its class template circularly shifted by a uniformly random offset, plus a smooth random
# distractor of the same power, times a random contrast, plus pixel noise. The shift makes the class means
# nearly flat (a nearest-class-mean classifier scores 0.39 on test), while a small convnet with pooling
# reaches ~0.8 test accuracy after 3 epochs and ~0.95 after 6 (measured once, two seeds: a 3-conv BatchNorm
# net, width 16, SGD lr 0.05, momentum 0.9, batch 64) -- learnable, but not in one step.
SYNTHETIC_SEED = 1729  # fixed, not the run's seed: every run and every test sees the same images
SYNTHETIC_CLASSES, SYNTHETIC_SIZE, SYNTHETIC_CHANNELS = 10, 32, 3
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 2000, 500  # multiples of the class count: exactly balanced


@functools.lru_cache(maxsize=1)  # a study builds it once per process, not once per run
def synthetic_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The deterministic synthetic data set as (x_train, y_train, x_test, y_test), uint8 NHWC and int64.

    The arrays are cached and marked read-only: callers copy before changing them."""
    k, c, s = SYNTHETIC_CLASSES, SYNTHETIC_CHANNELS, SYNTHETIC_SIZE
    n = SYNTHETIC_TRAIN + SYNTHETIC_TEST
    rng = np.random.default_rng(SYNTHETIC_SEED)
    # real Fourier basis up to 3 cycles per image (smooth, periodic): 1, cos(aω i), sin(aω i), ω = 2π/S
    w = 2 * np.pi * np.arange(s) / s
    basis = np.stack([np.ones(s)] + [f(a * w) for a in (1, 2, 3) for f in (np.cos, np.sin)], axis=1)
    basis = basis.astype(np.float32)  # (S, m)
    m = basis.shape[1]

    def smooth_fields(count):
        """count·C random fields f = B c Bᵀ with iid N(0, 1) coefficients c, laid out (H, count, C, W):
        derived: B c Bᵀ for all images as two flat matrix products (numpy is slow at many small ones)."""
        coef = rng.standard_normal((count * c * m, m), dtype=np.float32)
        half = (coef @ basis.T).reshape(count * c, m, s).transpose(1, 0, 2).reshape(m, -1)
        return (basis @ half).reshape(s, count, c, s)

    templates = smooth_fields(k).transpose(1, 2, 0, 3)  # (K, C, H, W)
    # every circular shift of a template is an S x S window of the template tiled 2 x 2
    tiled = np.tile(templates, (1, 1, 2, 2))[:, :, :-1, :-1]
    windows = np.lib.stride_tricks.sliding_window_view(tiled, (s, s), axis=(2, 3))  # (K, C, S, S, H, W)
    y = np.arange(n) % k
    offset = rng.integers(0, s, (n, 2))
    x = smooth_fields(n)  # the distractors, (H, n, C, W)
    x += windows[y, :, offset[:, 0], offset[:, 1]].transpose(2, 0, 1, 3)
    # a random contrast per image around a signal std of 45 grey levels
    x *= rng.uniform(0.7, 1.3, (1, n, 1, 1)).astype(np.float32) * np.float32(45 / x.std())
    # uniform pixel noise from raw bytes (cheap), scaled to half the signal's std;
    # derived: a uniform byte has std sqrt((256² - 1) / 12) = 73.9
    x += np.frombuffer(rng.bytes(x.size), dtype=np.uint8).reshape(x.shape) * np.float32(0.5 * 45 / 73.9)
    x += np.float32(128 - 127.5 * 0.5 * 45 / 73.9)
    x = np.clip(np.rint(x, out=x), 0, 255, out=x).astype(np.uint8).transpose(1, 0, 3, 2)  # -> NHWC
    # shuffle within each split so that neither is grouped by class
    order = np.concatenate([rng.permutation(SYNTHETIC_TRAIN),
                            SYNTHETIC_TRAIN + rng.permutation(SYNTHETIC_TEST)])
    x, y = np.ascontiguousarray(x[order]), y[order].astype(np.int64)
    x.flags.writeable = y.flags.writeable = False  # shared by every caller through the cache
    return x[:SYNTHETIC_TRAIN], y[:SYNTHETIC_TRAIN], x[SYNTHETIC_TRAIN:], y[SYNTHETIC_TRAIN:]


# ---------------------------------------------------------------------------------------- checks

def _validate(name, x_train, y_train, x_test, y_test) -> int:
    """Check shapes, dtypes and labels; return num_classes = max training label + 1."""
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x.ndim != 4 or x.shape[-1] not in (1, 3):
            hint = " (is it NCHW?)" if x.ndim == 4 and x.shape[1] in (1, 3) else ""
            raise DataError(f"{name}: x_{split} has shape {x.shape}; images must be NHWC, "
                            f"(N, H, W, C) with C in {{1, 3}}{hint}")
        if x.dtype != np.uint8:
            raise DataError(f"{name}: x_{split} has dtype {x.dtype}; images must be uint8 (0..255)")
        if y.ndim != 1:
            raise DataError(f"{name}: y_{split} has shape {y.shape}; labels must be a 1-D array (N,)")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{name}: y_{split} has dtype {y.dtype}; labels must be integers 0..K-1")
        if len(x) != len(y):
            raise DataError(f"{name}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels; "
                            "they must match")
        if len(y) == 0:
            raise DataError(f"{name}: the {split} split is empty; it needs at least one image")
        if y.min() < 0:
            raise DataError(f"{name}: y_{split} has a negative label ({int(y.min())}); labels must be "
                            "integers 0..K-1")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{name}: train images are {x_train.shape[1:]} (H, W, C) but test images are "
                        f"{x_test.shape[1:]}; both splits must have the same image shape")
    num_classes = int(y_train.max()) + 1
    if num_classes > len(y_train):   # the model's output layer has num_classes rows: 2**40 would take terabytes
        raise DataError(f"{name}: y_train has label {num_classes - 1}, so {num_classes} classes, more than its "
                        f"{len(y_train)} images; labels must be 0..K-1 for K classes, each with training images")
    if y_test.max() >= num_classes:
        raise DataError(f"{name}: y_test has label {int(y_test.max())} but the training labels only go "
                        f"up to {num_classes - 1}; test labels must be in 0..{num_classes - 1}")
    return num_classes


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}".rstrip(": ")


# ---------------------------------------------------------------------------------------- maths

def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and population std of uint8 NHWC images, in [0, 1] pixel units, in float64.

    Exact, from a 256-bin histogram per channel, counted in chunks: no float copy of the whole split."""
    channels = x.shape[-1]
    pixels = x.reshape(-1, channels)
    bins = np.arange(channels, dtype=np.uint16) * 256  # value v of channel c counts in bin 256c + v
    counts = np.zeros(256 * channels, dtype=np.int64)
    for start in range(0, len(pixels), 1 << 20):
        counts += np.bincount((pixels[start:start + (1 << 20)] + bins).ravel(), minlength=256 * channels)
    p = counts.reshape(channels, 256) / len(pixels)
    values = np.arange(256) / 255
    mean = p @ values
    # population variance E[(v - μ)²] (ddof 0), the convention of the published CIFAR-10 statistics
    return mean, np.sqrt(np.sum(p * (values - mean[:, None]) ** 2, axis=1))


def _images_to_tensor(x: np.ndarray, mean, std, device) -> torch.Tensor:
    # move uint8 (a quarter of float32's bytes), then convert on the device; (x/255 - m)/s = (x - 255m)/(255s)
    t = torch.from_numpy(np.ascontiguousarray(x) if x.flags.writeable else x.copy()).to(device).permute(0, 3, 1, 2).contiguous()
    shift = torch.tensor(np.asarray(mean) * 255, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    scale = torch.tensor(np.asarray(std) * 255, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return t.to(torch.float32).sub_(shift).div_(scale)


def balanced_subset(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of a class-balanced random subset of n labels: n // K per class (K = classes present),
    the remainder given one each to the first classes of a seeded random order, drawn at random within
    each class (never a leading slice: a split may be grouped by class)."""
    y = np.asarray(y)
    classes = np.unique(y)
    if not 0 < n <= len(y):
        raise DataError(f"a subset of {n} from {len(y)} labels is impossible; choose 1..{len(y)}")
    rng = np.random.default_rng(seed % 2**63)  # default_rng rejects negative seeds
    quota = dict.fromkeys(classes.tolist(), n // len(classes))
    for c in rng.permutation(classes)[: n % len(classes)].tolist():
        quota[c] += 1
    chosen = []
    for c in classes.tolist():
        members = np.flatnonzero(y == c)
        if quota[c] > len(members):
            raise DataError(f"a balanced subset of {n} needs {quota[c]} images of class {c}, which has "
                            f"only {len(members)}; choose a subset of at most {len(members) * len(classes)}")
        chosen.append(rng.choice(members, size=quota[c], replace=False))
    return np.sort(np.concatenate(chosen))


def _subset_indices(name, y_train, y_test, num_classes, subset, seed, test_subset=None):
    n_train, n_test = len(y_train), len(y_test)
    subset = n_train if subset is None else subset
    for what, value, n in (("subset", subset, n_train), ("test_subset", test_subset, n_test)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise DataError(f"{what} must be an integer number of images, got {value!r}")
        if not num_classes <= value <= n:
            raise DataError(f"{what} {value} is outside what {name} allows: at least one image per class "
                            f"and at most the split, {num_classes} <= {what} <= {n}")
    # by default the test split shrinks in proportion, rounded half up, keeping at least one image
    n_sub_test = test_subset if test_subset is not None else min(n_test, max(1, math.floor(subset * n_test / n_train + 0.5)))
    train_idx = balanced_subset(y_train, int(subset), seed) if subset != n_train else np.arange(n_train)
    return train_idx, balanced_subset(y_test, int(n_sub_test), seed)


# ---------------------------------------------------------------------------------------- batches

def n_batches(n: int, batch_size: int) -> int:
    """Minibatches per epoch: ceil(n / batch_size), less a trailing remainder batch of one sample (BatchNorm
    in train mode needs at least two)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    full, rest = divmod(n, batch_size)
    return full + (1 if rest > 1 or (rest == 1 and batch_size == 1) else 0)


def batch_indices(n: int, batch_size: int, generator: torch.Generator, device) -> list[torch.Tensor]:
    """One epoch's minibatches: a permutation of range(n) drawn from `generator` (a CPU generator, whose
    state the trainer checkpoints), split into n_batches(n, batch_size) batches."""
    count = n_batches(n, batch_size)
    perm = torch.randperm(n, generator=generator).to(device)
    return list(perm.split(batch_size))[:count]
