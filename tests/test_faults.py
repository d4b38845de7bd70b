"""Faults and hostile input (issue 10): damaged run directories, concurrent trainers, wrongly typed settings,
a kill at the worst moment, disk full. Each promises one line `elr: error: ...`, exit 2, and nothing already
written lost."""

import json
import os
from pathlib import Path

import pytest

from elr import runs
from elr.cli import main
from test_cli import run_bad    # one definition of a one-line error: exit 2, one line, no traceback

TINY = ["--model", "convnet_si", "--width", "4", "--data", "synthetic", "--subset", "100", "--batch-size", "50"]


def train_cli(out, epochs=3, *extra):
    return ["train", *TINY, "--epochs", str(epochs), "--out", str(out), *extra]


def snapshot(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An 8-epoch run, trained once; tests copy it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(train_cli(out, 8)) == 0
    return out


def copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for p in src.iterdir():
        if p.is_file():
            (dst / p.name).write_bytes(p.read_bytes())
    return dst


def epochs_of(run_dir) -> list[int]:
    return [r["epoch"] for r in runs.read_metrics(run_dir)]


# ---------------------------------------------------------------------------------- damaged metrics lines
@pytest.mark.parametrize("damage", [b"garbage{\n", b"\n", b"[1, 2]\n"])
def test_damaged_middle_line_stops_resume_and_costs_no_line(damage, finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    (run / runs.SUMMARY).unlink()                  # unfinished: the next command resumes
    lines = (run / runs.METRICS).read_bytes().splitlines(keepends=True)
    original = lines[3]
    lines[3] = damage                              # epoch 3's line, mid-file
    (run / runs.METRICS).write_bytes(b"".join(lines))
    before = snapshot(run)
    line = run_bad(capsys, train_cli(run, 8), f"{run / runs.METRICS} line 4 is damaged")
    assert "repair or delete" in line
    assert snapshot(run) == before                 # not one byte lost
    # the reader skips only the damaged line
    assert epochs_of(run) == [1, 2, 4, 5, 6, 7, 8]
    # repaired, the run resumes and ends as it had
    lines[3] = original
    (run / runs.METRICS).write_bytes(b"".join(lines))
    assert main(train_cli(run, 8)) == 0
    assert (run / runs.METRICS).read_bytes() == (finished / runs.METRICS).read_bytes()


def test_torn_last_line_is_dropped_and_redone(tmp_path, finished):
    run = copy_run(finished, tmp_path / "run")
    (run / runs.SUMMARY).unlink()
    ck = run / runs.CHECKPOINT
    with open(run / runs.METRICS, "ab") as f:
        f.write(b'{"epoch": 9, "train_lo')           # a crash inside the append
    assert epochs_of(run) == list(range(1, 9))
    assert main(train_cli(run, 8)) == 0
    assert (run / runs.METRICS).read_bytes() == (finished / runs.METRICS).read_bytes()
    assert ck.exists()


def test_unterminated_last_line_counts_as_torn_even_if_it_parses(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / runs.METRICS).write_bytes(b'{"epoch": 0}\n{"epoch": 1}\n{"epoch": 2}')
    records, damaged, torn = runs.scan_metrics(d)
    assert [r["epoch"] for r in records] == [0, 1] and damaged == [] and torn


# ---------------------------------------------------------------------------------- one trainer per directory
def test_second_trainer_on_a_held_directory_is_refused(finished, tmp_path, capsys, monkeypatch):
    run = copy_run(finished, tmp_path / "run")
    (run / runs.SUMMARY).unlink()
    before = snapshot(run)
    with runs.locked(run), monkeypatch.context() as m:   # another trainer's flock (per open file, even here)
        m.setattr("elr.training.train.load_data", lambda *a, **k: pytest.fail("the data was loaded before the refusal"))
        run_bad(capsys, train_cli(run, 8), "being trained by another process")
        assert snapshot(run) == before
    assert main(train_cli(run, 8)) == 0            # released: it resumes


def test_packed_runs_hold_every_directory(tmp_path):
    from elr.config import RunConfig
    from elr.training.train import train_many

    cfg = RunConfig(model="convnet_si", width=4, subset=100, batch_size=50, epochs=1)
    a, b = tmp_path / "a", tmp_path / "b"
    b.mkdir()
    with runs.locked(b):
        with pytest.raises(runs.RunDirBusy, match="being trained"):
            train_many([(cfg, a), (RunConfig(**{**cfg.to_dict(), "seed": 1}), b)], progress=False)
    assert not (a / runs.CONFIG).exists() and not (b / runs.CONFIG).exists()


def test_two_processes_on_one_out_train_each_epoch_once(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    argv = [sys.executable, "-m", "elr", "train", "--model", "convnet_si", "--width", "8", "--data", "synthetic",
            "--subset", "600", "--batch-size", "32", "--epochs", "500", "--compile", "off", "--out", str(out)]
    first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not runs.read_initial(out) and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)                       # the first holds the lock once it logged epoch 0
        second = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2 and "being trained by another process" in second.stderr, second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        first.send_signal(signal.SIGTERM)          # stops at the end of its epoch
        assert first.wait(timeout=300) == 130, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
    done = epochs_of(out)
    assert done == list(range(1, len(done) + 1)) and done


# ---------------------------------------------------------------------------------- settings of the wrong type
@pytest.mark.parametrize("toml,needle", [
    ('nesterov = "false"\nmomentum = 0.9', "nesterov must be true or false, got 'false' (str)"),
    ('elr_per_layer = "false"\nschedule = "elr"', "elr_per_layer must be true or false, got 'false' (str)"),
    ("seed = true", "seed must be an integer, got True (bool)"),
    ("milestones = 5", "milestones must be a list of integers, got 5 (int)"),
    ('data_seed = "a"', "data_seed must be an integer, got 'a' (str)"),
    ('lr = "0.1"', "lr must be a number, got '0.1' (str)"),
    ("threads = 1.0", "threads must be an integer or absent, got 1.0 (float)"),
])
def test_config_file_values_of_the_wrong_type(toml, needle, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml + "\n")
    run_bad(capsys, train_cli(tmp_path / "run", 1, "--config", str(cfg)), needle)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_seed_out_of_numpys_range(seed, tmp_path, capsys):
    run_bad(capsys, train_cli(tmp_path / "run", 1, "--seed", seed), "seed must be an integer in 0..2**32-1")
    assert not (tmp_path / "run").exists()


def test_config_json_holding_a_list(tmp_path, capsys, finished):
    cfg = tmp_path / "c.json"
    cfg.write_text("[1, 2]")
    run_bad(capsys, train_cli(tmp_path / "new", 1, "--config", str(cfg)), "must hold a mapping")
    run = copy_run(finished, tmp_path / "run")
    (run / runs.CONFIG).write_text("[1, 2]")       # the run directory's own
    before = snapshot(run)
    run_bad(capsys, train_cli(run, 8), f"{run / runs.CONFIG} is damaged (a JSON list, not an object)")
    assert snapshot(run) == before


# ---------------------------------------------------------------------------------- a kill at the worst moment
def without_wall_time(records):
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in records]


def test_diverged_run_killed_before_its_summary_resumes_to_the_uninterrupted_record(tmp_path):
    from elr.config import RunConfig
    from elr.training.train import train

    cfg = RunConfig(model="convnet_si", width=4, subset=200, batch_size=50, epochs=5, lr=1e38)
    reference = train(cfg, tmp_path / "ref", progress=False)
    assert reference["diverged"] and reference["diverged_epoch"] < 5
    killed = tmp_path / "killed"
    train(cfg, killed, progress=False)
    (killed / runs.SUMMARY).unlink()               # killed after the diverged epoch's checkpoint, before the summary
    resumed = train(cfg, killed, progress=False)
    assert without_wall_time(runs.read_metrics(killed)) == without_wall_time(runs.read_metrics(tmp_path / "ref"))
    same = ("diverged", "diverged_epoch", "epochs_done", "finished", "final_test_acc", "best_test_acc", "steps")
    assert {k: resumed[k] for k in same} == {k: reference[k] for k in same}


def _interrupted_at(tmp_path, monkeypatch, epochs=8, stop=6):
    """A run killed while logging epoch `stop`: checkpoint.pt at stop - 1, checkpoint.prev.pt at stop - 2."""
    from elr.config import RunConfig
    from elr.training.train import train

    cfg = RunConfig(model="convnet_si", width=4, subset=100, batch_size=50, epochs=epochs)
    real = runs.append_metrics

    def dies(run_dir, record):
        if record["epoch"] == stop:
            raise KeyboardInterrupt
        real(run_dir, record)

    with monkeypatch.context() as m:
        m.setattr(runs, "append_metrics", dies)
        with pytest.raises(KeyboardInterrupt):
            train(cfg, tmp_path / "run", progress=False)
    return cfg, tmp_path / "run"


@pytest.mark.parametrize("damage", [b"", b"garbage", "truncated"])
def test_damaged_checkpoint_resumes_from_the_previous_one(damage, tmp_path, monkeypatch, finished, capsys):
    cfg, run = _interrupted_at(tmp_path, monkeypatch)
    ck = run / runs.CHECKPOINT
    good = ck.read_bytes()
    ck.write_bytes(good[: len(good) // 2] if damage == "truncated" else damage)
    assert main(train_cli(run, 8)) == 0
    assert "resuming from checkpoint.prev.pt (epoch 4)" in capsys.readouterr().err
    assert without_wall_time(runs.read_metrics(run)) == without_wall_time(runs.read_metrics(finished))
    assert (run / runs.CHECKPOINT_DAMAGED).exists()


def test_damaged_checkpoint_without_a_previous_one_is_one_line(tmp_path, monkeypatch, capsys):
    cfg, run = _interrupted_at(tmp_path, monkeypatch)
    (run / runs.CHECKPOINT_PREV).unlink()
    (run / runs.CHECKPOINT).write_bytes(b"\x80\x04garbage")
    before = snapshot(run)
    line = run_bad(capsys, train_cli(run, 8), f"{run / runs.CHECKPOINT} is damaged")
    assert line.endswith(f"cannot be resumed: move {run} aside (or delete it) to train this run from the start")
    assert snapshot(run) == before                 # no silent restart over the 5 epochs logged


@pytest.mark.parametrize("error,reason", [
    (RuntimeError("zip  archive\n broken " + "X" * 200), "RuntimeError: zip archive broken " + "X" * 101),
    (EOFError(), "EOFError"),                      # no message: no dangling ": "
])
def test_a_damaged_checkpoints_reason_is_one_short_line(error, reason, tmp_path, monkeypatch, finished, capsys):
    """The notice quotes why checkpoint.pt failed to load: the error's kind and its first 120 characters of
    text with runs of white space made one space. The checkpoints load onto the run's device (a run checkpointed
    on a GPU resumes on a CPU)."""
    import torch

    cfg, run = _interrupted_at(tmp_path, monkeypatch)
    real, devices = torch.load, []

    def load(path, *args, **kwargs):
        devices.append(kwargs.get("map_location", "not given"))
        if path == run / runs.CHECKPOINT:
            raise error
        return real(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    assert main(train_cli(run, 8)) == 0
    assert capsys.readouterr().err.splitlines()[0] == (
        f"elr: {run / runs.CHECKPOINT} is damaged ({reason}); resuming from {runs.CHECKPOINT_PREV} (epoch 4); "
        f"the damaged file is kept as {runs.CHECKPOINT_DAMAGED}")
    assert devices[:2] == [torch.device("cpu")] * 2
    assert without_wall_time(runs.read_metrics(run)) == without_wall_time(runs.read_metrics(finished))


def test_a_notice_gets_its_own_line_under_a_live_line(tmp_path, monkeypatch):
    import re
    import sys

    from elr.training.train import train
    from test_progress import Terminal

    cfg, run = _interrupted_at(tmp_path, monkeypatch)
    (run / runs.CHECKPOINT).write_bytes(b"garbage")
    monkeypatch.setattr(sys, "stderr", Terminal())   # progress=None: a live line on a terminal
    train(cfg, run)
    err = sys.stderr.getvalue()
    assert "checkpoint.pt is damaged" in err and "loading data" in err and not re.search(r"[^\n]elr: ", err), err


def test_a_kill_between_moving_the_checkpoint_aside_and_writing_the_next_resumes_from_the_previous(
        tmp_path, monkeypatch, finished):
    cfg, run = _interrupted_at(tmp_path, monkeypatch)
    (run / runs.CHECKPOINT).replace(run / runs.CHECKPOINT_PREV)    # _save's first move done, its write not
    kept = runs.read_metrics(run)[:4]
    assert main(train_cli(run, 8)) == 0
    assert runs.read_metrics(run)[:4] == kept      # wall times too: resumed at epoch 4, not retrained from 0
    assert without_wall_time(runs.read_metrics(run)) == without_wall_time(runs.read_metrics(finished))


def test_a_kill_before_the_first_checkpoint_logs_epoch_0_once(tmp_path, monkeypatch, finished):
    cfg, run = _interrupted_at(tmp_path, monkeypatch, stop=1)
    assert not (run / runs.CHECKPOINT).exists() and runs.read_initial(run) is not None
    assert main(train_cli(run, 8)) == 0
    assert [json.loads(line)["epoch"] for line in (run / runs.METRICS).read_text().splitlines()] == list(range(9))
    assert runs.read_config(run) == runs.read_config(finished)
    assert {k: runs.read_config(run)["env"][k] for k in ("compiled", "pack", "num_classes")} == {
        "compiled": False, "pack": 1, "num_classes": 10}


def test_a_non_finite_initial_record_is_not_a_divergence(tmp_path, monkeypatch):
    """Divergence is a trained epoch's verdict (_end_epoch never judges epoch 0): resumed at epoch 0, a run whose
    epoch-0 line is not finite trains on, as it would have unbroken."""
    cfg, run = _interrupted_at(tmp_path, monkeypatch, stop=1)
    initial = runs.read_initial(run)
    (run / runs.METRICS).write_text(json.dumps({**initial, "train_loss": float("nan")}) + "\n")
    assert main(train_cli(run, 8)) == 0
    assert json.loads((run / runs.SUMMARY).read_text())["diverged"] is False and epochs_of(run) == list(range(1, 9))


def test_a_finished_run_killed_before_its_summary_whose_last_epoch_diverged_ends_there(tmp_path, finished):
    run = copy_run(finished, tmp_path / "run")
    (run / runs.SUMMARY).unlink()
    lines = (run / runs.METRICS).read_text().splitlines()
    lines[-1] = json.dumps({**json.loads(lines[-1]), "train_loss": float("inf")})
    (run / runs.METRICS).write_text("\n".join(lines) + "\n")
    assert main(train_cli(run, 8)) == 0
    summary = json.loads((run / runs.SUMMARY).read_text())
    assert (summary["diverged"], summary["diverged_epoch"], summary["finished"]) == (True, 8, False)


# ---------------------------------------------------------------------------------- the report on damaged runs
def test_report_names_damaged_and_incomplete_runs(finished, tmp_path, capsys):
    root = tmp_path / "runs"
    copy_run(finished, root / "whole")
    dup = copy_run(finished, root / "twice")
    lines = (dup / runs.METRICS).read_bytes().splitlines(keepends=True)
    (dup / runs.METRICS).write_bytes(b"".join(lines + lines[5:7]))          # epochs 5, 6 again
    cut = copy_run(finished, root / "cut")
    (cut / runs.METRICS).write_bytes(b"".join(lines[:2]))                    # summary still says 8/8 finished
    bad = copy_run(finished, root / "badsummary")
    (bad / runs.SUMMARY).write_text("{not json")
    assert main(["report", str(root), "--out", str(tmp_path / "rep")]) == 0
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if line.startswith("elr: warning:")]
    assert len(warned) == 3 and not any("whole" in w for w in warned), err
    assert any("twice: epochs logged more than once: 5, 6" in w for w in warned), err
    assert any("cut: summary.json says 8 epochs done, metrics.jsonl holds 1" in w for w in warned), err
    assert any("badsummary: " in w and "summary.json is damaged" in w for w in warned), err
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Damaged or incomplete runs" in md and "3 of 4 runs are damaged or incomplete" in md
    runs_table = md[md.index("## Runs"):]
    cut_row = next(row for row in runs_table.splitlines() if row.startswith("|") and "| cut |" in row)
    assert "| 1/8 ⚠ |" in cut_row                  # what the claims saw, not the summary's 8/8


def test_summary_finished_short_of_the_configured_epochs(finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    lines = (run / runs.METRICS).read_bytes().splitlines(keepends=True)
    (run / runs.METRICS).write_bytes(b"".join(lines[:4]))
    summary = json.loads((run / runs.SUMMARY).read_text())
    (run / runs.SUMMARY).write_text(json.dumps({**summary, "epochs_done": 3}))
    assert runs.Run(run).problems == ["summary.json says finished, but only 3 of the 8 configured epochs were logged"]
    assert runs.Run(finished).problems == []


def test_report_on_an_invalid_config_json_is_one_line(finished, tmp_path, capsys):
    root = tmp_path / "runs"
    run = copy_run(finished, root / "a")
    (run / runs.CONFIG).write_text('{"model": ')
    run_bad(capsys, ["report", str(root), "--out", str(tmp_path / "rep")], f"{run / runs.CONFIG} is damaged")
    assert not (tmp_path / "rep").exists()


def test_report_out_at_a_file_or_an_unwritable_path(finished, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)                    # where an empty --out would write
    root = tmp_path / "runs"
    copy_run(finished, root / "a")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    run_bad(capsys, ["report", str(root), "--out", str(blocker)], str(blocker))
    assert blocker.read_text() == "x"
    run_bad(capsys, ["report", str(root), "--out", ""], "expected a directory, got an empty string")
    if Path("/proc/self").is_dir():                # even root cannot create a directory there
        run_bad(capsys, ["report", str(root), "--out", "/proc/elr-report"], "/proc/elr-report")


# ---------------------------------------------------------------------------------- inputs that used to trace back
def _npz(path, size=32, y_train=None):
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.integers(0, 256, (20, size, size, 3), dtype=np.uint8),
                  y_train=np.arange(20) % 10 if y_train is None else y_train,
                  x_test=rng.integers(0, 256, (10, size, size, 3), dtype=np.uint8), y_test=np.arange(10) % 10)
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_images_too_small_for_the_model_are_refused_before_anything_is_written(tmp_path, capsys):
    spec = _npz(tmp_path / "small.npz", size=8)
    out = tmp_path / "run"
    run_bad(capsys, ["train", "--data", spec, "--width", "4", "--batch-size", "10", "--epochs", "1", "--out", str(out)],
            "model convnet_si cannot take its 8x8 images")
    assert not out.exists()


def test_check_input_runs_the_model_where_the_data_is_and_quotes_its_errors_first_line(monkeypatch):
    import torch

    import elr.training.train as T
    from elr.config import RunConfig
    from elr.training.data import DataError, load_data

    cfg = RunConfig(model="convnet_si", width=4)
    T.check_input(cfg, load_data("synthetic", subset=100, device="meta"))  # a model left on the CPU fails on meta

    class Refuses(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("no: " + "y" * 150 + "\nthe second line")

    monkeypatch.setattr(T, "build_model", lambda *a, **k: Refuses())
    with pytest.raises(DataError) as e:
        T.check_input(cfg, load_data("synthetic", subset=100))
    assert str(e.value) == (f"synthetic: model convnet_si cannot take its 32x32 images ({('no: ' + 'y' * 150)[:100]}); "
                            "use larger images (CIFAR-10's are 32x32) or another --model")


def test_out_below_directories_that_do_not_exist_yet(tmp_path):
    assert main(train_cli(tmp_path / "a" / "b" / "run", 1)) == 0
    assert epochs_of(tmp_path / "a" / "b" / "run") == [1]


def test_a_huge_label_is_refused_not_allocated(tmp_path, capsys):
    import numpy as np

    y = np.arange(20) % 10
    y[3] = 2**40
    spec = _npz(tmp_path / "huge.npz", y_train=y)
    out = tmp_path / "run"
    run_bad(capsys, ["train", "--data", spec, "--width", "4", "--batch-size", "10", "--epochs", "1", "--out", str(out)],
            "so 1099511627777 classes, more than its 20 images")
    assert not out.exists()


def test_read_only_run_directory(finished, tmp_path, capsys, monkeypatch):
    import builtins
    import errno

    run = copy_run(finished, tmp_path / "run")
    (run / runs.SUMMARY).unlink()
    before = snapshot(run)
    real_open = builtins.open

    def read_only(file, mode="r", *args, **kwargs):   # root writes through chmod: a read-only mount, then
        if str(file).startswith(str(run)) and any(c in mode for c in "wax+"):
            raise OSError(errno.EROFS, "Read-only file system", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", read_only)
    run_bad(capsys, train_cli(run, 8), f"cannot write the run directory {run}: Read-only file system")
    monkeypatch.undo()
    assert snapshot(run) == before


def test_disk_full_mid_line_loses_nothing_and_resumes(finished, tmp_path, capsys, monkeypatch):
    import errno

    real = runs._write

    def full(f, data):
        if b'"epoch": 5,' in data:                # half the line, then the disk is full
            real(f, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, data)

    monkeypatch.setattr(runs, "_write", full)
    run = tmp_path / "run"
    run_bad(capsys, train_cli(run, 8), f"cannot write {run / runs.METRICS}: No space left on device")
    monkeypatch.undo()
    records, damaged, torn = runs.scan_metrics(run)
    assert [r["epoch"] for r in records] == [0, 1, 2, 3, 4] and not damaged and not torn
    assert main(train_cli(run, 8)) == 0
    assert without_wall_time(runs.read_metrics(run)) == without_wall_time(runs.read_metrics(finished))


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(finished, tmp_path, capsys, monkeypatch):
    import errno

    import torch

    import elr.training.train

    calls, real_save = [], torch.save

    def full(obj, f, *args, **kwargs):
        calls.append(obj["epoch"])
        if obj["epoch"] == 4:
            f.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(elr.training.train.torch, "save", full)
    run = tmp_path / "run"
    run_bad(capsys, train_cli(run, 8), f"cannot write {run / runs.CHECKPOINT}: No space left on device")
    monkeypatch.undo()
    assert not (run / runs.CHECKPOINT).exists()    # moved aside before the write that failed: the resume uses it
    assert torch.load(run / runs.CHECKPOINT_PREV, weights_only=False)["epoch"] == 3
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    assert main(train_cli(run, 8)) == 0
    assert without_wall_time(runs.read_metrics(run)) == without_wall_time(runs.read_metrics(finished))


def test_out_that_cannot_be_a_run_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)                    # where an empty --out would train
    run_bad(capsys, train_cli("", 1), "expected a directory, got an empty string")
    assert list(tmp_path.iterdir()) == []
    if Path("/proc/self").is_dir():
        run_bad(capsys, train_cli("/proc/x", 1), "cannot create the run directory /proc/x")


def test_run_directory_checks_name_the_problem(finished, tmp_path, capsys, monkeypatch):
    run = copy_run(finished, tmp_path / "run")
    before = snapshot(run)
    line = run_bad(capsys, train_cli(run, 8, "--lr", "0.5", "--seed", "3"), "holds a different run")
    assert "holds a different run (lr: 0.1 there, 0.5 here; seed: 0 there, 3 here); use another --out" in line
    saved = json.loads((run / runs.CONFIG).read_text())
    (run / runs.CONFIG).write_text(json.dumps({**saved, "learning_rate": 0.1}))   # a key this version lacks
    line = run_bad(capsys, train_cli(run, 8), f"{run} holds an unreadable config.json (unknown config key(s) "
                   "learning_rate; accepted: ")
    assert line.endswith("); use another --out")
    assert {k: v for k, v in snapshot(run).items() if k != runs.CONFIG} == \
        {k: v for k, v in before.items() if k != runs.CONFIG}
    blocker = tmp_path / "a file"
    blocker.write_text("x")                        # writable, but not a directory
    run_bad(capsys, train_cli(blocker / "run", 1), f"cannot write the run directory {blocker / 'run'}: {blocker} "
            "is not a writable directory")
    # a directory this user may not write in (root writes anywhere, so the permission is what os.access says)
    monkeypatch.setattr("os.access", lambda path, mode: not mode & os.W_OK)
    run_bad(capsys, train_cli(tmp_path / "new", 1), f"{tmp_path} is not a writable directory")
    assert not (tmp_path / "new").exists()


# ---------------------------------------------------------------------------------- smaller: ETA, Ctrl-C at start-up
class _Interrupting:
    """A module whose first use is a Ctrl-C: what a SIGINT during its import looks like to the importer."""

    def __getattr__(self, name):
        raise KeyboardInterrupt


# python -m elr in a child whose import of elr.cli meets a Ctrl-C inside a weakref callback, where Python reports
# a KeyboardInterrupt as "Exception ignored in ..." and carries on (importlib's module-lock callbacks are such)
_CTRL_C_IN_A_CALLBACK = """
import os, runpy, signal, sys, time, weakref

class Finder:
    def find_spec(self, name, path=None, target=None):
        if name == "elr.cli":
            sys.meta_path.remove(self)
            class Lock: pass
            lock = Lock()
            def callback(ref):
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(1000): time.sleep(0)      # the handler runs here, inside the callback
            ref = weakref.ref(lock, callback)
            del lock
        return None

sys.meta_path.insert(0, Finder())
sys.argv = ["elr", "report", "nowhere"]
runpy.run_module("elr", run_name="__main__", alter_sys=True)
"""


def test_ctrl_c_while_elr_loads_is_one_line():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _CTRL_C_IN_A_CALLBACK], capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stderr) == (130, "elr: interrupted\n")


def test_ctrl_c_while_torch_loads_is_one_line(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "elr.training.data", _Interrupting())
    try:
        assert main(["report", "nowhere"]) == 130
    except KeyboardInterrupt:
        pytest.fail("the Ctrl-C escaped main() as a traceback")
    assert capsys.readouterr().err == "elr: interrupted\n"


def test_sigint_during_start_up_exits_130_without_a_traceback(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "elr", *train_cli(tmp_path / "run", 1)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)                                # Python is up; elr, torch and the data are loading
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_the_study_takes_its_lock_and_then_the_trainers_in_one_process(tmp_path):
    from elr.config import RunConfig
    from elr.study import train_all

    cfg = RunConfig(model="convnet_si", width=4, subset=100, batch_size=50, epochs=2)
    configs = [("a", cfg), ("b", RunConfig(**{**cfg.to_dict(), "seed": 1}))]
    train_all(configs, tmp_path, pack=2)          # RUNS/.a.lock and .b.lock, then a/.lock and b/.lock
    assert [epochs_of(tmp_path / n) for n in "ab"] == [[1, 2], [1, 2]]
    with runs.locked(tmp_path / "a"):              # a trainer elsewhere holds a: the study says so in one line
        (tmp_path / "a" / runs.SUMMARY).unlink()
        with pytest.raises(runs.RunDirBusy):
            train_all(configs, tmp_path, pack=2)
    train_all(configs, tmp_path, pack=2)
    assert runs.run_ended(tmp_path / "a") and epochs_of(tmp_path / "a") == [1, 2]
