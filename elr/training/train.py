"""One training run: the only stateful loop in elr.

    train(RunConfig(...), "runs/demo")   # or: python -m elr train --out runs/demo ...

Every epoch: one pass over a seeded permutation of the training tensors (held on the device), metrics
accumulated on the device and synced to the host once, one line appended to metrics.jsonl, and every
`checkpoint_every` epochs an atomic checkpoint. Rerunning the same configuration resumes from the
checkpoint (lines logged after it are dropped and recomputed, so the log equals an uninterrupted run's).
"""

from __future__ import annotations

import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__, runs
from ..analysis.theory import relaxation_steps
from ..config import ConfigError, RunConfig
from ..progress import duration
from .data import Data, DataError, batch_indices, load_data, n_batches
from .models import build_model, scale_invariant_params
from .optim import build_optimizer, build_schedule, param_groups
from .rule import angle_between, effective_lr, global_norm, si_rate

EVAL_BATCH = 1000  # test-set forward chunk: bounds memory, not results
# compile = "auto" compiles runs of at least this many steps: a cold compile costs ~15 s on the 2-core CPU (a
# warm one, from torch's on-disk cache, ~1.5 s) and saves ~12 ms per convnet_si step there (python -m elr bench)
COMPILE_MIN_STEPS = 1000


@dataclass
class RunState:
    """Everything a run carries between epochs; the checkpoint is exactly this."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: object
    si: dict[str, torch.nn.Parameter]
    perm: torch.Generator           # batch order; its state is checkpointed
    epoch: int = 0
    step: int = 0
    wall_time: float = 0.0          # training seconds before this session (resumes add up)
    forward: object = None          # model(x) as the run computes it: the module, or its compiled form
    precision: str = "fp32"         # bf16: forward and loss under autocast; weights, optimizer and norms stay fp32

    def __post_init__(self):
        if self.forward is None:
            self.forward = self.model

    def autocast(self):
        """The forward pass's numeric context: bf16 autocast (weights and their updates stay fp32) or none."""
        if self.precision != "bf16":
            return nullcontext()
        return torch.autocast(next(self.model.parameters()).device.type, dtype=torch.bfloat16)

    def checkpoint(self, wall_time: float) -> dict:
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(), "epoch": self.epoch, "step": self.step,
            "wall_time": wall_time,
            "rng": {"torch": torch.get_rng_state(), "perm": self.perm.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    "numpy": np.random.get_state(), "python": random.getstate()},
        }

    def restore(self, ck: dict) -> None:
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.schedule.load_state_dict(ck["schedule"])
        for k in ("epoch", "step", "wall_time"):    # a checkpoint's older keys (best_acc, best_epoch) go unread
            setattr(self, k, ck[k])
        rng = ck["rng"]
        torch.set_rng_state(rng["torch"])
        self.perm.set_state(rng["perm"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])


def build_state(cfg: RunConfig, num_classes: int, device: torch.device) -> RunState:
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    return _new_state(cfg, num_classes, device)


def _new_state(cfg: RunConfig, num_classes: int, device: torch.device) -> RunState:
    """A run at its initial weights, drawn from torch's global RNG as it stands."""
    model = build_model(cfg.model, width=cfg.width, num_classes=num_classes).to(device)
    si = scale_invariant_params(model)
    if cfg.channels_last:
        # NHWC conv weights and activations: the same values, a faster oneDNN / cuDNN layout (a no-op for 2-D tensors)
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, param_groups(model, si))
    schedule = build_schedule(cfg, optimizer, si)
    return RunState(model, optimizer, schedule, si, torch.Generator().manual_seed(cfg.seed), precision=cfg.precision)


def compile_unavailable(device: torch.device) -> str | None:
    """Why torch.compile cannot run on this machine (a phrase), or None."""
    try:
        import torch._dynamo

        if not torch._dynamo.is_dynamo_supported():
            return f"TorchDynamo does not support Python {platform.python_version()} on this platform"
    except Exception as e:  # an import that fails is as good as an unsupported platform
        return f"TorchDynamo cannot load ({type(e).__name__})"
    if device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX") or "g++", "c++", "clang++")):
        return "no C++ compiler on PATH (the CPU backend needs one)"
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "Triton is not installed"
    return None


class CompiledForward:
    """model(x) through torch.compile, falling back to the module itself (with a one-line notice) if compiling
    fails: a failed compile runs nothing, so the fallback computes what the eager run would have."""

    def __init__(self, model: torch.nn.Module, notice):
        import torch._dynamo   # here, not per call: __call__ is every step's forward

        self.model, self.notice, self.failure = model, notice, torch._dynamo.exc.TorchDynamoException
        # dynamic=False: one graph per batch shape (full and last batch, test chunks), none slower than eager
        self.compiled = torch.compile(model, dynamic=False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(x)
            except self.failure as e:
                self.compiled = None
                self.notice(f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:120]}); training "
                            "eagerly (--compile off skips the attempt)")
        return self.model(x)

    @property
    def active(self) -> bool:
        return self.compiled is not None


def setup_compile(state: RunState, cfg: RunConfig, steps: int, device: torch.device, notice) -> bool:
    """Compile the run's forward when asked (on), or when it pays (auto: >= COMPILE_MIN_STEPS steps); where
    torch.compile is unavailable, say so in one line and train eagerly. Returns whether it compiles."""
    if cfg.compile == "off" or (cfg.compile == "auto" and steps < COMPILE_MIN_STEPS):
        return False
    why = compile_unavailable(device)
    if why:
        notice(f"torch.compile unavailable: {why}; training eagerly (--compile off silences this)")
        return False
    if device.type == "cpu":   # torch warns that it found no CUDA runtime when it looks for a compiler: noise here
        import logging

        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    state.forward = CompiledForward(state.model, notice)
    return True


def initial_rule_rate(cfg: RunConfig, num_classes: int = 10) -> float:
    """The rate an ELR-rule run (schedule elr) applies at its first step: lr0 / ||w0||^p over its norm set,
    from the initial weights build_state draws (same seed, layout and parameter order, so the same float32
    norm), leaving every global RNG untouched. num_classes sizes the head (CIFAR-10's by default), which the
    norm over all trainable weights includes when the head is trainable (resnet18)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return _new_state(cfg, num_classes, torch.device("cpu")).schedule.global_rate()


def environment(device: torch.device) -> dict:
    env = {"elr": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "threads": torch.get_num_threads(),
           "numpy": np.__version__, "cuda": torch.version.cuda, "platform": platform.platform()}
    try:
        import torchvision

        env["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cudnn"] = torch.backends.cudnn.version()
    try:
        env["git"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                    text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git"] = None
    return env


# ---------------------------------------------------------------------------------------------- run dir
class RunDirConflict(ConfigError):
    """The run directory holds another configuration. The advice depends on the caller (`elr train`: another
    --out; a study: another --runs-dir or --fresh), so the message names only the conflict."""


def check_run_dir(cfg: RunConfig, out: Path) -> None:
    """Refuse a directory that holds another configuration or cannot be written; touch nothing."""
    if runs.is_run_dir(out):
        saved = runs.read_config(out)
        try:
            old = RunConfig.from_dict({k: v for k, v in saved.items() if k != "env"})
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{out} holds an unreadable config.json ({e}); use another --out") from None
        old_id, new_id = old.identity(), cfg.identity()
        diff = [f"{k}: {old_id[k]!r} there, {new_id[k]!r} here" for k in new_id if old_id[k] != new_id[k]]
        if diff:
            raise RunDirConflict(f"{out} holds a different run ({'; '.join(diff)})")
        runs.check_metrics(out)     # before anything is rewritten: a resume must not drop a damaged line's neighbours
        return
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write the run directory {out}: {parent} is not a writable directory")


# ---------------------------------------------------------------------------------------------- epoch
class _SIRates:
    """The SI layers' current rates as a device tensor, rebuilt only when a rate changed: a rule recomputed
    per epoch (or a schedule) costs one host-to-device copy per epoch, not one per step."""

    def __init__(self, state: RunState, device):
        groups = {g["name"]: g for g in state.optimizer.param_groups}
        self.groups, self.device, self.key, self.tensor = [groups[n] for n in state.si], device, None, None

    def weighted(self, layer_sq: torch.Tensor) -> torch.Tensor:
        """The SI weights' one rate at this step (rule.si_rate: the ||w_l||^2-weighted mean)."""
        key = tuple(g["lr"] for g in self.groups)
        if key != self.key:
            self.key, self.tensor = key, torch.tensor(key, dtype=layer_sq.dtype, device=self.device)
        return si_rate(self.tensor, layer_sq)


class EpochPass:
    """One run's epoch, step by step: the batch order, the per-step metric sums (device tensors, no host
    sync), the optimizer step, and the epoch's record. run_epoch drives one run's forward and backward; a
    packed epoch (pack.py) drives K runs' together and hands each run its own loss and outputs."""

    def __init__(self, state: RunState, data: Data, cfg: RunConfig):
        self.state, self.data, self.cfg = state, data, cfg
        self.si_params = list(state.si.values())
        dev = data.x_train.device
        self.zero = lambda: torch.zeros((), device=dev)  # noqa: E731
        self.loss_sum, self.acc_sum, self.grad_sum, self.angle_sum = (self.zero() for _ in range(4))
        self.angle_sq_sum, self.geff_sq_sum, self.elr_sum = (self.zero() for _ in range(3))
        self.start = [p.detach().clone() for p in self.si_params]
        self.prev = [p.detach().clone() for p in self.si_params]
        state.schedule.on_epoch_start(state.epoch + 1)
        self.si_rates = _SIRates(state, dev)
        state.model.train()
        self.batches = batch_indices(len(data.y_train), cfg.batch_size, state.perm, dev)

    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.batches[i]
        return self.data.x_train[idx], self.data.y_train[idx]

    def step(self, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> None:
        """After loss.backward(): the step's metrics, the optimizer and schedule step, the angle it moved."""
        state, si_params, prev = self.state, self.si_params, self.prev
        if si_params:
            # the loss gradient (before weight decay) and the norm it is scaled by, at the same step
            g = global_norm([p.grad for p in si_params])
            torch._foreach_copy_(prev, [p.detach() for p in si_params])
            layer_sq = torch.stack(torch._foreach_norm(prev)) ** 2
            rho_sq = layer_sq.sum()
            self.grad_sum += g
            self.geff_sq_sum += g**2 * rho_sq        # Wan et al. 2021: G = ||g|| ||w||, squared for the RMS
            self.elr_sum += effective_lr(self.si_rates.weighted(layer_sq), rho_sq.sqrt())
        state.optimizer.step()
        state.schedule.on_step_end()
        if si_params:
            angle = angle_between(prev, [p.detach() for p in si_params])
            self.angle_sum += angle
            self.angle_sq_sum += angle**2
        self.loss_sum += loss.detach()
        self.acc_sum += (out.argmax(1) == y).float().mean()
        state.step += 1

    def finish(self) -> dict:
        """Evaluate, fetch everything in one host sync, and return the epoch's metrics record."""
        state, cfg, data, si_params = self.state, self.cfg, self.data, self.si_params
        n_batches = len(self.batches)
        test_loss, test_correct = evaluate(state, data)
        per_step = torch.stack([self.loss_sum, self.acc_sum, self.grad_sum, self.angle_sum, self.angle_sq_sum,
                                self.geff_sq_sum, self.elr_sum]) / n_batches
        record, extra = _norm_record(state, cfg, torch.cat([
            torch.stack([test_loss, test_correct]), per_step,
            angle_between(self.start, [p.detach() for p in si_params])[None] if si_params else self.zero()[None]]))
        (test_loss, test_correct, train_loss, train_acc, grad_norm, angle_step, angle_sq, geff_sq, elr_mean,
         angle_epoch) = extra
        state.epoch += 1
        return {
            "epoch": state.epoch, "step": state.step, **record, "train_loss": train_loss, "train_acc": train_acc,
            "test_loss": test_loss, "test_acc": test_correct / len(data.y_test),  # an exact count (< 2^24) / n in float64
            "grad_norm": grad_norm, "effective_grad_norm": grad_norm * record["si_norm"],  # Wan et al. 2021: G = ||g|| ||w||
            # the theory's quantities, each over the epoch's steps: the norm balance E[eta^2 ||g||^2] = 2 eta lam ||w||^2
            # is a mean-square law (Wan et al. 2021), so the angle and G are RMS, and the ELR is the rate each step had
            "angular_update": angle_epoch, "angular_update_per_step": angle_step,
            "angular_update_rms": math.sqrt(angle_sq), "effective_grad_norm_rms": math.sqrt(geff_sq),
            "elr_mean": elr_mean if record["si_norm"] > 0 else None,
            **_tau_by_layer(record, cfg, n_batches),
        }


def run_epoch(state: RunState, data: Data, cfg: RunConfig, on_step=None) -> dict:
    """One pass over the training data plus evaluation; returns the epoch's metrics record.
    on_step(i, n) is called after the i-th of n steps (host-side only: it must not read device tensors)."""
    epoch = EpochPass(state, data, cfg)
    n = len(epoch.batches)
    for i in range(n):
        x, y = epoch.batch(i)
        with state.autocast():
            out = state.forward(x)
            loss = F.cross_entropy(out, y)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        epoch.step(loss, out, y)
        if on_step is not None:
            on_step(i + 1, n)
    return epoch.finish()


def _norm_record(state: RunState, cfg: RunConfig, extra: torch.Tensor) -> tuple[dict, list[float]]:
    """The norms, rates and ELRs of the current weights, and `extra` (device scalars) fetched in the same
    host sync."""
    opt, si_params = state.optimizer, list(state.si.values())
    trainable = [p for p in state.model.parameters() if p.requires_grad]
    dev = extra.device
    layer_norms = torch.stack(torch._foreach_norm([p.detach() for p in si_params])) if si_params else torch.zeros(0, device=dev)
    norms = torch.stack([global_norm(trainable).to(dev), global_norm(si_params).to(dev) if si_params else torch.zeros((), device=dev)])
    host = torch.cat([norms, extra, layer_norms]).tolist()  # the epoch's one host sync
    weight_norm, si_norm = host[:2]
    by_layer = dict(zip(state.si, host[2 + extra.numel():]))
    names = [g["name"] for g in opt.param_groups]
    lrs = [g["lr"] for g in opt.param_groups]
    group_lr = dict(zip(names, lrs))
    si_rates = {group_lr[n] for n in by_layer}
    # the one rate the theory uses (rule.si_rate, as the step path's); one shared rate is that rate exactly
    lr_si = (None if si_norm <= 0 else si_rates.pop() if len(si_rates) == 1 else
             float(si_rate(np.array([group_lr[n] for n in by_layer]), np.array(list(by_layer.values())) ** 2)))
    return {
        "lr": lrs[0] if len(set(lrs)) == 1 else group_lr, "lr_si": lr_si, "weight_decay": cfg.weight_decay,
        "weight_norm": weight_norm, "si_norm": si_norm, "si_norm_by_layer": by_layer,
        "elr": effective_lr(lr_si, si_norm) if lr_si is not None else None,
        "elr_by_layer": {n: effective_lr(group_lr[n], w) for n, w in by_layer.items()},
    }, host[2:2 + extra.numel()]


def _tau_by_layer(record: dict, cfg: RunConfig, steps_per_epoch: int) -> dict:
    """Per-layer relaxation times (epochs) of a per-layer rule: each layer relaxes on its own clock."""
    if not (cfg.schedule == "elr" and cfg.elr_per_layer) or not isinstance(record["lr"], dict):
        return {}
    return {"tau_by_layer": {n: relaxation_steps(record["lr"][n], cfg.weight_decay, power=cfg.elr_power,
                                                 momentum=cfg.momentum) / steps_per_epoch
                             for n in record["si_norm_by_layer"]}}


def initial_record(state: RunState, data: Data, cfg: RunConfig) -> dict:
    """Epoch 0, before the first step: the test metrics, norms, and the rule's rate and ELR at initialisation."""
    state.schedule.on_epoch_start(1)  # idempotent: sets the rate epoch 1 will use, from the initial weights
    test_loss, test_correct = evaluate(state, data)
    record, (test_loss, test_correct) = _norm_record(state, cfg, torch.stack([test_loss, test_correct]))
    return {"epoch": 0, "step": 0, **record, "train_loss": None, "train_acc": None, "test_loss": test_loss,
            "test_acc": test_correct / len(data.y_test), "elr_mean": record["elr"], "wall_time": 0.0}


@torch.no_grad()
def evaluate(state: RunState, data: Data) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and the number correct over the whole test split, eval mode (device tensors)."""
    state.model.eval()
    loss, correct = torch.zeros((), device=data.x_test.device), torch.zeros((), device=data.x_test.device)
    for i in range(0, len(data.y_test), EVAL_BATCH):
        y = data.y_test[i:i + EVAL_BATCH]
        with state.autocast():
            out = state.forward(data.x_test[i:i + EVAL_BATCH])
        loss += F.cross_entropy(out.float(), y, reduction="sum")
        correct += (out.argmax(1) == y).sum()
    state.model.train()
    return loss / len(data.y_test), correct


def finite(record: dict) -> bool:
    return all(isinstance(record.get(k), float) and math.isfinite(record[k])
               for k in ("train_loss", "weight_norm", "si_norm"))


# ---------------------------------------------------------------------------------------------- run
class _StopRequest:
    """SIGINT/SIGTERM ask the loop to stop at the end of the epoch (after checkpointing); a second
    SIGINT interrupts at once (the last checkpoint still stands)."""

    def __init__(self):
        self.requested, self.saved = False, {}

    def __enter__(self):
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: no handlers, a kill still leaves the last checkpoint
            pass
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


# What the runs of one pack share: one data tensor on one device, one step shape, one numeric format.
PACK_KEYS = ("model", "width", "data", "subset", "test_subset", "data_seed", "batch_size", "precision", "device",
             "channels_last", "threads")


def train(cfg: RunConfig, out: str | os.PathLike, *, progress: bool | None = None) -> dict:
    """Train (or resume, or skip if finished) the run in `out`; returns its summary.

    Raises ConfigError / DataError on bad input before writing anything. A returned summary with
    "interrupted": True means the run stopped on a signal and can be resumed by calling again.
    """
    return train_many([(cfg, out)], progress=progress)[0]


def train_many(items: list[tuple[RunConfig, str | os.PathLike]], *, progress: bool | None = None,
               batched: bool | None = None) -> list[dict]:
    """Train K runs as one pack (K = 1: `elr train`): one process, one data tensor, and while two or more are at
    the same epoch one forward and backward per step for all of them (pack.py); each run is otherwise
    exactly itself (its seed, batch order, optimizer, schedule, BatchNorm statistics, run directory, metrics,
    checkpoint), so a pack's metrics equal the runs trained alone (bitwise unbatched, the default on a CPU;
    within float rounding batched, the default on CUDA: pack.py). Returns the summaries in order."""
    items = [(cfg, Path(out)) for cfg, out in items]
    for cfg, out in items:
        cfg.validate()
        check_run_dir(cfg, out)
    check_packable([cfg for cfg, _ in items])
    with ExitStack() as held:
        locked: set[Path] = set()

        def lock(out: Path) -> None:
            if out not in locked:
                held.enter_context(runs.locked(out))
                locked.add(out)

        for _, out in items:    # an existing directory at once: a second trainer is refused before loading data
            if out.is_dir() and not runs.run_ended(out):
                lock(out)
        done = {out: runs.read_summary(out) for _, out in items if runs.run_ended(out)}
        todo = [(cfg, out) for cfg, out in items if out not in done]
        if todo:
            show = sys.stderr.isatty() if progress is None else progress
            live = Progress(todo[0][0], sys.stderr, pack=len(todo)) if show else None
            try:
                done.update(_train_pack(todo, live, batched, lock))
            finally:
                if live:
                    live.close()
    return [done[out] for _, out in items]


def pack_key(cfg: RunConfig) -> dict:
    """What a run must share with the others of its pack (PACK_KEYS and their values)."""
    d = cfg.to_dict()
    return {k: d[k] for k in PACK_KEYS}


def check_packable(cfgs: list[RunConfig]) -> None:
    first = pack_key(cfgs[0])
    for cfg in cfgs[1:]:
        diff = [k for k, v in pack_key(cfg).items() if v != first[k]]
        if diff:
            raise ConfigError(f"runs packed together must share {', '.join(PACK_KEYS)}; these differ in "
                              f"{', '.join(diff)}")


@dataclass
class _Member:
    """One run of a pack: its configuration, directory, state, and this session's bookkeeping."""
    cfg: RunConfig
    out: Path
    state: RunState
    compiled: bool
    saved_epoch: int = -1
    diverged_epoch: int | None = None
    epoch_seconds: list = field(default_factory=list)
    eval_compile_seconds: float = 0.0   # epoch 0's evaluation made the eval-mode graphs: its excess over a rerun

    @property
    def open(self) -> bool:
        return self.state.epoch < self.cfg.epochs and self.diverged_epoch is None


def _open_run(cfg: RunConfig, out: Path, data: Data, device: torch.device, say, pack: int) -> _Member:
    """Build (or restore) one run's state and make its directory: config.json, metrics up to its checkpoint,
    the epoch-0 record."""
    state = build_state(cfg, data.num_classes, device)
    steps = cfg.epochs * n_batches(len(data.y_train), cfg.batch_size)
    # a pack's steps go through one vmapped forward for all its runs (not compiled): compile only a run alone
    compiled = pack == 1 and setup_compile(state, cfg, steps, device, say)
    if not runs.is_run_dir(out):
        # num_classes: what a diverged run's chance level is (claims.chance), even once the data has moved
        runs.write_json(out / runs.CONFIG, {**cfg.to_dict(), "env": {**environment(device), "compiled": compiled,
                                                                      "pack": pack, "num_classes": data.num_classes}})
    _restore(state, out, device, say)
    kept = runs.truncate_metrics(out, state.epoch)  # lines past the checkpoint (or a torn tail) are redone
    eval_compile = 0.0
    if state.epoch == 0 and runs.read_initial(out) is None:
        started = time.perf_counter()
        record = initial_record(state, data, cfg)
        first = time.perf_counter() - started
        runs.append_metrics(out, record)
        if compiled and state.forward.active:
            # the compile of the eval-mode graphs falls here, before any epoch is timed: time one more evaluation
            # (no state changes: eval mode, no gradient, no random numbers) and count the excess
            started = time.perf_counter()
            evaluate(state, data)[1].item()   # .item(): wait for the device
            eval_compile = max(0.0, first - (time.perf_counter() - started))
    # a run killed between its diverged epoch's checkpoint and its summary has ended there: its weights are NaN
    last = kept[-1] if kept else {}
    diverged = state.epoch if state.epoch > 0 and last.get("epoch") == state.epoch and not finite(last) else None
    # every run keeps its previous checkpoint while it trains: a damaged checkpoint.pt then costs a few epochs
    return _Member(cfg, out, state, compiled, saved_epoch=state.epoch, diverged_epoch=diverged,
                   eval_compile_seconds=eval_compile)


def _restore(state: RunState, out: Path, device: torch.device, say) -> None:
    """Restore the latest intact checkpoint: checkpoint.pt, else the previous one (where a kill fell between
    moving it aside and the new write, or checkpoint.pt is damaged: then it is kept aside as DAMAGED). A run
    with checkpoints but none intact raises RunDirError: never a silent restart over its metrics."""
    ckpt, prev = out / runs.CHECKPOINT, out / runs.CHECKPOINT_PREV
    damaged = []
    for path in (ckpt, prev):
        if not path.exists():
            continue
        try:
            state.restore(torch.load(path, map_location=device, weights_only=False))
        except Exception as e:   # truncated, empty, garbage: torch and pickle raise many kinds
            damaged.append((path, f"{type(e).__name__}: {' '.join(str(e).split())[:120]}".rstrip(": ")))
            continue
        if damaged:
            os.replace(ckpt, out / runs.CHECKPOINT_DAMAGED)   # never moved over the good previous one by a save
            say(f"{ckpt} is damaged ({damaged[0][1]}); resuming from {path.name} (epoch {state.epoch}); the "
                f"damaged file is kept as {runs.CHECKPOINT_DAMAGED}")
        return
    if damaged:
        raise runs.RunDirError(f"{damaged[0][0]} is damaged ({damaged[0][1]}) and no intact earlier checkpoint "
                               f"exists, so the epochs in {runs.METRICS} cannot be resumed: move {out} aside (or "
                               "delete it) to train this run from the start")


def _align(members: list[_Member], device: torch.device) -> None:
    """A pack killed between its runs' checkpoint writes left some runs one checkpoint ahead: step those back
    to their previous checkpoint, so that every run resumes from the same epoch and the pack recomputes exactly
    what an unbroken pack did. (Where no such checkpoint exists, the runs behind catch up alone.)"""
    low = min(m.state.epoch for m in members)
    for m in members:
        prev = m.out / runs.CHECKPOINT_PREV
        if m.state.epoch > low and prev.exists():
            ck = torch.load(prev, map_location=device, weights_only=False)
            if ck["epoch"] == low:
                m.state.restore(ck)
                runs.truncate_metrics(m.out, low)
                m.saved_epoch, m.diverged_epoch = low, None   # a divergence past `low` is redone with the pack


def check_input(cfg: RunConfig, data: Data) -> None:
    """One forward pass of the model on two training images, before the run directory is touched: images too
    small for its pooling (convnet_si needs 32x32) fail here in one line, not after config.json is written."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        model = build_model(cfg.model, width=cfg.width, num_classes=data.num_classes).to(data.x_train.device)
        try:
            model.eval()(data.x_train[:2])
        except RuntimeError as e:
            h, w, why = *data.x_train.shape[-2:], str(e).splitlines()[0][:100]
            raise DataError(f"{data.name}: model {cfg.model} cannot take its {h}x{w} images ({why}); use larger "
                            "images (CIFAR-10's are 32x32) or another --model") from None


def _make_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # e.g. a pseudo file system that refuses directories even to root: nothing written yet
        raise ConfigError(f"cannot create the run directory {out}: {e.strerror}; choose a writable --out") from None


def _train_pack(todo: list[tuple[RunConfig, Path]], live: Progress | None, batched: bool | None, lock) -> dict:
    cfg0 = todo[0][0]
    if live:
        live.note("loading data and building the model" + (f"s ({len(todo)} runs packed)" if len(todo) > 1 else ""))
    device = torch.device(cfg0.device)
    if cfg0.threads:
        # the reduction order, hence the last bits of every result, depends on the thread count: a study fixes it
        torch.set_num_threads(cfg0.threads)
    data = load_data(cfg0.data, subset=cfg0.subset, test_subset=cfg0.test_subset, seed=cfg0.data_seed,
                     device=device)
    if cfg0.channels_last:
        # NHWC once, here: a minibatch gathered from it (x[idx] along N) keeps the layout, so no per-step copy
        data.x_train = data.x_train.contiguous(memory_format=torch.channels_last)
        data.x_test = data.x_test.contiguous(memory_format=torch.channels_last)
    say = live.notice if live else (lambda text: print(f"elr: {text}", file=sys.stderr))
    check_input(cfg0, data)
    for cfg, out in todo:   # only now, the data being usable, does a new run directory appear
        _make_dir(out)
        lock(out)
        check_run_dir(cfg, out)     # another trainer may have made it between the first check and the lock
    members = [_open_run(cfg, out, data, device, say, len(todo)) for cfg, out in todo]
    _align(members, device)

    session_start = time.perf_counter()
    if live:
        live.begin(min(m.state.epoch for m in members))
        if any(m.compiled for m in members):
            live.note("compiling the model (the first epoch takes longer)")
    with _StopRequest() as stop:
        while any(m.open for m in members):
            # the runs at the lowest epoch step together (after a resume, a run one epoch behind catches up alone)
            low = min(m.state.epoch for m in members if m.open)
            active = [m for m in members if m.open and m.state.epoch == low]
            started = time.perf_counter()
            on_step = live.step if live else None
            if len(active) == 1:
                records = [run_epoch(active[0].state, data, active[0].cfg, on_step=on_step)]
            else:
                from .pack import run_packed_epoch

                records = run_packed_epoch([m.state for m in active], data, [m.cfg for m in active], on_step=on_step,
                                           batched=batched)
            seconds = time.perf_counter() - started
            for m, record in zip(active, records):
                m.epoch_seconds.append(seconds)
                _end_epoch(m, record, session_start, stop.requested)
            if live:
                live.epoch(records[0])
            if stop.requested:
                for m in members:   # every run stops at a checkpoint of its own last epoch
                    if m.open and m.saved_epoch != m.state.epoch:
                        _save(m, m.state.wall_time + time.perf_counter() - session_start)
                break
    return {m.out: _finish(m) for m in members}


def _save(m: _Member, wall_time: float) -> None:
    ckpt = m.out / runs.CHECKPOINT
    if ckpt.exists():
        os.replace(ckpt, m.out / runs.CHECKPOINT_PREV)   # atomic: a kill here leaves the previous one to resume from
    runs.atomic_write(ckpt, lambda f: torch.save(m.state.checkpoint(wall_time), f))
    m.saved_epoch = m.state.epoch


def _end_epoch(m: _Member, record: dict, session_start: float, stopping: bool) -> None:
    """Log one finished epoch of a run: its metrics line, divergence, schedule, checkpoint (the best accuracy is
    the summary's, read from the metrics lines)."""
    state, cfg = m.state, m.cfg
    record["wall_time"] = state.wall_time + time.perf_counter() - session_start
    if not finite(record):
        m.diverged_epoch = state.epoch
    runs.append_metrics(m.out, record)
    state.schedule.on_epoch_end(state.epoch, record["test_loss"])
    last = m.diverged_epoch is not None or state.epoch == cfg.epochs or stopping
    if last or state.epoch % cfg.checkpoint_every == 0:
        _save(m, record["wall_time"])


def _finish(m: _Member) -> dict:
    if m.open:
        return {"interrupted": True, "epochs_done": m.state.epoch, "epochs": m.cfg.epochs}
    (m.out / runs.CHECKPOINT_PREV).unlink(missing_ok=True)   # the run ended: nothing will align to it
    summary = summarize(runs.read_metrics(m.out), m.cfg, m.diverged_epoch)
    active = m.compiled and m.state.forward.active
    # the compile's cost: the first epoch's excess over the second (both in this session), plus, in a session
    # that began the run, epoch 0's evaluation's excess over a second one (the eval-mode graphs)
    excess = m.epoch_seconds[0] - m.epoch_seconds[1] + m.eval_compile_seconds if len(m.epoch_seconds) > 1 else None
    summary.update(compiled=active, compile_seconds=round(excess, 2) if active and excess is not None else None)
    runs.write_json(m.out / runs.SUMMARY, summary)
    return summary


def summarize(records: list[dict], cfg: RunConfig, diverged_epoch: int | None) -> dict:
    accs = [r["test_acc"] for r in records]
    finite_accs = [(a, r["epoch"]) for a, r in zip(accs, records) if a is not None and math.isfinite(a)]
    best = max(finite_accs, key=lambda acc_epoch: acc_epoch[0], default=(None, None))  # ties: the first epoch
    last = records[-1] if records else {}
    return {
        "final_test_acc": last.get("test_acc"), "best_test_acc": best[0], "best_epoch": best[1],
        "final_train_loss": last.get("train_loss"), "epochs": cfg.epochs, "epochs_done": last.get("epoch", 0),
        "steps": last.get("step", 0), "finished": diverged_epoch is None, "diverged": diverged_epoch is not None,
        "diverged_epoch": diverged_epoch, "wall_time": last.get("wall_time"),
    }


class Progress:
    """`elr train`'s live line, rewritten in place: within an epoch at most every `every` seconds (one epoch of
    a large model on a CPU takes minutes, and the user should see it move from the first step), and after
    every epoch with its metrics. Display state only: nothing here touches the run."""

    def __init__(self, cfg: RunConfig, stream, every: float = 1.0, pack: int = 1):
        self.cfg, self.stream, self.every, self.pack = cfg, stream, every, pack
        self.start, self.first_epoch, self.current = time.perf_counter(), 0, 1
        self.last, self.width, self.open = -math.inf, 0, False

    def begin(self, first_epoch: int) -> None:
        self.start, self.first_epoch, self.current = time.perf_counter(), first_epoch, first_epoch + 1

    def _write(self, line: str) -> None:
        self.stream.write("\r" + line.ljust(self.width))
        self.stream.flush()
        self.width, self.open = len(line), True

    def note(self, text: str) -> None:
        self._write(f"{text} ...")

    def notice(self, text: str) -> None:
        """A line that stays (a fallback, a warning), above the live line."""
        self.close()
        self.stream.write(f"elr: {text}\n")
        self.stream.flush()
        self.width = 0

    def _eta(self, epochs_done: float) -> str:
        done = epochs_done - self.first_epoch
        if done <= 0:
            return "eta ?"
        return f"eta {duration((time.perf_counter() - self.start) / done * (self.cfg.epochs - epochs_done))}"

    def step(self, i: int, n: int) -> None:
        now = time.perf_counter()
        if now - self.last < self.every:
            return
        self.last = now
        self._write(f"epoch {self.current}/{self.cfg.epochs}  step {i}/{n}  {duration(now - self.start)}  "
                    f"{self._eta(self.current - 1 + i / n)}")

    def epoch(self, r: dict) -> None:
        self.current = r["epoch"] + 1
        lr = r["lr"] if isinstance(r["lr"], float) else float(np.mean(list(r["lr"].values())))
        fmt = lambda v, f: "nan" if v is None else format(v, f)  # noqa: E731
        runs_ = f" x{self.pack} runs" if self.pack > 1 else ""
        self._write(f"epoch {r['epoch']}/{self.cfg.epochs}{runs_}  loss {fmt(r['train_loss'], '.4f')}  "
                    f"acc {fmt(r['train_acc'], '.3f')}  test {fmt(r['test_acc'], '.3f')}  lr {lr:.3g}  "
                    f"elr {fmt(r['elr'], '.3g')}  {self._eta(r['epoch'])}")

    def close(self) -> None:
        """End the line (also on an error, so that the error message starts a line of its own)."""
        if self.open:
            self.stream.write("\n")
            self.stream.flush()
            self.open = False
