"""The study: the design file expanded into run configurations, trained cooperatively, then judged.

    design.toml --expand()--> [(name, RunConfig)] --train_all()--> RUNS/<name>/ --evaluate()--> verdicts

`train_all` is safe to call from several processes at once (pytest-xdist workers, shells, cluster tasks on
nodes sharing a file system): each run is claimed with its run lock (elr.runlock: an advisory flock the kernel
releases if the process dies, or a lease file where flock does not hold across nodes), finished runs are
reused and interrupted ones resume from their checkpoints. Every process returns only when every run has
ended.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import shutil
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import runs as rundir
from .config import ConfigError, RunConfig, load_mapping
from .progress import duration
from .runlock import RunLock, lock_files

DESIGN_KEYS = {"batch_size", "elr", "baseline", "sgd", "controls", "scales"}
# One intra-op thread per run, whatever -n is: a run's numbers depend on the thread count (reduction order),
# so a serial study and one under -n N train identically, and N workers never oversubscribe the cores.
STUDY_THREADS = 1
# runs per pack on CUDA by default (--pack overrides): the largest K issue 8 asks the bench to measure; not yet
# measured on a GPU here, so `python -m elr bench --device cuda` is the way to choose it on a given card
PACK_CUDA = 16
SCALE_KEYS = {"model", "width", "data", "subset", "test_subset", "epochs", "checkpoint_every"}  # what, and how often to save


@dataclass
class Design:
    batch_size: int
    elr: dict
    baseline: dict
    scales: dict
    sgd: dict | None = None        # the third arm (H6): plain SGD on the ELR grid; None = no such arm
    controls: dict | None = None   # detector controls: {name: run settings (+ by_scale overrides)}

    @classmethod
    def load(cls, path: str | Path) -> "Design":
        d = load_mapping(path)
        unknown = sorted(set(d) - DESIGN_KEYS)
        if unknown:
            raise ConfigError(f"design {path}: unknown key(s) {', '.join(unknown)}; accepted: {', '.join(sorted(DESIGN_KEYS))}")
        for name, scale in d.get("scales", {}).items():
            bad = sorted(set(scale) - SCALE_KEYS)
            if bad:
                raise ConfigError(f"design {path}: scale {name!r} sets {', '.join(bad)}; a scale sets only "
                                  f"{', '.join(sorted(SCALE_KEYS))}")
        try:
            return cls(d["batch_size"], d["elr"], d["baseline"], d["scales"], d.get("sgd"), d.get("controls"))
        except KeyError as e:
            raise ConfigError(f"design {path}: missing key {e.args[0]!r}; required: batch_size, elr, baseline, scales") from None

    def scale(self, name: str) -> dict:
        if name not in self.scales:
            raise ConfigError(f"unknown scale {name!r}; accepted: {', '.join(self.scales)}")
        return dict(self.scales[name])


def schedule_settings(schedule: str, epochs: int) -> dict:
    """Schedule parameters proportional to the run length, so a scale changes epochs, not the design."""
    return {
        "step": {"step_size": max(1, epochs // 3), "gamma": 0.1},
        "multistep": {"milestones": [max(1, epochs // 2), max(2, 3 * epochs // 4)], "gamma": 0.1},
        "exponential": {"gamma": 0.01 ** (1 / epochs)},  # decays 100x over the run
        "warmup": {"warmup_epochs": max(1, epochs // 20)},
        "plateau": {"plateau_patience": max(2, epochs // 20), "gamma": 0.1},
    }.get(schedule, {})


def baseline_draws(baseline: dict) -> list[dict]:
    """The random optimizer x schedule x lr x L2 draws: the same list for the same seed, on any machine."""
    rng = np.random.default_rng(baseline["seed"])
    loguniform = lambda lo, hi: float(math.exp(rng.uniform(math.log(lo), math.log(hi))))  # noqa: E731
    draws = []
    for _ in range(baseline["count"]):
        opt = str(rng.choice(baseline["optimizers"]))
        sched = str(rng.choice(baseline["schedules"]))
        lr = loguniform(*baseline["lr"][opt])
        wd = loguniform(*baseline["weight_decay"])
        momentum = float(rng.choice(baseline["momentum"])) if opt in ("sgd", "rmsprop") else 0.0
        draws.append({"optimizer": opt, "schedule": sched, "lr": lr, "weight_decay": wd, "momentum": momentum})
    return draws


def expand(design: Design, scale_name: str, *, seeds: int = 1, data: str | None = None,
           device: str = "cpu", check_device: bool = True) -> list[tuple[str, RunConfig]]:
    """Every run of the study at one scale, times `seeds`: the 8 ELR grid points, the baseline draws, the
    plain-SGD twins of the grid points (H6) and the detector controls. check_device=False: a cluster
    controller's configs, for a device its tasks have and it may not (a login node without GPUs)."""
    from .training.train import initial_rule_rate

    scale = design.scale(scale_name)
    if data:
        scale["data"] = data
    base = dict(scale, batch_size=design.batch_size, device=device, threads=STUDY_THREADS)
    elr = {k: v for k, v in design.elr.items() if k not in ("lr0", "weight_decay")}
    grid = [(lr0, wd) for lr0 in design.elr["lr0"] for wd in design.elr["weight_decay"]]
    arms = [(f"elr-lr{lr0:g}-wd{wd:g}", "elr", dict(elr, lr=lr0, weight_decay=wd), {}) for lr0, wd in grid]
    arms += [(f"base{i}-{d['optimizer']}-{d['schedule']}-lr{d['lr']:.3g}-wd{d['weight_decay']:.2g}", "baseline", d, {})
             for i, d in enumerate(baseline_draws(design.baseline))]
    if design.sgd is not None:
        arms += [(f"sgd-twin-lr{lr0:g}-wd{wd:g}", "sgd", dict(design.sgd, weight_decay=wd),
                  {"twin": f"elr-lr{lr0:g}-wd{wd:g}", "lr0": lr0}) for lr0, wd in grid]
    for name, settings in (design.controls or {}).items():
        settings = dict(settings)
        settings.update(settings.pop("by_scale", {}).get(scale_name, {}))
        settings["epochs"] = int(round(settings.pop("epochs_factor", 1) * base["epochs"]))
        arms.append((f"control-{name}", "control", settings, {"control": name}))
    out = []
    for seed in range(seeds):
        for i, (name, group, settings, labels) in enumerate(arms):
            run_name = f"{i:02d}-{name}" + (f"-s{seed}" if seeds > 1 else "")
            cfg = {**base, **settings, **schedule_settings(settings["schedule"], settings.get("epochs", base["epochs"])),
                   "seed": seed,
                   "labels": {"group": group, "scale": scale_name, "config_id": name, **labels}}
            if group == "sgd":  # the twin's first step size, from the same initial weights
                twin = RunConfig.from_dict({**cfg, **elr, "lr": labels["lr0"]})
                cfg["lr"] = initial_rule_rate(twin)
                cfg["labels"]["matched_lr"] = cfg["lr"]
            if check_device:
                out.append((run_name, RunConfig.from_dict(cfg).validate()))
            else:               # validated here on a CPU, then given the tasks' device (they validate it there)
                cpu = RunConfig.from_dict({**cfg, "device": "cpu"}).validate()
                out.append((run_name, dataclasses.replace(cpu, device=device)))
    return out


def default_design() -> Path:
    """The study's design file: experiments/design.toml in a checkout, else the copy an installed elr ships
    (package elr.experiments)."""
    checkout = Path(__file__).resolve().parent.parent / "experiments" / "design.toml"
    if checkout.is_file():
        return checkout
    import importlib.util

    spec = importlib.util.find_spec("elr.experiments")
    return Path(next(iter(spec.submodule_search_locations))) / "design.toml" if spec else checkout


def pack_groups(configs: list[tuple[str, RunConfig]]) -> list[list[tuple[str, RunConfig]]]:
    """The runs that can share a step (elr.training.train.PACK_KEYS), in design order, so that the same study packs the
    same runs every time (a resumed pack recomputes what an unbroken one did)."""
    from .training.train import pack_key

    groups: dict[str, list[tuple[str, RunConfig]]] = {}
    for name, cfg in configs:
        groups.setdefault(repr(pack_key(cfg)), []).append((name, cfg))
    return list(groups.values())


def auto_pack(device: str) -> int:
    """The default pack size: 1 on a CPU (packing K models into one step was slower there than K steps in
    turn: issue 8's measurements), PACK_CUDA on a GPU, where one batch-128 step leaves most of the chip idle."""
    return 1 if device == "cpu" else PACK_CUDA


def train_all(configs: list[tuple[str, RunConfig]], root: str | Path, *, progress: bool = False,
              pack: int = 1, lock: RunLock = RunLock()) -> list[Path]:
    """Train every run not yet ended, cooperating with other processes on the same `root`.

    First pass: take unclaimed runs, up to `pack` at a time among runs that can share a step (the same model,
    data, batch size and precision: elr.training.train.PACK_KEYS), and train each group as one pack. Second pass: wait
    on the runs others hold, and finish any whose holder died. `lock` is how runs are claimed (elr.runlock:
    flock, or a lease file where the filesystem does not honour flock across nodes). Raises ConfigError if a
    run directory holds a different configuration.
    """
    from .training.train import RunDirConflict, train_many

    root = Path(root)

    def run(group: list[tuple[str, RunConfig]]) -> None:
        try:
            summaries = train_many([(cfg, root / name) for name, cfg in group], progress=progress)
        except RunDirConflict as e:
            raise ConfigError(f"{e}; the design changed under this runs directory: use another "
                              "--runs-dir, or --fresh to start this scale over") from None
        for (name, _), summary in zip(group, summaries):
            if summary.get("interrupted"):
                raise KeyboardInterrupt(f"run {name} interrupted at epoch {summary['epochs_done']}")

    for members in pack_groups(configs):
        while True:
            with ExitStack() as held:
                mine = []
                for name, cfg in members:
                    if len(mine) == pack:
                        break
                    if rundir.run_ended(root / name):
                        continue
                    if held.enter_context(lock.claim(root, name, False)) and not rundir.run_ended(root / name):
                        mine.append((name, cfg))
                if not mine:
                    break
                run(mine)
    for name, cfg in configs:
        if rundir.run_ended(root / name):
            continue
        with lock.claim(root, name, True) as mine:
            if mine and not rundir.run_ended(root / name):
                run([(name, cfg)])
    return [root / name for name, _ in configs]


class StudyProgress:
    """A study's progress, read from its runs directory (so it sees every worker's runs, xdist or not) and
    written by a daemon thread: on a terminal one line rewritten in place every `every` seconds, otherwise
    (a CI log) a plain line every `every` seconds. Stopping writes a last line."""

    def __init__(self, configs: list[tuple[str, RunConfig]], root: str | Path, *, label: str, stream,
                 every: float, tty: bool):
        self.epochs = {name: cfg.epochs for name, cfg in configs}
        self.root, self.label, self.stream, self.every, self.tty = Path(root), label, stream, every, tty
        self.started = time.monotonic()
        self.done_at_start = self._epochs_done()[0]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="elr-study-progress")

    def _epochs_done(self) -> tuple[int, list[str], int]:
        """(epochs trained so far, 'name epoch e/E' of runs in progress, runs ended)."""
        done, running, ended = 0, [], 0
        for name, total in self.epochs.items():
            path = self.root / name
            if rundir.run_ended(path):
                done, ended = done + total, ended + 1
                continue
            metrics = path / rundir.METRICS
            n = metrics.read_bytes().count(b"\n") - 1 if metrics.exists() else 0   # minus the epoch-0 record
            if n > 0:
                done += min(n, total)
                running.append(f"{name} epoch {min(n, total)}/{total}")
        return done, running, ended

    def line(self) -> str:
        done, running, ended = self._epochs_done()
        total = sum(self.epochs.values())
        elapsed = time.monotonic() - self.started
        rate = (done - self.done_at_start) / elapsed if elapsed > 0 else 0.0
        eta = f", ETA {duration((total - done) / rate)}" if rate > 0 and done < total else ""
        now = f"; training {', '.join(running)}" if running else ""
        return (f"elr study {self.label}: {ended}/{len(self.epochs)} runs done, {done}/{total} epochs, "
                f"{duration(elapsed)} elapsed{eta}{now}")

    def _write(self, text: str, final: bool = False) -> None:
        self.stream.write(("\r" + text + "\x1b[K" + ("\n" if final else "")) if self.tty else text + "\n")
        self.stream.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._write(self.line())

    def start(self) -> "StudyProgress":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._write(self.line(), final=True)


def fresh(root: str | Path) -> None:
    """Start a study over: remove its runs directory (only a directory that holds run directories)."""
    root = Path(root)
    if root.is_dir():
        if any(p.is_file() and p not in lock_files(root) for p in root.iterdir()):
            raise ConfigError(f"--fresh refuses to delete {root}: it holds files that are not runs")
        shutil.rmtree(root)


def meta(loaded: list[rundir.Run], **extra) -> dict:
    """The report's Setup section, read from the runs themselves."""
    cfgs = [r.config for r in loaded]
    env = cfgs[0].get("env", {}) if cfgs else {}

    def values(key):
        return sorted({str(c.get(key)) for c in cfgs})

    walls = [r.summary.get("wall_time") or 0.0 for r in loaded if r.summary]
    return {
        "scale": ", ".join(sorted({(c.get("labels") or {}).get("scale", "?") for c in cfgs})),
        "date": _dt.date.today().isoformat(),
        "data": ", ".join(values("data")), "subset": ", ".join(values("subset")),
        "test_subset": ", ".join(values("test_subset")),
        "model": ", ".join(values("model")), "width": ", ".join(values("width")),
        "epochs": ", ".join(values("epochs")), "batch_size": ", ".join(values("batch_size")),
        "seeds": len(set(values("seed"))), "runs": len(loaded),
        "device": env.get("gpu") or ", ".join(values("device")),
        "versions": {k: env.get(k) for k in ("elr", "torch", "torchvision", "numpy", "python", "cuda", "git")},
        "wall_time_runs_s": round(sum(walls), 1),
        **extra,
    }


def evaluate(loaded: list[rundir.Run]):
    from .analysis.claims import evaluate_all

    return evaluate_all(loaded)


def find_studies(path: str | Path) -> list[Path]:
    """The study directories (directories of run directories) at or below `path`: its subdirectories that
    hold run directories (RUNS_DIR/<scale>/<run>/), or else `path` itself. A lone run beside them (runs/demo)
    is not a study. Raises ConfigError when there is none."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"runs directory {path} does not exist")
    below = sorted(d for d in path.iterdir() if d.is_dir() and not rundir.is_run_dir(d) and rundir.list_runs(d))
    if below:
        return below
    if not rundir.is_run_dir(path) and rundir.list_runs(path):
        return [path]
    raise ConfigError(f"no study in {path}: expected run directories (each with config.json) in it or in its "
                      "subdirectories, as pytest experiments/ leaves them in RUNS_DIR/<scale>/")


def report_dir(base: str | Path, name: str, source: Path) -> Path:
    """BASE/NAME, or BASE/NAME-2, -3, ... when BASE/NAME holds the report of another runs directory: a
    report is rebuilt in place only from the runs it was made from (report.SOURCE records them)."""
    from .analysis.report import REPORT_MD, SOURCE

    base, k = Path(base), 1
    while True:
        out = base / (name if k == 1 else f"{name}-{k}")
        made_from = out / SOURCE
        if not (out / REPORT_MD).exists() or (made_from.is_file() and
                                              made_from.read_text().strip() == str(source.resolve())):
            return out
        k += 1


def rebuild_report(runs_dir: str | Path, out: str | Path | None = None, *, reports: str | Path = "reports",
                   on_load=None) -> list[Path]:
    """`python -m elr report PATH`: verdicts and figures from existing run directories, no training, one
    report per study found (find_studies). Default REPORTS: reports/<scale>-<date>/ (report_dir); with
    `out`, exactly there for one study, out/<scale>-<date>/ for several. on_load(root, runs) sees each study's
    loaded runs before its report is written."""
    from .analysis.report import write_report

    studies = find_studies(runs_dir)
    made = []
    for root in studies:
        loaded = rundir.load_runs(root)
        if on_load is not None:
            on_load(root, loaded)
        info = meta(loaded)
        name = f"{info['scale'].replace(', ', '+')}-{info['date']}"
        target = Path(out) if out and len(studies) == 1 else report_dir(out or reports, name, root)
        made.append(write_report(target, evaluate(loaded), loaded, info))
    return made
