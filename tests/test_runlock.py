"""The run lock (elr/runlock.py): one holder at a time for either kind, a dead holder's lease taken over only
once it is stale, a live holder's lease kept fresh by its heartbeat, a holder whose lease was taken over exits
without writing again, and a study trained by two processes under the lease trains every run once."""

import json
import multiprocessing as mp
import os
import subprocess
import sys
import time

import pytest

from elr import runs
from elr.config import ConfigError, RunConfig
from elr.runlock import LEASE_LOST_EXIT, KINDS, RunLock, held, lock_files
from elr.study import fresh, train_all


@pytest.mark.parametrize("kind", KINDS)
def test_one_holder_at_a_time_and_released_after(tmp_path, kind):
    lock = RunLock(kind, lease_seconds=5)
    assert not held(tmp_path, "r")
    with lock.claim(tmp_path, "r", block=False) as first:
        assert first
        assert held(tmp_path, "r")
        with lock.claim(tmp_path, "r", block=False) as second:   # a second claimer (its own file handle)
            assert not second
    assert not held(tmp_path, "r")
    with lock.claim(tmp_path, "r", block=False) as again:
        assert again


def _stale_lease(path, owner="node7:4242:dead", age=100.0, lease=5.0):
    path.write_text(json.dumps({"owner": owner, "lease_seconds": lease}))
    t = time.time() - age
    os.utime(path, (t, t))


def test_a_stale_lease_is_taken_over_and_a_fresh_one_is_not(tmp_path):
    lock = RunLock("lease", lease_seconds=5)
    path = tmp_path / ".r.lease"
    _stale_lease(path, age=4.0)                  # renewed 4 s ago, lease 5 s: its holder may be alive
    assert held(tmp_path, "r")
    with lock.claim(tmp_path, "r", block=False) as mine:
        assert not mine
    assert json.loads(path.read_text())["owner"] == "node7:4242:dead"
    _stale_lease(path, age=6.0)                  # not renewed for longer than its lease: its holder is gone
    assert not held(tmp_path, "r")
    with lock.claim(tmp_path, "r", block=False) as mine:
        assert mine
        assert json.loads(path.read_text())["owner"] != "node7:4242:dead"
    assert not path.exists() and not lock_files(tmp_path)   # released, and no stale copy left behind


def test_the_heartbeat_keeps_a_lease_fresh_past_its_length(tmp_path):
    lock = RunLock("lease", lease_seconds=1.0)
    with lock.claim(tmp_path, "r", block=False) as mine:
        assert mine
        time.sleep(2.6)                          # 2.6 leases: without renewal it would be stale by now
        assert time.time() - (tmp_path / ".r.lease").stat().st_mtime < 1.0
        with lock.claim(tmp_path, "r", block=False) as other:
            assert not other


def _race(root, kind, start, queue):
    while time.time() < start:
        time.sleep(0.001)
    with RunLock(kind, lease_seconds=5).claim(root, "r", block=False) as mine:
        if mine:
            time.sleep(1.0)                      # hold it while the others try
        queue.put(mine)


@pytest.mark.parametrize("kind", KINDS)
def test_of_racing_processes_exactly_one_wins(tmp_path, kind):
    if kind == "lease":
        _stale_lease(tmp_path / ".r.lease", age=60.0)   # they also race to take over a dead holder's lease
    ctx = mp.get_context("fork")
    queue, start = ctx.Queue(), time.time() + 1.0
    procs = [ctx.Process(target=_race, args=(tmp_path, kind, start, queue)) for _ in range(6)]
    for p in procs:
        p.start()
    wins = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join()
    assert sorted(wins) == [False] * 5 + [True]


HOLDER = """
import sys, time
from pathlib import Path
from elr.runlock import RunLock
root = Path(sys.argv[1])
with RunLock("lease", lease_seconds=1.0).claim(root, "r", block=False) as mine:
    (root / "holding").write_text(str(mine))
    time.sleep(30)
    (root / "wrote-after").write_text("the holder went on after losing its lease")
"""


def test_a_holder_whose_lease_was_taken_over_exits_without_writing(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (tmp_path / "holding").exists() and time.time() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "holding").read_text() == "True"
    # what a claimer does after the holder was frozen past its lease: the lease now names someone else
    (tmp_path / ".r.lease").write_text(json.dumps({"owner": "node9:1:new", "lease_seconds": 1.0}))
    assert proc.wait(timeout=20) == LEASE_LOST_EXIT
    assert "was taken over by another process" in proc.stderr.read()
    assert not (tmp_path / "wrote-after").exists()
    assert json.loads((tmp_path / ".r.lease").read_text())["owner"] == "node9:1:new"   # the new holder's lease stays


SMALL = dict(model="convnet_si", width=4, data="synthetic", subset=200, batch_size=50, threads=1)


def _configs():
    return [(f"r{i}", RunConfig(**SMALL, epochs=3, seed=i, lr=0.1 * (i + 1), weight_decay=5e-4)) for i in range(4)]


def _train(root):
    train_all(_configs(), root, lock=RunLock("lease", lease_seconds=5))


@pytest.mark.slow
def test_two_processes_under_the_lease_train_every_run_once(tmp_path):
    """Two study processes on one runs directory with lease locks: every run is trained by one of them, its
    metrics are the single-process study's, epoch for epoch, each epoch logged once."""
    train_all(_configs(), tmp_path / "alone")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_train, args=(tmp_path / "shared",)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    strip = lambda recs: [{k: v for k, v in r.items() if k != "wall_time"} for r in recs]  # noqa: E731
    for name, _ in _configs():
        got = strip(runs.read_metrics(tmp_path / "shared" / name))
        assert [r["epoch"] for r in got] == [1, 2, 3]
        assert got == strip(runs.read_metrics(tmp_path / "alone" / name))
    assert lock_files(tmp_path / "shared") == []   # the leases were the locks (no flock files), all released
    fresh(tmp_path / "shared")                   # lock and lease files do not stop --fresh
    assert not (tmp_path / "shared").exists()


def test_bad_lock_options_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown run lock 'nfs' in --run-lock; accepted: flock, lease"):
        RunLock("nfs").check()
    with pytest.raises(ConfigError, match="--lease-seconds must be a number >= 1"):
        RunLock("lease", lease_seconds=0.1).check()
    from test_cli import run_bad

    run_bad(capsys, ["study", "run", "--scale", "smoke", "--runs-dir", str(tmp_path / "runs"), "--run-lock", "nfs"],
            "accepted: flock, lease")
    assert not (tmp_path / "runs").exists()
