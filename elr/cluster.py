"""A study's runs as submitit jobs: SLURM on a cluster, or submitit's local executor (the same submit / wait /
requeue path with jobs as local processes): one task per pack of runs not yet ended, into the same runs
directory on a shared filesystem.

    train_on_executor(configs, "runs/full", ClusterOptions(executor="slurm", partition="gpu"), pack=1)

Each task is `study.train_all` over its runs, so it takes each run's lock and resumes each run from its
checkpoint: a task requeued after a time limit or a preemption (submitit's checkpoint hook) goes on where the
run's last epoch ended, a second controller or a duplicate task never trains a run twice, and a diverged run
is a result (its summary), not a failure. The controller records its tasks in RUNS_DIR/.cluster.json, so a
controller killed mid-study, or one started with wait=False, is followed by the same command, which looks at
what has ended, resubmits what is missing or failed (a crash at most `retries` times, then the run and its
log are named), and returns when every run has ended.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import runs as rundir
from .config import ConfigError, RunConfig
from .runlock import LEASE_SECONDS, RunLock, held

EXECUTORS = ("local", "slurm", "submitit-local")
STATE = ".cluster.json"          # in the runs directory: the controller's tasks, their job ids, attempts, logs
JOBS = ".jobs"                   # submitit's folder in the runs directory: its pickles and every task's logs
LIVE = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING")


class StudyFailed(RuntimeError):
    """Runs whose tasks failed more than `retries` times: the message names each run and its task's log."""


class Submitted(RuntimeError):
    """wait=False: the tasks are submitted (or still running); the same command later collects them."""


@dataclass
class ClusterOptions:
    executor: str = "local"
    partition: str | None = None
    time: str = "24:00:00"             # SLURM's --time, HH:MM:SS or D-HH:MM:SS
    account: str | None = None
    gpus_per_task: int = 1
    cpus_per_task: int = 4
    mem_gb: float | None = None
    array_parallelism: int = 64        # at most this many tasks of the array run at once
    additional: dict = field(default_factory=dict)   # any other sbatch key=value (e.g. qos, constraint)
    job_prefix: str = "elr"
    retries: int = 2                   # a task that crashes is resubmitted at most this many times
    wait: bool = True
    poll_seconds: float = 30.0
    run_lock: str = "flock"            # elr.runlock: flock, or lease where flock does not hold across nodes
    lease_seconds: float = LEASE_SECONDS

    @property
    def lock(self) -> RunLock:
        return RunLock(self.run_lock, self.lease_seconds)

    def check(self) -> "ClusterOptions":
        if self.executor not in EXECUTORS:
            raise ConfigError(f"unknown executor {self.executor!r}; accepted: {', '.join(EXECUTORS)}")
        self.lock.check()
        if self.executor == "local":
            return self
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise ConfigError(f"--executor {self.executor} needs submitit: pip install -e \".[slurm]\"") from None
        if self.executor == "slurm" and shutil.which("sbatch") is None:
            raise ConfigError("--executor slurm needs SLURM, and sbatch is not on PATH here; accepted on this "
                              "machine: local, submitit-local")
        minutes(self.time)
        for name in ("gpus_per_task", "cpus_per_task", "array_parallelism"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < (0 if name == "gpus_per_task" else 1):
                raise ConfigError(f"--slurm-{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ConfigError(f"--slurm-retries must be an integer >= 0, got {self.retries!r}")
        return self


# The cluster options, defined once: conftest.py adds them to pytest, cli.py to `elr study run` (both take
# argparse's keywords). options_from() reads them back into ClusterOptions.
OPTIONS = [
    ("--executor", dict(default="local", help="local (default: in this process, or pytest-xdist's -n workers) | "
                                              "slurm (a submitit job array) | submitit-local (the same path, jobs as "
                                              "local processes)")),
    ("--slurm-partition", dict(default=None, help="SLURM partition")),
    ("--slurm-time", dict(default="24:00:00", help="time limit per task, HH:MM:SS or D-HH:MM:SS; a task is requeued "
                                                   "at it and resumes (default 24:00:00)")),
    ("--slurm-account", dict(default=None, help="SLURM account")),
    ("--slurm-gpus-per-task", dict(type=int, default=1, help="GPUs per task (default 1)")),
    ("--slurm-cpus-per-task", dict(type=int, default=4, help="CPUs per task (default 4)")),
    ("--slurm-mem-gb", dict(type=float, default=None, help="memory per task in GB (default: the partition's)")),
    ("--slurm-array-parallelism", dict(type=int, default=64, help="tasks of the array running at once (default 64)")),
    ("--slurm-additional", dict(action="append", default=[], metavar="KEY=VALUE",
                                help="any other sbatch option, repeatable (e.g. qos=high)")),
    ("--slurm-job-prefix", dict(default="elr", help="job name prefix (default elr)")),
    ("--slurm-retries", dict(type=int, default=2, help="resubmissions of a crashed task (default 2)")),
    ("--no-wait", dict(action="store_true", help="submit and return; the same command later collects and reports")),
    ("--run-lock", dict(default="flock", help="how a run is claimed: flock (default; needs a filesystem that honours "
                                              "flock across nodes: NFSv4, Lustre -o flock, GPFS) | lease (a lease "
                                              "file renewed by a heartbeat: any shared filesystem)")),
    ("--lease-seconds", dict(type=float, default=LEASE_SECONDS, help="with --run-lock lease: a lease not renewed "
                                                                     "this long is taken over (default 600)")),
]


def options_from(get, poll_seconds: float = 30.0) -> ClusterOptions:
    """ClusterOptions from parsed OPTIONS: get("slurm_partition") -> value (pytest's getoption, or argparse's
    namespace through getattr)."""
    return ClusterOptions(
        executor=get("executor"), partition=get("slurm_partition"), time=get("slurm_time"),
        account=get("slurm_account"), gpus_per_task=get("slurm_gpus_per_task"),
        cpus_per_task=get("slurm_cpus_per_task"), mem_gb=get("slurm_mem_gb"),
        array_parallelism=get("slurm_array_parallelism"), additional=parse_additional(get("slurm_additional")),
        job_prefix=get("slurm_job_prefix"), retries=get("slurm_retries"), wait=not get("no_wait"),
        poll_seconds=poll_seconds, run_lock=get("run_lock"), lease_seconds=get("lease_seconds"))


def minutes(spec: str) -> int:
    """SLURM's time format in whole minutes, rounded up: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS
    (sbatch(1), --time)."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(spec).strip())
    if m:
        d, a, b, c = (int(x) if x is not None else None for x in m.groups())
        if d is None:
            h, mi, s = (0, a, 0) if b is None else (0, a, b) if c is None else (a, b, c)
        else:
            h, mi, s = a, b or 0, c or 0
        total = ((d or 0) * 24 + h) * 60 + mi + (1 if s else 0)
        if total > 0:
            return total
    raise ConfigError(f"--slurm-time {spec!r} is not a SLURM time; accepted: MM, HH:MM:SS or D-HH:MM:SS")


def parse_additional(pairs: list[str]) -> dict:
    """--slurm-additional key=value (repeatable) -> {key: value} for sbatch."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--slurm-additional takes key=value (an sbatch option), got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def tasks_for(configs: list[tuple[str, RunConfig]], root: Path, pack: int) -> list[list[tuple[str, RunConfig]]]:
    """The runs not yet ended, in packs (study.pack_groups: the same grouping as a local study)."""
    from .study import pack_groups

    todo = [(n, c) for n, c in configs if not rundir.run_ended(root / n)]
    return [group[i:i + pack] for group in pack_groups(todo) for i in range(0, len(group), pack)]


def _task(root: str, items: list[tuple[str, dict]], pack: int, lock: RunLock = RunLock()) -> list[str]:
    """One job: train its runs (study.train_all: locks, packs, resume). Runs where the job runs."""
    from .study import train_all

    train_all([(n, RunConfig.from_dict(d)) for n, d in items], Path(root), pack=pack, lock=lock)
    return [n for n, _ in items]


def _executor(opts: ClusterOptions, folder: Path):
    import submitit

    ex = submitit.AutoExecutor(folder=folder, cluster="local" if opts.executor == "submitit-local" else "slurm")
    params = dict(name=f"{opts.job_prefix}-study", timeout_min=minutes(opts.time),
                  slurm_array_parallelism=opts.array_parallelism, slurm_additional_parameters=dict(opts.additional))
    if opts.executor == "slurm":
        params.update(gpus_per_node=opts.gpus_per_task, cpus_per_task=opts.cpus_per_task)
        for key, value in (("slurm_partition", opts.partition), ("slurm_account", opts.account),
                           ("mem_gb", opts.mem_gb)):
            if value is not None:
                params[key] = value
    ex.update_parameters(**params)
    return ex


def _checkpointable():
    """The task as submitit's Checkpointable: on a time limit or a preemption submitit calls checkpoint(),
    which resubmits the same task; it resumes each run from its checkpoint (the trainer's own resume)."""
    import submitit

    class StudyTask(submitit.helpers.Checkpointable):
        def __call__(self, root, items, pack, lock=RunLock()):
            return _task(root, items, pack, lock)

    return StudyTask()


def load_state(root: Path) -> dict:
    try:
        return json.loads((root / STATE).read_text())
    except (OSError, ValueError):
        return {"tasks": []}


def _job(opts: ClusterOptions, job_id: str, folder: Path):
    import submitit

    cls = submitit.local.local.LocalJob if opts.executor == "submitit-local" else submitit.SlurmJob
    return cls(folder=folder, job_id=job_id)


def train_runs(configs: list[tuple[str, RunConfig]], root: str | Path, opts: ClusterOptions, *, pack: int = 1,
               stream=None) -> list[Path]:
    """A study's runs through the chosen executor: local (study.train_all, in this process) or submitit jobs
    (train_on_executor). pytest's study fixture and `elr study run` both train through here."""
    if opts.executor == "local":
        from .study import train_all

        return train_all(configs, root, pack=pack, lock=opts.lock)
    return train_on_executor(configs, root, opts, pack=pack, stream=stream)


def train_on_executor(configs: list[tuple[str, RunConfig]], root: str | Path, opts: ClusterOptions, *,
                      pack: int = 1, stream=None) -> list[Path]:
    """Submit, wait and resubmit until every run has ended; return the run directories (train_all's contract).
    Raises StudyFailed (runs whose task failed more than opts.retries times, with their logs; the other runs'
    results stay) or, with wait=False, Submitted while runs are still to end."""
    opts.check()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    folder = root / JOBS
    ex = _executor(opts, folder)
    names = {n for n, _ in configs}
    state = load_state(root)
    # a new controller gives runs that used up their retries before a fresh start (the user reran the command)
    state["tasks"] = [t for t in state["tasks"] if set(t["runs"]) <= names and not t.get("gave_up")]
    jobs = {}                       # job id -> submitit job submitted by this controller (in memory)
    stream = stream or sys.stderr
    last_line = 0.0
    while True:
        ended = {n for n in names if rundir.run_ended(root / n)}
        covered = set()                 # runs a live task holds, or whose task gave up
        for t in state["tasks"]:
            open_runs = [n for n in t["runs"] if n not in ended]
            if not open_runs or t.get("gave_up"):
                covered.update(open_runs)
                continue
            job = jobs.get(t["job_id"]) or _job(opts, t["job_id"], folder)
            status = _status(job, root, open_runs)
            if status == "live":
                covered.update(open_runs)
                continue
            if status == "failed":
                t["failures"] = t.get("failures", 0) + 1
                t["log"] = str(job.paths.stderr)
                if t["failures"] > opts.retries:
                    t["gave_up"] = True
                    covered.update(open_runs)
                    continue
            t["runs"] = open_runs            # resubmitted below (a crash, or a task that ended early)
            t["resubmit"] = True
        # tasks that crashed (within their retries) or ended early are replaced by new submissions; a run keeps
        # its attempts count whatever pack it lands in
        replaced = [t for t in state["tasks"] if t.pop("resubmit", False)]
        carried = {n: t.get("failures", 0) for t in replaced for n in t["runs"]}
        state["tasks"] = [t for t in state["tasks"] if not any(t is r for r in replaced)]
        new = tasks_for([(n, c) for n, c in configs if n not in covered], root, pack)
        if new:
            cfgs = dict(configs)
            submitted = ex.map_array(_checkpointable(), [str(root)] * len(new),
                                     [[(n, cfgs[n].to_dict()) for n, _ in g] for g in new], [pack] * len(new),
                                     [opts.lock] * len(new))
            for g, job in zip(new, submitted):
                jobs[job.job_id] = job
                state["tasks"].append({"runs": [n for n, _ in g], "job_id": job.job_id,
                                       "failures": max(carried.get(n, 0) for n, _ in g), "log": str(job.paths.stderr)})
        rundir.write_json(root / STATE, state)
        open_runs = names - {n for n in names if rundir.run_ended(root / n)}
        give_up = [t for t in state["tasks"] if t.get("gave_up")]
        if not open_runs - {n for t in give_up for n in t["runs"]}:
            if give_up:
                raise StudyFailed("; ".join(f"run {', '.join(t['runs'])} failed {t['failures']} times (its log: "
                                            f"{t['log']})" for t in give_up) + "; the other runs' results are kept")
            return [root / n for n, _ in configs]
        if not opts.wait:
            raise Submitted(f"{len(open_runs)} runs in {sum(1 for t in state['tasks'] if not t.get('gave_up'))} "
                            f"tasks submitted or running (job ids in {root / STATE}); rerun the same command to "
                            "collect them")
        if time.monotonic() - last_line >= opts.poll_seconds:
            stream.write(status_line(root, state, names) + "\n")
            stream.flush()
            last_line = time.monotonic()
        time.sleep(min(opts.poll_seconds, 2.0))


def _status(job, root: Path, open_runs: list[str]) -> str:
    """live | failed | ended (the job is over but left runs open: resubmit without counting a failure)."""
    state = str(job.state).upper()
    if any(state.startswith(s) for s in LIVE):
        return "live"
    if state.startswith(("UNKNOWN", "NO PROCESS", "INTERRUPTED")) or not state:
        # a job this controller cannot follow (a local job after a controller restart, or whose controller
        # process was killed while its task went on): alive while someone holds one of its runs' locks
        return "live" if any(held(root, n) for n in open_runs) else "ended"
    if state.startswith(("FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "CANCELLED", "BOOT_FAIL", "DEADLINE")):
        return "failed"
    if state.startswith(("DONE", "COMPLETED", "FINISHED")):
        try:
            if job.exception() is not None:
                return "failed"
        except Exception:   # an outcome file that cannot be read: the job died without writing it
            return "failed"
    return "ended"


def status_line(root: Path, state: dict, names: set[str]) -> str:
    """runs done / total, then the tasks running (one of their runs' locks is held: training), queued, failed,
    each with its job ids."""
    ended = {n for n in names if rundir.run_ended(root / n)}
    open_tasks = [t for t in state["tasks"] if not t.get("gave_up") and set(t["runs"]) - ended]
    running = [t for t in open_tasks if any(held(root, n) for n in set(t["runs"]) - ended)]
    queued = [t for t in open_tasks if t not in running]
    failed = [t for t in state["tasks"] if t.get("gave_up")]

    def jobs(ts):
        return ", ".join(t["job_id"] for t in ts[:6]) + (", …" if len(ts) > 6 else "")

    parts = [f"{len(ended)}/{len(names)} runs done", f"{len(running)} running" + (f" ({jobs(running)})" if running else ""),
             f"{len(queued)} queued" + (f" ({jobs(queued)})" if queued else "")]
    if failed:
        parts.append(f"{len(failed)} failed ({jobs(failed)})")
    return f"elr cluster {root.name}: " + ", ".join(parts)


def status_table(root: Path) -> str:
    """`elr study status RUNS_DIR`: one line per run (ended / training epoch e / waiting) and its task's job."""
    root = Path(root)
    state = load_state(root)
    job_of = {n: t for t in state["tasks"] for n in t["runs"]}
    lines = []
    for path in sorted(p for p in root.iterdir() if rundir.is_run_dir(p)):
        t = job_of.get(path.name, {})
        summary = rundir.read_summary(path) if rundir.run_ended(path) else None
        if summary is not None:
            what = "diverged" if summary.get("diverged") else "finished"
        else:
            n = len(rundir.read_metrics(path)) if (path / rundir.METRICS).exists() else 0
            what = f"epoch {n}/{rundir.read_config(path).get('epochs', '?')}"
        job = t.get("job_id", "—")
        extra = f"  FAILED x{t['failures']}: {t['log']}" if t.get("gave_up") else ""
        lines.append(f"{path.name:<48} {what:<12} job {job}{extra}")
    return "\n".join(lines) if lines else f"{root}: no run directories"
