"""The cluster path (elr/cluster.py) through submitit's local executor: the same submit / wait / requeue code as
SLURM, with jobs as local processes. No SLURM here: `--executor slurm` is checked for its one-line refusal."""

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from elr import runs
from elr.cli import main
from elr.cluster import ClusterOptions, StudyFailed, Submitted, load_state, minutes, parse_additional, train_on_executor
from elr.config import ConfigError, RunConfig
from elr.study import train_all

pytest.importorskip("submitit")

SMALL = dict(model="convnet_si", width=4, data="synthetic", subset=200, batch_size=50, threads=1)


def configs(n=3, epochs=3):
    return [(f"r{i}", RunConfig(**SMALL, epochs=epochs, seed=i, lr=0.1 * (i + 1), weight_decay=5e-4)) for i in range(n)]


def opts(**kw):
    return ClusterOptions(**{"executor": "submitit-local", "poll_seconds": 0.5, "time": "10", **kw})


def metrics(root, names):
    strip = lambda recs: [{k: v for k, v in r.items() if k != "wall_time"} for r in recs]  # noqa: E731
    return {n: strip(runs.read_metrics(root / n)) for n in names}


def test_slurm_times_extras_and_refusals(monkeypatch):
    assert [minutes(t) for t in ("90", "1:30:00", "24:00:00", "1-00:00:00", "2-12:00", "0:00:30")] == \
        [90, 90, 1440, 1440, 3600, 1]
    for bad in ("abc", "0", "1:2:3:4", "-5"):
        with pytest.raises(ConfigError, match="is not a SLURM time; accepted: MM, HH:MM:SS or D-HH:MM:SS"):
            minutes(bad)
    assert parse_additional(["qos=high", "constraint = a100"]) == {"qos": "high", "constraint": "a100"}
    with pytest.raises(ConfigError, match="takes key=value"):
        parse_additional(["qos"])
    with pytest.raises(ConfigError, match="unknown executor 'ray'; accepted: local, slurm, submitit-local"):
        ClusterOptions(executor="ray").check()
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(ConfigError, match="--executor slurm needs SLURM, and sbatch is not on PATH"):
        ClusterOptions(executor="slurm").check()
    monkeypatch.setitem(__import__("sys").modules, "submitit", None)
    with pytest.raises(ConfigError, match=r'needs submitit: pip install -e "\.\[slurm\]"'):
        ClusterOptions(executor="submitit-local").check()


@pytest.mark.parametrize("run_lock", ["flock", "lease"])
def test_jobs_train_what_the_local_study_trains(tmp_path, capsys, run_lock):
    cfgs = configs()
    train_all(cfgs, tmp_path / "local")
    paths = train_on_executor(cfgs, tmp_path / "jobs", opts(run_lock=run_lock, lease_seconds=5))
    assert paths == [tmp_path / "jobs" / n for n, _ in cfgs]
    names = [n for n, _ in cfgs]
    assert metrics(tmp_path / "jobs", names) == metrics(tmp_path / "local", names)   # value for value
    tasks = load_state(tmp_path / "jobs")["tasks"]
    assert sorted(n for t in tasks for n in t["runs"]) == names and all(t["failures"] == 0 for t in tasks)
    assert main(["study", "status", str(tmp_path / "jobs")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and all("finished" in line and "job " in line for line in out)
    # nothing left to do: the same call returns at once, submitting nothing
    assert train_on_executor(cfgs, tmp_path / "jobs", opts()) == paths
    assert load_state(tmp_path / "jobs")["tasks"] == tasks
    # the tasks claimed their runs with the study's lock kind (a flock file, or a lease, released)
    assert any(p.suffix == ".lock" for p in (tmp_path / "jobs").iterdir()) == (run_lock == "flock")
    assert not list((tmp_path / "jobs").glob(".*.lease"))


def _task_pid(controller_pid: int) -> int | None:
    """The training process submitit's local controller started (its child)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == controller_pid:
            return int(stat.parent.name)
    return None


def test_a_preempted_task_is_requeued_and_resumes_exactly(tmp_path):
    """SIGUSR2 (SLURM's and submitit's warning before a time limit or a preemption) to a training task after its
    first checkpoint: submitit checkpoints the task and requeues it, the run resumes from its checkpoint, and
    its metrics equal an uninterrupted run's."""
    cfgs = configs(n=1, epochs=40)
    train_all(cfgs, tmp_path / "local")
    root, sent = tmp_path / "jobs", []

    def preempt():
        deadline = time.time() + 120
        while time.time() < deadline and not (root / "r0" / runs.CHECKPOINT).exists():
            time.sleep(0.05)
        time.sleep(0.3)
        pid = _task_pid(int(load_state(root)["tasks"][0]["job_id"]))
        if pid:
            first = (root / "r0" / runs.METRICS).read_text().splitlines()[1]     # epoch 1, with its wall time
            os.kill(pid, signal.SIGUSR2)
            sent.append((len(runs.read_metrics(root / "r0")), first))

    thread = threading.Thread(target=preempt, daemon=True)
    thread.start()
    train_on_executor(cfgs, root, opts())
    thread.join()
    assert sent and sent[0][0] < 40, "the task was not preempted mid-run"
    # resumed, not restarted: the epochs before the checkpoint keep their lines (wall times included)
    assert (root / "r0" / runs.METRICS).read_text().splitlines()[1] == sent[0][1]
    log = Path(load_state(root)["tasks"][0]["log"]).with_suffix(".out").read_text()
    assert "Requeued job" in Path(load_state(root)["tasks"][0]["log"]).read_text() + log
    assert metrics(root, ["r0"]) == metrics(tmp_path / "local", ["r0"])


def test_a_task_that_always_fails_names_its_run_and_log_and_keeps_the_others(tmp_path):
    root = tmp_path / "jobs"
    root.mkdir()
    (root / "r1").write_text("not a directory")          # the run's directory cannot be made: its task crashes
    with pytest.raises(StudyFailed) as e:
        train_on_executor(configs(n=2), root, opts(retries=1))
    message = str(e.value)
    assert message.startswith("run r1 failed 2 times (its log: ") and "the other runs' results are kept" in message
    log = Path(message.split("its log: ")[1].split(")")[0])
    assert log.exists() and "cannot" in log.read_text()
    assert runs.run_ended(root / "r0")


def test_no_wait_returns_and_the_same_call_collects(tmp_path):
    cfgs = configs(n=2, epochs=4)
    with pytest.raises(Submitted, match="rerun the same command to collect them"):
        train_on_executor(cfgs, tmp_path / "jobs", opts(wait=False))
    jobs = {t["job_id"] for t in load_state(tmp_path / "jobs")["tasks"]}
    # a second controller (as after a kill of the first): follows the running jobs through the runs' locks,
    # resubmits only what ended without finishing its runs, never trains a run twice
    train_on_executor(cfgs, tmp_path / "jobs", opts())
    assert all(runs.run_ended(tmp_path / "jobs" / n) for n, _ in cfgs)
    for n, _ in cfgs:   # each epoch logged once: no run trained twice
        assert [r["epoch"] for r in runs.read_metrics(tmp_path / "jobs" / n)] == [1, 2, 3, 4]
    assert jobs, "nothing was submitted"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_a_gpu_study_is_submitted_from_a_machine_without_gpus(tmp_path):
    """A login node has no GPU: the controller submits a --gpu study anyway (the tasks check CUDA where they
    run). Here the tasks have none either, so each fails, and with no retries the study ends naming its logs."""
    import subprocess
    import sys

    design = Path(__file__).resolve().parent.parent / "experiments" / "design.toml"
    done = subprocess.run([sys.executable, "-m", "elr", "study", "run", "--design", str(design), "--gpu",
                           "--executor", "submitit-local", "--slurm-retries", "0", "--runs-dir", str(tmp_path / "runs"),
                           "--report-dir", str(tmp_path / "rep")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("elr: run 00-elr") and "failed 1 times (its log: " in line
    log = Path(line.split("its log: ")[1].split(")")[0])
    assert "CUDA is not available" in log.read_text()
    assert not (tmp_path / "rep").exists()
