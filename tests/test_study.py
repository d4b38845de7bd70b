"""The study layer: design expansion, and the pytest plugin end to end on a micro study (pytester)."""

import json
import math
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from elr.cli import main
from elr.config import ConfigError
from elr.training.models import build_model
from elr.study import Design, baseline_draws, expand

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "experiments" / "design.toml"
MICRO = """
[scales.micro]
model = "convnet_si"
width = 2
data = "synthetic"
subset = 60
epochs = 12
"""


def test_design_expands_to_the_seeds_16_configurations_the_sgd_arm_and_controls():
    design = Design.load(DESIGN)
    runs = expand(design, "smoke")
    groups = [cfg.labels["group"] for _, cfg in runs]
    assert len(runs) == 26 and [groups.count(g) for g in ("elr", "baseline", "sgd", "control")] == [8, 8, 8, 2]
    assert len({name for name, _ in runs}) == 26
    elr = [cfg for _, cfg in runs if cfg.labels["group"] == "elr"]
    assert all((c.optimizer, c.schedule, c.elr_power, c.momentum) == ("sgd", "elr", 1, 0.0) for c in elr)
    grid = {(c.lr, c.weight_decay) for c in elr}
    assert grid == {(lr, wd) for lr in design.elr["lr0"] for wd in design.elr["weight_decay"]}
    assert baseline_draws(design.baseline) == baseline_draws(design.baseline)  # the recorded seed fixes them
    for _, c in runs:
        lo, hi = design.baseline["lr"][c.optimizer] if c.labels["group"] == "baseline" else (0, 1e9)
        assert lo <= c.lr <= hi
    # the sgd arm: one twin per grid cell, constant lr = the twin's first rate lr0 / ||w0|| over all weights,
    # recomputed here from a freshly seeded model in float64
    torch.manual_seed(0)
    model = build_model(elr[0].model, width=elr[0].width)
    w0 = math.sqrt(sum(float((p.detach().double() ** 2).sum()) for p in model.parameters() if p.requires_grad))
    twins = {c.labels["twin"]: c for _, c in runs if c.labels["group"] == "sgd"}
    assert set(twins) == {c.labels["config_id"] for c in elr}
    for c in elr:
        t = twins[c.labels["config_id"]]
        assert (t.optimizer, t.schedule, t.momentum, t.weight_decay) == ("sgd", "constant", 0.0, c.weight_decay)
        assert t.lr == pytest.approx(c.lr / w0, rel=1e-6)
    controls = {c.labels["control"]: c for _, c in runs if c.labels["group"] == "control"}
    assert controls["periodic"].weight_decay > 0 and controls["smooth"].weight_decay == 0
    full = {c.labels["control"]: c for _, c in expand(design, "full") if c.labels["group"] == "control"}
    assert (full["periodic"].lr, full["periodic"].weight_decay) == (0.01, 1e-3)  # the scale's override
    assert controls["periodic"].epochs == controls["smooth"].epochs == 2 * elr[0].epochs   # epochs_factor 2
    assert full["periodic"].epochs == full["smooth"].epochs == 10_000                      # the full scale's 1
    # a scale changes model, data and epochs (and the epoch-proportional schedule lengths), nothing else;
    # the sgd twins' lr follows the model's initial norm
    ignore = {"model", "width", "data", "subset", "test_subset", "epochs", "labels", "step_size", "milestones",
              "gamma", "warmup_epochs", "plateau_patience"}
    for (_, a), (_, b) in zip(runs, expand(design, "cpu")):
        drop = ignore | ({"lr"} if a.labels["group"] == "sgd" else set())
        assert a.labels == {**b.labels, "scale": "smoke", **({"matched_lr": a.lr} if "matched_lr" in a.labels else {})}
        assert {k: v for k, v in a.identity().items() if k not in drop} == \
               {k: v for k, v in b.identity().items() if k not in drop}
    assert len(expand(design, "smoke", seeds=3)) == 78


def test_bad_design_and_scale(tmp_path):
    bad = tmp_path / "d.toml"
    bad.write_text(DESIGN.read_text() + "\n[scales.x]\nmodel = 'convnet_si'\nbatch_size = 64\n")
    with pytest.raises(ConfigError, match="a scale sets only"):
        Design.load(bad)
    with pytest.raises(ConfigError, match="unknown scale 'huge'; accepted: smoke, cpu, full"):
        Design.load(DESIGN).scale("huge")


@pytest.fixture
def micro(pytester):
    """A pytester project with the real conftest and claim tests and a micro scale (seconds to train)."""
    pytester.makeconftest((ROOT / "conftest.py").read_text())
    (pytester.path / "experiments").mkdir()
    (pytester.path / "experiments" / "test_claims.py").write_text((ROOT / "experiments" / "test_claims.py").read_text())
    design = DESIGN.read_text().replace("batch_size = 128", "batch_size = 50") + MICRO
    (pytester.path / "experiments" / "design.toml").write_text(design)
    return pytester


def outcomes(junit: Path) -> dict:
    """claim id -> PASSED / FAILED / SKIPPED, from pytest's junit xml."""
    found = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        claim = case.get("name").split("_")[1].upper()
        kinds = {child.tag for child in case}
        found[claim] = "FAILED" if "failure" in kinds else "SKIPPED" if "skipped" in kinds else "PASSED"
    return found


def test_plugin_end_to_end_under_xdist_writes_one_report(micro, monkeypatch):
    monkeypatch.setenv("ELR_PROGRESS_SECONDS", "0.5")
    args = ["experiments/", "--scale", "micro", "-p", "no:cacheprovider", "--report-dir", "rep"]
    first = micro.runpytest_subprocess(*args, "-n", "2", "--junitxml=first.xml")
    assert first.ret in (0, 1), first.stdout.str()
    reports = list((micro.path / "rep").iterdir())
    assert len(reports) == 1 and reports[0].name.startswith("micro-")
    for f in ("report.md", "report.html", "verdicts.json"):
        assert (reports[0] / f).is_file()
    verdicts = {v["id"]: v for v in json.loads((reports[0] / "verdicts.json").read_text())}
    assert sorted(verdicts) == ["H1", "H2", "H3", "H4", "H5", "H6"]
    expected = {"held": "PASSED", "refuted": "FAILED", "inconclusive": "SKIPPED"}
    assert outcomes(micro.path / "first.xml") == {k: expected[v["verdict"]] for k, v in verdicts.items()}
    assert len(list((micro.path / "runs" / "micro").glob("*/summary.json"))) == 26
    out = first.stdout.str()
    assert "elr study report" in out and str(reports[0] / "report.md") in out and str(reports[0] / "report.html") in out
    assert all(f"{k}  {v['verdict']}" in out for k, v in verdicts.items())   # the aligned summary
    assert "elr study micro: 26/26 runs done" in out and "epochs" in out        # the controller's progress
    assert out.rindex("elr study micro: ") < out.index("elr study report")      # ... ends before the summary

    # the reproducibility contract: the same study trained again serially (one thread per run either way)
    # gives identical metrics, value for value, and an identical verdicts.json
    second = micro.runpytest_subprocess(*args[:-1], "rep2", "--runs-dir", "serial", "--junitxml=second.xml")
    assert second.ret == first.ret, second.stdout.str()
    reports2 = list((micro.path / "rep2").iterdir())
    assert len(reports2) == 1
    assert (reports2[0] / "verdicts.json").read_text() == (reports[0] / "verdicts.json").read_text()
    assert outcomes(micro.path / "second.xml") == outcomes(micro.path / "first.xml")
    from elr import runs

    for run in (micro.path / "runs" / "micro").iterdir():
        if run.is_dir():
            strip = lambda recs: [{k: v for k, v in r.items() if k != "wall_time"} for r in recs]  # noqa: E731
            assert strip(runs.read_metrics(run)) == strip(runs.read_metrics(micro.path / "serial" / "micro" / run.name))
            assert json.loads((run / "config.json").read_text())["env"]["threads"] == 1
    again = {k: v["verdict"] for k, v in verdicts.items()}

    # packed 4 runs to a step (on a CPU each model's own forward in turn): the same metrics, the same verdicts
    third = micro.runpytest_subprocess(*args[:-1], "rep3", "--runs-dir", "packed", "--pack", "4")
    assert third.ret == first.ret, third.stdout.str()
    (report3,) = list((micro.path / "rep3").iterdir())
    packed = {v["id"]: v["verdict"] for v in json.loads((report3 / "verdicts.json").read_text())}
    assert packed == again
    packs = [json.loads((r / "config.json").read_text())["env"]["pack"] for r in (micro.path / "packed" / "micro").iterdir()
             if r.is_dir()]
    assert max(packs) == 4 and len(packs) == 26
    for run in (micro.path / "runs" / "micro").iterdir():
        if run.is_dir():
            assert strip(runs.read_metrics(run)) == strip(runs.read_metrics(micro.path / "packed" / "micro" / run.name))

    # verdicts judged again from the run directories alone agree (elr report's path: test_report_finds_...)
    from elr.analysis.claims import evaluate_all

    rebuilt = {v.id: v.verdict for v in evaluate_all(runs.load_runs(micro.path / "runs" / "micro"))}
    assert rebuilt == again


def test_long_study_needs_gpu_missing_data_stops_and_long_never_starts_by_default(micro):
    def pytest_cmd(*args):  # three sessions side by side: each is mostly interpreter start-up
        return subprocess.Popen([sys.executable, "-m", "pytest", "experiments/", "-p", "no:cacheprovider", *args],
                                cwd=micro.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    stray = micro.path / "kept" / "micro" / "notes.txt"
    stray.parent.mkdir(parents=True)
    stray.write_text("mine")
    refused = pytest_cmd("--scale", "micro", "--fresh", "--runs-dir", "kept")
    long_run = pytest_cmd("-m", "long")
    missing = pytest_cmd("--scale", "micro", "--data", "npz:none.npz", "-n", "2")
    collected = pytest_cmd("--collect-only", "-q")
    out = {name: (p.communicate()[0], p.returncode) for name, p in
           [("long", long_run), ("missing", missing), ("collected", collected), ("refused", refused)]}
    text, code = out["refused"]
    assert code == 2 and text.count("--fresh refuses to delete") == 1 and "Traceback" not in text, text
    assert stray.read_text() == "mine"
    text, code = out["long"]
    assert code == 2 and text.count("the long study trains on CUDA: add --gpu") == 1, text   # once, not twice
    text, code = out["missing"]
    assert code == 2 and text.count("none.npz does not exist") == 1 and not (micro.path / "runs").exists(), text
    text, code = out["collected"]
    assert code == 0, text
    assert "test_h1_elr_converges_to_one_value[selected]" in text and "[full]" not in text
    assert "6 deselected" in text


def test_report_command_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "no study in" in capsys.readouterr().err


def test_report_finds_the_studies_and_never_overwrites_another_studys_report(tmp_path, capsys, monkeypatch):
    import fakeruns
    from elr.analysis.report import SOURCE
    from elr.study import find_studies

    runs_dir = tmp_path / "runs"
    fakeruns.write_run(runs_dir, "demo", epochs=5)                       # a lone run beside the study
    for i in range(2):
        fakeruns.write_run(runs_dir / "smoke", f"r{i}", epochs=5)
    fakeruns.write_run(tmp_path / "other" / "smoke", "r0", epochs=5)     # another study, the same scale
    assert find_studies(runs_dir) == find_studies(runs_dir / "smoke") == [runs_dir / "smoke"]
    with pytest.raises(ConfigError, match="no study in"):
        find_studies(runs_dir / "demo")
    monkeypatch.chdir(tmp_path)
    assert main(["report", "runs"]) == 0
    first = Path(capsys.readouterr().out.strip())
    assert first.parent.parent == Path("reports") and first.parent.name.startswith("fake-")
    assert (first.parent / SOURCE).read_text().strip() == str((runs_dir / "smoke").resolve())
    assert main(["report", "runs"]) == 0                                  # the same study: rebuilt in place
    assert Path(capsys.readouterr().out.strip()) == first
    assert main(["report", "other"]) == 0                                 # another study: a new folder
    second = Path(capsys.readouterr().out.strip())
    assert second.parent.name == first.parent.name + "-2" and (first.parent / "report.md").exists()


def test_a_changed_design_under_a_runs_directory_gives_study_advice(tmp_path):
    from elr import runs
    from elr.study import train_all

    name, cfg = expand(Design.load(DESIGN), "smoke")[0]
    (tmp_path / name).mkdir()
    runs.write_json(tmp_path / name / runs.CONFIG, {**cfg.to_dict(), "lr": cfg.lr * 2})
    with pytest.raises(ConfigError, match=r"different run .*--runs-dir, or --fresh"):
        train_all([(name, cfg)], tmp_path)


def test_study_progress_counts_from_the_runs_directory(tmp_path):
    import io

    from elr import runs
    from elr.study import StudyProgress

    configs = expand(Design.load(DESIGN), "smoke")[:3]
    (a, ca), (b, cb), (c, _) = configs
    for name, n in ((a, ca.epochs), (b, 7)):
        (tmp_path / name).mkdir()
        (tmp_path / name / runs.METRICS).write_text("".join(json.dumps({"epoch": e}) + "\n" for e in range(n + 1)))
    runs.write_json(tmp_path / a / runs.SUMMARY, {"finished": True})
    stream = io.StringIO()
    progress = StudyProgress(configs, tmp_path, label="smoke", stream=stream, every=60, tty=False)
    line = progress.line()
    assert line.startswith(f"elr study smoke: 1/3 runs done, {ca.epochs + 7}/{3 * ca.epochs} epochs")
    assert f"training {b} epoch 7/{cb.epochs}" in line and c not in line
    progress.start().stop()
    assert stream.getvalue().count("\n") == 1 and stream.getvalue().startswith("elr study smoke: 1/3")


def test_the_study_through_submitit_jobs_gives_the_local_verdicts(micro, monkeypatch):
    """`--executor submitit-local`: the slurm executor's submit / wait path with jobs as local processes (two
    tasks of 13 packed runs); the same verdicts.json as the study trained in-process."""
    pytest.importorskip("submitit")
    from elr import runs

    monkeypatch.setenv("ELR_PROGRESS_SECONDS", "1")
    args = ["experiments/", "--scale", "micro", "-p", "no:cacheprovider"]
    local = micro.runpytest_subprocess(*args, "--report-dir", "rep-local", "--runs-dir", "local")
    jobs = micro.runpytest_subprocess(*args, "--report-dir", "rep-jobs", "--runs-dir", "jobs",
                                      "--executor", "submitit-local", "--pack", "13")
    assert jobs.ret == local.ret, jobs.stdout.str()
    (a,), (b,) = (micro.path / "rep-local").iterdir(), (micro.path / "rep-jobs").iterdir()
    assert (b / "verdicts.json").read_text() == (a / "verdicts.json").read_text()
    tasks = json.loads((micro.path / "jobs" / "micro" / ".cluster.json").read_text())["tasks"]
    assert sorted(len(t["runs"]) for t in tasks) == [13, 13]
    assert "elr cluster micro:" in jobs.stdout.str()          # the controller's line with the job ids
    # the CLI's study (no pytest): the same runs directory is reused as it stands, the same verdicts
    cli = subprocess.run([sys.executable, "-m", "elr", "study", "run", "--scale", "micro", "--design",
                          "experiments/design.toml", "--runs-dir", "jobs", "--report-dir", "rep-cli"],
                         cwd=micro.path, capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    (c,) = (micro.path / "rep-cli").iterdir()
    assert (c / "verdicts.json").read_text() == (a / "verdicts.json").read_text()
    assert f"report: rep-cli/{c.name}/report.md" in cli.stdout and "H1  " in cli.stdout   # paths and the summary
    # the controller SIGKILLed mid-study, then the same command: it follows the jobs still running, resubmits
    # what ended unfinished, trains no run twice, and reports the same verdicts
    cmd = [sys.executable, "-m", "pytest", *args, "--report-dir", "rep-killed", "--runs-dir", "killed",
           "--executor", "submitit-local", "--pack", "13"]
    first = subprocess.Popen(cmd, cwd=micro.path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = micro.path / "killed" / "micro"
    deadline = time.time() + 120
    while time.time() < deadline and not any(m.read_bytes().count(b"\n") >= 3 for m in killed.glob("*/metrics.jsonl")):
        time.sleep(0.05)                    # some run is two epochs in: the study is under way, far from done
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (micro.path / "rep-killed").exists() and not all(runs.run_ended(r) for r in killed.iterdir()
                                                                if runs.is_run_dir(r))
    again = subprocess.run(cmd, cwd=micro.path, capture_output=True, text=True)
    assert again.returncode == local.ret, again.stdout
    (k,) = (micro.path / "rep-killed").iterdir()
    assert (k / "verdicts.json").read_text() == (a / "verdicts.json").read_text()
    for run in killed.iterdir():
        if runs.is_run_dir(run):
            epochs = [r["epoch"] for r in runs.read_metrics(run)]
            assert epochs == sorted(set(epochs)) and epochs[0] == 1, run.name      # each epoch logged once
    bad = micro.runpytest_subprocess(*args, "--executor", "slurm")
    assert bad.ret == 2 and "--executor slurm needs SLURM" in bad.stderr.str() + bad.stdout.str()
