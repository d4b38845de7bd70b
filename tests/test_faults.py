"""Faults and hostile input (issue 10): damaged run directories, concurrent trainers, wrongly typed settings,
a kill at the worst moment, disk full. Each promises one line `elr: error: ...`, exit 2, and nothing already
written lost."""

import json
from pathlib import Path

import pytest

from elr import runs
from elr.cli import main

TINY = ["--model", "convnet_si", "--width", "4", "--data", "synthetic", "--subset", "100", "--batch-size", "50"]


def train_cli(out, epochs=3, *extra):
    return ["train", *TINY, "--epochs", str(epochs), "--out", str(out), *extra]


def run_bad(capsys, argv, needle):
    """Exit 2 with one line naming the problem (tests/test_cli.py's contract)."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("elr: error:") and needle.lower() in lines[0].lower(), lines[0]
    return lines[0]


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
