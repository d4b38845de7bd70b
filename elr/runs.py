"""The run directory: the one interface between training and analysis.

    RUN/config.json      the fully resolved configuration + software versions (written once)
    RUN/metrics.jsonl    one JSON object per epoch, appended, flushed and fsynced every epoch
    RUN/checkpoint.pt    the latest resumable state (written atomically)
    RUN/summary.json     written when the run ends (finished or diverged)

Everything the claims and the report need is in config.json + metrics.jsonl (+ summary.json), so a
report can be rebuilt from runs made elsewhere. Non-finite floats are stored as null (strict JSON).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import Counter
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np

from .config import ConfigError
from .runlock import flock

CONFIG, METRICS, CHECKPOINT, SUMMARY = "config.json", "metrics.jsonl", "checkpoint.pt", "summary.json"
# a run keeps its previous checkpoint while it trains: a pack killed between its runs' checkpoint writes resumes
# every run from the same epoch (elr.training.train.train_many), so a resumed pack computes what an unbroken one
# did; and a damaged checkpoint.pt costs the epochs since the previous one, not the run
CHECKPOINT_PREV = "checkpoint.prev.pt"
CHECKPOINT_DAMAGED = "checkpoint.damaged.pt"   # a checkpoint that failed to load, kept aside, never read again
# the trainer's flock, held for the whole session: two trainers on one directory would write every epoch twice
LOCK = ".lock"


class RunDirError(ConfigError):
    """A run directory whose files cannot be used as they are; the message is one line naming the file and
    what to do."""


class RunDirBusy(RunDirError):
    """Another process holds the run directory's lock: it is training there now."""


@contextmanager
def locked(run_dir: str | os.PathLike):
    """Hold RUN/.lock (runlock.flock: exclusive, released by the kernel if the process dies) or raise RunDirBusy
    at once. The directory must exist; one that cannot be written raises RunDirError."""
    path = Path(run_dir) / LOCK
    with ExitStack() as stack:
        try:
            mine = stack.enter_context(flock(path, block=False))
        except OSError as e:
            raise RunDirError(f"cannot write the run directory {run_dir}: {e.strerror or e}") from None
        if not mine:
            raise RunDirBusy(f"{run_dir} is being trained by another process now (it holds {path}); wait for "
                             "it to end or stop it, then rerun")
        yield


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write) -> None:
    """Write through `write(fileobj)` into a temp file in the same directory, then os.replace it:
    a reader (or a crash) sees the old file or the new one, never a torn one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; the final file gets the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise RunWriteError(path, e) from None
        raise
    _fsync_dir(path.parent)


class RunWriteError(RunDirError):
    """A write that failed (disk full, a read-only file system): the file it was writing is as it was."""

    def __init__(self, path, error: OSError):
        super().__init__(f"cannot write {path}: {error.strerror or error}; every file written before is intact: "
                         "free space (or make it writable) and rerun the same command")


def _write(f, data: bytes) -> None:
    """All of `data` into the unbuffered file `f` (a raw write may take part of it)."""
    view = memoryview(data)
    while view:
        view = view[f.write(view):]


def clean_json(obj):
    """Replace non-finite floats by None recursively (strict JSON has no NaN/inf)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, np.generic):
        return clean_json(obj.item())
    return obj


def json_float(x) -> float | None:
    """One number as strict JSON takes it: a float, or None for a missing or non-finite value."""
    return float(x) if x is not None and math.isfinite(float(x)) else None


def dumps(obj) -> str:
    return json.dumps(clean_json(obj), allow_nan=False, sort_keys=False)


def write_json(path: str | os.PathLike, obj) -> None:
    data = (json.dumps(clean_json(obj), indent=2, allow_nan=False) + "\n").encode()
    atomic_write(path, lambda f: f.write(data))


def read_json(path: str | os.PathLike):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def append_metrics(run_dir: str | os.PathLike, record: dict) -> None:
    """Append one epoch as one line, flushed and fsynced: a crash leaves at most a torn last line,
    which `read_metrics` ignores and `truncate_metrics` removes."""
    line = _line(record)
    path = Path(run_dir) / METRICS
    with open(path, "ab", buffering=0) as f:
        start = f.seek(0, os.SEEK_END)
        try:
            _write(f, line)
            os.fsync(f.fileno())
        except OSError as e:
            try:    # a part-written line followed by the next append would be a damaged line mid-file
                os.ftruncate(f.fileno(), start)
            except OSError:
                pass    # then it stays the torn last line, which a resume drops
            raise RunWriteError(path, e) from None


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The trained epochs' records (epoch >= 1) in order; see `read_initial` for epoch 0."""
    return [r for r in _read_records(run_dir) if r["epoch"] >= 1]    # every record has an int epoch (_valid_record)


def read_initial(run_dir: str | os.PathLike) -> dict | None:
    """The epoch-0 record (the state at initialisation, before the first step), or None (older runs)."""
    return next((r for r in _read_records(run_dir) if r.get("epoch") == 0), None)


def _valid_record(obj) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("epoch"), int) and not isinstance(obj["epoch"], bool)


def scan_metrics(run_dir: str | os.PathLike) -> tuple[list[dict], list[tuple[int, str]], bool]:
    """(records, damaged, torn): the complete records in order; the 1-based numbers and descriptions of damaged
    lines before the last one (garbage, blank, not a record with an integer epoch); and whether the last line is
    torn. Only the last line can be torn by a crash mid-append (every line is written and fsynced whole), so a
    damaged line anywhere else is damage from outside, which must never cost the lines around it."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return [], [], False
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    # an unterminated last line is torn even where it parses: the crash fell inside its one write
    torn = lines.pop() != b""
    records, damaged = [], []
    for number, raw in enumerate(lines, 1):
        try:
            obj = json.loads(raw)
            why = None if _valid_record(obj) else "not a record with an integer epoch"
        except ValueError:
            why = "blank" if not raw.strip() else "not JSON"
        if why is None:
            records.append(obj)
        elif number == len(lines) and not torn:
            torn = True     # the old reading of a crash's last line, kept: it is dropped and redone
        else:
            damaged.append((number, why))
    return records, damaged, torn


def _read_records(run_dir: str | os.PathLike) -> list[dict]:
    """All complete records in order; a torn last line and damaged lines are skipped (`Run.problems` names them)."""
    return scan_metrics(run_dir)[0]


def check_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """Refuse to resume over a damaged line: rewriting the log would drop it, and the lines after it with it
    in older versions. Raises RunDirError naming the first damaged line; returns the records otherwise."""
    records, damaged, _ = scan_metrics(run_dir)
    if damaged:
        path = Path(run_dir) / METRICS
        others = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
        number, why = damaged[0]
        raise RunDirError(f"{path} line {number} is damaged ({why}){others}; every other line is intact: "
                          f"repair or delete that line, then rerun to resume")
    return records


def _line(record: dict) -> bytes:
    return (dumps(record) + "\n").encode()


def write_metrics(run_dir: str | os.PathLike, records: list[dict]) -> None:
    """Replace RUN/metrics.jsonl by `records` in one atomic write, in append_metrics' line format."""
    data = b"".join(_line(r) for r in records)
    atomic_write(Path(run_dir) / METRICS, lambda f: f.write(data))


def truncate_metrics(run_dir: str | os.PathLike, last_epoch: int) -> list[dict]:
    """Keep the records with epoch <= last_epoch (those the checkpoint covers), rewritten atomically; a torn
    last line goes. Refuses (RunDirError) when a line before the last is damaged."""
    kept = [r for r in check_metrics(run_dir) if r["epoch"] <= last_epoch]
    write_metrics(run_dir, kept)
    return kept


def _read_mapping(path: Path, advice: str) -> dict:
    try:
        obj = read_json(path)
    except OSError as e:
        raise RunDirError(f"cannot read {path}: {e.strerror or e}; {advice}") from None
    except ValueError as e:    # not JSON, not UTF-8
        raise RunDirError(f"{path} is damaged (not valid JSON: {' '.join(str(e).split())}); {advice}") from None
    if not isinstance(obj, dict):
        raise RunDirError(f"{path} is damaged (a JSON {type(obj).__name__}, not an object); {advice}")
    return obj


def read_config(run_dir: str | os.PathLike) -> dict:
    """The run's config.json; RunDirError (one line) where it cannot be read or is not a JSON object."""
    return _read_mapping(Path(run_dir) / CONFIG, "repair it, or move the run directory aside")


def read_summary(run_dir: str | os.PathLike) -> dict | None:
    """The run's summary.json, None before the run ended; RunDirError where it is damaged (it is derived from
    the checkpoint and the metrics, so deleting it and rerunning the training command rebuilds it)."""
    path = Path(run_dir) / SUMMARY
    if not path.exists():
        return None
    return _read_mapping(path, "delete it and rerun the training command to rebuild it from the checkpoint")


def run_ended(run_dir: str | os.PathLike) -> bool:
    """True when the run wrote its summary as finished or diverged: nothing left to train."""
    s = read_summary(run_dir)
    return s is not None and bool(s.get("finished") or s.get("diverged"))


def is_run_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG).is_file()


def list_runs(root: str | os.PathLike) -> list[Path]:
    """Run directories directly below `root` (or `root` itself if it is one), sorted by name."""
    root = Path(root)
    if is_run_dir(root):
        return [root]
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and is_run_dir(p))


def series(records: list[dict], key: str) -> np.ndarray:
    """One scalar metric over epochs as float64, None -> nan."""
    return np.array([np.nan if r.get(key) is None else float(r[key]) for r in records], dtype=np.float64)


def _gaps(metrics: list[dict], config: dict, summary: dict | None) -> list[str]:
    """What a run's logged epochs lack against each other, its config and its summary: an analysis of them
    would silently see another run than the one the runs table describes."""
    out, epochs = [], [r["epoch"] for r in metrics]
    twice = sorted(e for e, n in Counter(epochs).items() if n > 1)
    if twice:
        out.append(f"epochs logged more than once: {_epoch_text(twice)}")
    missing = sorted(set(range(1, max(epochs, default=0) + 1)) - set(epochs))
    if missing:
        out.append(f"epochs missing from {METRICS}: {_epoch_text(missing)}")
    planned, last = config.get("epochs"), max(epochs, default=0)
    if summary is None:
        out.append(f"unfinished: no {SUMMARY}, {last} of {planned} epochs logged")
    else:
        done = summary.get("epochs_done")
        if done != last:
            out.append(f"{SUMMARY} says {done} epochs done, {METRICS} holds {last}")
        elif summary.get("finished") and isinstance(planned, int) and last < planned:
            out.append(f"{SUMMARY} says finished, but only {last} of the {planned} configured epochs were logged")
    return out


def _epoch_text(epochs: list[int], limit: int = 10) -> str:
    return ", ".join(map(str, epochs[:limit])) + (f" ... ({len(epochs)} in all)" if len(epochs) > limit else "")


class Run:
    """One run directory, loaded: what every claim and figure reads. `problems` lists, one phrase each, what is
    damaged or incomplete in it (empty for a whole run)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.name = self.path.name
        self.config = read_config(self.path)
        records, damaged, torn = scan_metrics(self.path)
        self.metrics = [r for r in records if r["epoch"] >= 1]            # scan_metrics: each has an int epoch
        self.initial = next((r for r in records if r.get("epoch") == 0), None)  # None: made before epoch 0 was logged
        self.problems = [f"{METRICS} line {n} is damaged ({why}) and skipped" for n, why in damaged]
        if torn:
            self.problems.append(f"{METRICS} ends in a torn line (a crash mid-write), skipped")
        try:
            self.summary = read_summary(self.path)
        except RunDirError as e:
            self.summary = None
            self.problems.append(f"{e} (read as unfinished)")
        self.problems += _gaps(self.metrics, self.config, self.summary)

    @property
    def group(self) -> str | None:
        """The study arm ("elr" or "baseline") recorded in config["labels"], None outside a study."""
        return (self.config.get("labels") or {}).get("group")

    def series(self, key: str) -> np.ndarray:
        return series(self.metrics, key)

    def setting(self, key: str, default=None):
        """A configuration value; `default` where the run's config.json lacks it or holds null."""
        v = self.config.get(key)
        return default if v is None else v

    def __repr__(self) -> str:
        return f"Run({self.name!r}, epochs={len(self.metrics)})"


def load_runs(root_or_dirs) -> list[Run]:
    """Runs below a root directory, or from an explicit list of run directories."""
    dirs = list_runs(root_or_dirs) if isinstance(root_or_dirs, (str, os.PathLike)) else list(root_or_dirs)
    return [Run(d) for d in dirs]
