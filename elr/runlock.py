"""The run lock: one process trains a run at a time, whichever process, shell, xdist worker or cluster node.

Two kinds, chosen per study (`--run-lock`):

    flock   an advisory fcntl.flock on RUNS/.<run>.lock, held while the run trains. The kernel (or the file
            server) drops a dead holder's lock at once. Across nodes it needs a filesystem that honours flock:
            NFSv4, Lustre mounted with -o flock, GPFS; not Lustre with localflock/noflock, not NFSv3 without
            a lock manager.
    lease   a lease file RUNS/.<run>.lease, created with O_CREAT|O_EXCL (atomic on NFS and Lustre whatever
            their lock support) and renewed by a heartbeat thread every lease/4 seconds. A lease that has not
            been renewed for `lease_seconds` is stale: its holder is dead (or frozen that long), and the next
            claimer takes it over. A dead holder's run waits up to `lease_seconds` before another takes it.

    with RunLock("lease", lease_seconds=600).claim(root, "elr-lr0.1", block=False) as mine:
        if mine: ...train...

A holder whose lease was taken over (it was frozen longer than the lease, e.g. a SLURM job suspended) finds
another owner in the file at its next heartbeat and exits at once (status LEASE_LOST_EXIT), without writing
again: the new holder resumes the run from its checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

KINDS = ("flock", "lease")
LEASE_SECONDS = 600.0      # default lease: far above any pause of a healthy process (a checkpoint write, a GC)
MIN_LEASE_SECONDS = 1.0    # a shorter lease would be renewed more often than the file server's mtime resolution
LEASE_LOST_EXIT = 75       # EX_TEMPFAIL (sysexits.h): the work is not lost, another holder goes on with it
POLL_SECONDS = 2.0         # how often a blocking lease claim looks again


@dataclass(frozen=True)
class RunLock:
    """How runs are locked: `kind` flock or lease (see the module docstring); picklable, so a cluster task
    carries its study's choice."""

    kind: str = "flock"
    lease_seconds: float = LEASE_SECONDS

    def check(self) -> "RunLock":
        from .config import ConfigError

        if self.kind not in KINDS:
            raise ConfigError(f"unknown run lock {self.kind!r} in --run-lock; accepted: {', '.join(KINDS)}")
        if not isinstance(self.lease_seconds, (int, float)) or not self.lease_seconds >= MIN_LEASE_SECONDS:
            raise ConfigError(f"--lease-seconds must be a number >= {MIN_LEASE_SECONDS:g}, got {self.lease_seconds!r}")
        return self

    @contextlib.contextmanager
    def claim(self, root: str | Path, name: str, block: bool):
        """Hold run `name`'s lock in `root` for the with-block: yields True if this process holds it, False if
        another does (block=False); block=True waits until it is free."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        if self.kind == "flock":
            with flock(root / f".{name}.lock", block) as mine:
                yield mine
        else:
            with _lease(root / f".{name}.lease", block, self.lease_seconds) as mine:
                yield mine


def held(root: str | Path, name: str) -> bool:
    """Whether another process holds run `name`'s lock now, of either kind (the status table's "running")."""
    root = Path(root)
    lock, lease = root / f".{name}.lock", root / f".{name}.lease"
    if lock.exists():
        with flock(lock, False) as mine:
            if not mine:
                return True
    age = _lease_age(lease)
    return age is not None and age < _lease_seconds_of(lease)


def lock_files(root: str | Path) -> list[Path]:
    """The lock and lease files in a runs directory (not runs: `--fresh` may delete them with it)."""
    return [p for p in Path(root).iterdir() if p.is_file() and p.name.startswith(".")
            and (p.suffix in (".lock", ".lease") or ".lease.stale-" in p.name)]


# ---------------------------------------------------------------------------------------------- flock
@contextlib.contextmanager
def flock(path: Path, block: bool):
    """An advisory lock on `path`: yields whether this process holds it (block=False: False at once if another
    does); released by the kernel if the holder dies. Opening `path` may raise OSError (an unwritable place)."""
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------- lease
def _lease_age(path: Path) -> float | None:
    """Seconds since the lease was last renewed (its mtime), or None if there is none."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None


def _lease_seconds_of(path: Path) -> float:
    """The lease length its holder promised to renew within (written in the file; the default if unreadable)."""
    try:
        return float(json.loads(path.read_text())["lease_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return LEASE_SECONDS


def _owner(path: Path) -> str | None:
    """The lease's owner; None if there is no lease. Raises OSError/ValueError if it cannot be read now (a
    file server hiccup, or a lease being written this instant): the caller must not take that for a loss."""
    try:
        return json.loads(path.read_text())["owner"]
    except FileNotFoundError:
        return None


def _create(path: Path, owner: str, lease_seconds: float) -> bool:
    """Create the lease if none exists: O_EXCL makes exactly one of several racing claimers succeed."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump({"owner": owner, "host": socket.gethostname(), "pid": os.getpid(),
                   "lease_seconds": lease_seconds, "taken": time.time()}, f)
        f.flush()
        os.fsync(f.fileno())
    return True


def _take_stale(path: Path, owner: str) -> None:
    """Move a stale lease aside (rename is atomic: of several claimers exactly one moves it), so that the
    next _create can succeed. If what was moved turns out to be renewed after all (its holder woke up between
    our look and the rename), it is put back unless someone has already created a new lease."""
    aside = path.with_name(f"{path.name}.stale-{owner}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return                                   # another claimer moved it first
    age = _lease_age(aside)
    if age is not None and age < _lease_seconds_of(aside):
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(aside)


class _Heartbeat(threading.Thread):
    """Renews the lease (its mtime) every lease/4 seconds while the holder trains; if the file names another
    owner (the lease was taken over while this process was frozen), exits the process at once so that it
    writes nothing more into a run someone else now trains."""

    def __init__(self, path: Path, owner: str, lease_seconds: float):
        super().__init__(daemon=True, name="elr-run-lease")
        self.path, self.owner, self.every = path, owner, lease_seconds / 4
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                owner = _owner(self.path)
            except (OSError, ValueError, KeyError, TypeError):
                continue                            # unreadable this once: look again at the next beat
            if owner != self.owner:
                if self.stop.is_set():
                    return
                sys.stderr.write(f"\nelr: the lease {self.path} was taken over by another process (this one was "
                                 f"paused longer than the lease); exiting so that only the new holder writes the "
                                 f"run, which it resumes from its checkpoint\n")
                sys.stderr.flush()
                os._exit(LEASE_LOST_EXIT)
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.path)


@contextlib.contextmanager
def _lease(path: Path, block: bool, lease_seconds: float):
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
    while True:
        if _create(path, owner, lease_seconds):
            break
        age = _lease_age(path)
        if age is not None and age >= _lease_seconds_of(path):
            _take_stale(path, owner)
            continue
        if not block:
            yield False
            return
        time.sleep(min(POLL_SECONDS, lease_seconds / 4))
    beat = _Heartbeat(path, owner, lease_seconds)
    beat.start()
    try:
        yield True
    finally:
        beat.stop.set()
        beat.join()
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            if _owner(path) == owner:   # never remove a lease another process has taken over
                os.unlink(path)
