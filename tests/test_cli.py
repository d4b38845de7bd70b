"""Bad input: one line naming the problem and the accepted values, exit 2, nothing written is touched."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from elr.cli import main

BASE = ["train", "--model", "convnet_si", "--width", "4", "--data", "synthetic", "--subset", "100",
        "--batch-size", "50", "--epochs", "1"]


@pytest.fixture
def existing(tmp_path):
    """A finished run whose bytes must survive every bad command aimed at it."""
    out = tmp_path / "run"
    assert main(BASE + ["--out", str(out)]) == 0
    return out, {p.name: p.read_bytes() for p in out.iterdir()}


def bad_npz(path, **changes):
    arrays = dict(x_train=np.zeros((20, 32, 32, 3), np.uint8), y_train=np.arange(20) % 10,
                  x_test=np.zeros((10, 32, 32, 3), np.uint8), y_test=np.arange(10) % 10)
    arrays.update(changes)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return f"npz:{path}"


def run_bad(capsys, argv, needle):
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


CASES = {
    "model": (["--model", "vgg"], "accepted: convnet_si, resnet18"),
    "optimizer": (["--optimizer", "lion"], "accepted: adam, adamw, rmsprop, sgd"),
    "schedule": (["--schedule", "onecycle"], "accepted: constant"),
    "lr zero": (["--lr", "0"], "lr must be a positive number"),
    "lr negative": (["--lr", "-0.1"], "lr must be a positive number"),
    "elr power": (["--elr-power", "3"], "elr_power must be one of 1, 2, -1, -2"),
    "epochs": (["--epochs", "x"], "invalid int value"),
    "subset too large": (["--subset", "100000"], "subset"),
    "device": (["--device", "tpu"], "accepted: cpu, cuda"),
    "compile": (["--compile", "maybe"], "unknown compile 'maybe'; accepted: auto, on, off"),
    "precision": (["--precision", "fp16"], "unknown precision 'fp16'; accepted: fp32, bf16"),
    "channels last": (["--channels-last", "maybe"], "expected true or false"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_flags(case, existing, capsys):
    out, before = existing
    extra, needle = CASES[case]
    run_bad(capsys, BASE + ["--out", str(out)] + extra, needle)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(existing, capsys):
    out, before = existing
    run_bad(capsys, BASE + ["--out", str(out), "--device", "cuda"], "CUDA is not available")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("case,changes,needle", [
    ("missing array", dict(y_test=None), "y_test"),
    ("wrong dtype", dict(x_train=np.zeros((20, 32, 32, 3), np.float32)), "uint8"),
    ("wrong shape", dict(x_train=np.zeros((20, 32, 32), np.uint8)), "x_train"),
    ("label out of range", dict(y_train=np.arange(20) - 1), "label"),
    ("length mismatch", dict(y_train=np.arange(7) % 7), "y_train"),
])
def test_bad_npz(case, changes, needle, tmp_path, existing, capsys):
    out, before = existing
    spec = bad_npz(tmp_path / "bad.npz", **changes)
    argv = [a if a != "synthetic" else spec for a in BASE if a not in ("--subset", "100")]
    run_bad(capsys, argv + ["--out", str(tmp_path / "new")], needle)
    assert not (tmp_path / "new").exists()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_unknown_data_and_missing_file(tmp_path, capsys):
    run_bad(capsys, ["train", "--data", "imagenet", "--out", str(tmp_path / "a")], "npz:PATH")
    run_bad(capsys, ["train", "--data", f"npz:{tmp_path}/none.npz", "--out", str(tmp_path / "a")], "none.npz")


def test_unknown_config_key_and_unwritable_out(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"lr": 0.1, "learning_rate": 0.2}))
    line = run_bad(capsys, ["train", "--config", str(cfg), "--out", str(tmp_path / "a")], "learning_rate")
    assert "accepted:" in line and "weight_decay" in line
    blocker = tmp_path / "file"
    blocker.write_text("x")
    run_bad(capsys, BASE + ["--out", str(blocker / "run")], "cannot write")
    assert blocker.read_text() == "x"
    if Path("/proc/self").is_dir():   # a directory even root cannot create a subdirectory in
        run_bad(capsys, BASE + ["--out", "/proc/elr-test-run"], "cannot create the run directory /proc/elr-test-run")


def test_other_config_in_existing_dir_refused(existing, capsys):
    out, before = existing
    line = run_bad(capsys, BASE + ["--out", str(out), "--lr", "0.5"], "different run")
    assert "use another --out" in line and "--fresh" not in line   # advice `elr train` can follow
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_config_file_and_flags_merge(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('lr = 0.05\nweight_decay = 0.001\nschedule = "elr"\n')
    assert main(BASE + ["--config", str(cfg), "--lr", "0.07", "--out", str(tmp_path / "r")]) == 0
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (saved["lr"], saved["weight_decay"], saved["schedule"]) == (0.07, 0.001, "elr")
    assert saved["env"]["torch"] == torch.__version__
