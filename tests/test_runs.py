"""elr.runs: the run directory as the analysis reads it — which directories are runs, the one-line errors for
files it cannot read, the gaps a run's log has against its config and summary (written into Run.problems).
The trainer's side (atomic writes, locks, damaged lines on resume) is tested in test_faults.py."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fakeruns
from elr import runs
from elr.runs import Run, RunDirError


def rewrite_metrics(path, records, tail=b""):
    runs.write_metrics(path, records)
    with open(path / runs.METRICS, "ab") as f:
        f.write(tail)


def test_only_directories_with_a_config_are_runs_and_a_list_of_directories_loads_as_given(tmp_path):
    a = fakeruns.write_run(tmp_path, "a", epochs=3)
    b = fakeruns.write_run(tmp_path, "b", epochs=3)
    (tmp_path / "notes").mkdir()                       # a plain directory beside the runs: not a run
    (tmp_path / "notes" / "x.txt").write_text("x")
    assert runs.list_runs(tmp_path) == [a, b]
    assert [r.name for r in runs.load_runs([b, a])] == ["b", "a"]          # an explicit list, in its order
    assert [r.name for r in runs.load_runs(str(tmp_path))] == ["a", "b"]


def test_unreadable_and_damaged_files_are_one_line_each_with_the_advice(tmp_path):
    path = fakeruns.write_run(tmp_path, "r", epochs=3)
    cfg = path / runs.CONFIG
    cfg.unlink()
    cfg.mkdir()                                        # a directory where config.json should be
    with pytest.raises(RunDirError) as e:
        runs.read_config(path)
    assert str(e.value) == f"cannot read {cfg}: Is a directory; repair it, or move the run directory aside"
    cfg.rmdir()
    cfg.write_text('{\n  "lr": ,\n}')
    try:
        json.loads(cfg.read_text())
    except ValueError as err:
        why = " ".join(str(err).split())               # json's own message, on one line
    with pytest.raises(RunDirError) as e:
        runs.read_config(path)
    assert str(e.value) == f"{cfg} is damaged (not valid JSON: {why}); repair it, or move the run directory aside"


def test_a_failed_write_says_what_to_do():
    err = runs.RunWriteError("/x/metrics.jsonl", OSError(28, "No space left on device"))
    assert str(err) == ("cannot write /x/metrics.jsonl: No space left on device; every file written before is "
                        "intact: free space (or make it writable) and rerun the same command")


def test_json_is_read_as_utf_8_whatever_the_locale(tmp_path):
    """A config with a λ in it, read in a process whose locale encoding is ASCII (LC_ALL=C, no UTF-8 mode)."""
    env_check = subprocess.run([sys.executable, "-c", "import locale; print(locale.getpreferredencoding(False))"],
                               env={**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0",
                                    "PYTHONCOERCECLOCALE": "0"}, capture_output=True, text=True, timeout=60)
    if "UTF" in env_check.stdout.upper():
        pytest.skip(f"this platform's C locale reads as {env_check.stdout.strip()}: nothing to tell apart")
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"note": "λ = 5e-4"}, ensure_ascii=False), encoding="utf-8")
    # PYTHONCOERCECLOCALE=0: else Python turns the C locale into C.UTF-8 (PEP 538); PYTHONPATH: this elr, not another
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0",
           "PYTHONPATH": os.path.dirname(os.path.dirname(runs.__file__))}
    code = f"from elr.runs import read_json; print(read_json({str(path)!r})['note'].encode('unicode_escape').decode())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "\\u03bb = 5e-4", done.stderr


def test_a_runs_gaps_against_its_config_and_summary(tmp_path):
    path = fakeruns.write_run(tmp_path, "r", epochs=14)
    records = [json.loads(line) for line in (path / runs.METRICS).read_text().splitlines()]
    by_epoch = {r["epoch"]: r for r in records}
    keep = [by_epoch[e] for e in (2, 14)]               # epochs 1 and 3..13 missing: 12, more than the 10 shown
    rewrite_metrics(path, keep)
    assert Run(path).problems[0] == ("epochs missing from metrics.jsonl: 1, 3, 4, 5, 6, 7, 8, 9, 10, 11 ... "
                                     "(12 in all)")
    rewrite_metrics(path, [by_epoch[e] for e in (1, 3)] + [by_epoch[e] for e in range(5, 15)])
    assert Run(path).problems[0] == "epochs missing from metrics.jsonl: 2, 4"      # exactly 2: no "in all"
    missing_ten = [by_epoch[e] for e in (1, 12, 13, 14)]                           # 2..11: exactly ten shown
    rewrite_metrics(path, missing_ten)
    assert Run(path).problems[0] == "epochs missing from metrics.jsonl: 2, 3, 4, 5, 6, 7, 8, 9, 10, 11"
    # nothing logged and no summary: unfinished at 0 epochs, and no epoch counts as missing
    rewrite_metrics(path, [])
    (path / runs.SUMMARY).unlink()
    assert Run(path).problems == ["unfinished: no summary.json, 0 of 14 epochs logged"]


def test_a_record_without_an_epoch_and_a_torn_tail_are_reported_not_analysed(tmp_path):
    path = fakeruns.write_run(tmp_path, "r", epochs=3)
    records = [json.loads(line) for line in (path / runs.METRICS).read_text().splitlines()]
    extra = {k: v for k, v in records[-1].items() if k != "epoch"}    # no epoch key: not a record
    rewrite_metrics(path, records + [extra], tail=b'{"epoch": 4, "tr')
    run = Run(path)
    assert [r["epoch"] for r in run.metrics] == [1, 2, 3]
    assert run.problems == [f"metrics.jsonl line {len(records) + 1} is damaged (not a record with an integer epoch) "
                            "and skipped", "metrics.jsonl ends in a torn line (a crash mid-write), skipped"]


def test_a_setting_falls_back_to_its_default_only_when_absent_or_null(tmp_path):
    run = Run(fakeruns.write_run(tmp_path, "r", epochs=3))
    run.config["nothing"] = None
    assert run.setting("absent", 5) == 5 and run.setting("nothing", 5) == 5 and run.setting("lr", 5) == 0.1


@pytest.mark.parametrize("bad_lines, more", [((2,), ""), ((2, 4), " (and 1 more)"), ((2, 4, 5), " (and 2 more)")])
def test_a_resume_over_damaged_lines_names_the_first_and_counts_the_others(bad_lines, more, tmp_path):
    path = fakeruns.write_run(tmp_path, "r", epochs=6)
    lines = (path / runs.METRICS).read_text().splitlines()
    for number, bad in zip(bad_lines, ["garbage", "", "[1]"]):      # not JSON, blank, not a record
        lines[number - 1] = bad
    (path / runs.METRICS).write_text("\n".join(lines) + "\n")
    with pytest.raises(RunDirError) as e:
        runs.check_metrics(path)
    assert str(e.value) == (f"{path / runs.METRICS} line 2 is damaged (not JSON){more}; every other line is intact: "
                            "repair or delete that line, then rerun to resume")


@pytest.mark.parametrize("summary, ended", [
    (None, False),                                                   # no summary: still to train
    ({"finished": False, "diverged": False}, False),                 # neither (the trainer never writes it)
    ({"finished": True, "diverged": False}, True),
    ({"finished": False, "diverged": True}, True),                   # a diverged run has nothing left to train
])
def test_a_run_has_ended_when_its_summary_says_finished_or_diverged(summary, ended, tmp_path):
    path = fakeruns.write_run(tmp_path, "r", epochs=3)
    (path / runs.SUMMARY).unlink()
    if summary is not None:
        runs.write_json(path / runs.SUMMARY, {**summary, "epochs_done": 3})
    assert runs.run_ended(path) is ended


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_an_atomic_write_goes_through_a_hidden_temp_file_beside_its_target_with_the_usual_permissions(umask,
                                                                                                        tmp_path):
    seen = []

    def write(f):
        seen.extend(p.name for p in tmp_path.iterdir())     # mid-write: what a kill here would leave behind
        f.write(b"new")

    target = tmp_path / "summary.json"
    old = os.umask(umask)
    try:
        runs.atomic_write(target, write)
    finally:
        os.umask(old)
    # beside the target (os.replace within one file system is atomic), hidden, named for its target
    assert len(seen) == 1 and seen[0].startswith(".summary.json.") and seen[0].endswith(".tmp"), seen
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"] and target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask          # not mkstemp's 0600


def test_strict_json_has_no_nan_and_numpy_scalars_become_numbers(tmp_path):
    obj = {"a": np.float32(1.5), "b": np.int64(3), "c": np.float64("nan"), "d": [float("inf"), (1, -np.inf)], 5: 1}
    assert runs.clean_json(obj) == {"a": 1.5, "b": 3, "c": None, "d": [None, [1, None]], "5": 1}
    assert runs.dumps(obj) == '{"a": 1.5, "b": 3, "c": null, "d": [null, [1, null]], "5": 1}'   # keys in order
    runs.write_json(tmp_path / "s.json", obj)                                 # indented for a reader, one newline
    assert (tmp_path / "s.json").read_text() == ('{\n  "a": 1.5,\n  "b": 3,\n  "c": null,\n  "d": [\n    null,\n'
                                                 '    [\n      1,\n      null\n    ]\n  ],\n  "5": 1\n}\n')


def test_the_metrics_scan_names_each_damaged_line_and_a_missing_log_is_empty_not_torn(tmp_path):
    path = fakeruns.write_run(tmp_path, "r", epochs=6)
    lines = (path / runs.METRICS).read_text().splitlines()
    lines[1], lines[3], lines[4] = "garbage", " ", "[1]"
    initial = runs.dumps({**json.loads(lines[0]), "epoch": 0})         # the state at initialisation
    (path / runs.METRICS).write_text("\n".join([initial] + lines) + "\n")
    records, damaged, torn = runs.scan_metrics(path)
    assert damaged == [(3, "not JSON"), (5, "blank"), (6, "not a record with an integer epoch")] and not torn
    assert [r["epoch"] for r in records] == [0, 1, 3, 6] and runs.read_initial(path)["epoch"] == 0
    assert [r["epoch"] for r in runs.read_metrics(path)] == [1, 3, 6] == [r["epoch"] for r in Run(path).metrics]
    # a damaged last line, even newline-terminated, reads as a crash's torn line: a resume drops and redoes it
    with open(path / runs.METRICS, "a") as f:
        f.write('{"epoch": 7, "tr\n')
    assert runs.scan_metrics(path)[1:] == (damaged, True)
    (path / runs.METRICS).unlink()
    assert runs.scan_metrics(path) == ([], [], False)
    assert not any("torn" in p for p in Run(path).problems), Run(path).problems


def test_a_damaged_summary_says_how_to_rebuild_it(tmp_path):
    path = fakeruns.write_run(tmp_path, "r", epochs=3)
    (path / runs.SUMMARY).write_text("[]")
    with pytest.raises(RunDirError) as e:
        runs.read_summary(path)
    assert str(e.value) == (f"{path / runs.SUMMARY} is damaged (a JSON list, not an object); delete it and rerun "
                            "the training command to rebuild it from the checkpoint")
