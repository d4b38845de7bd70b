"""The report: files, verdicts.json, a self-contained HTML, the verdict table, rebuilds, missing data.

Run directories are written by hand (config.json, metrics.jsonl, summary.json with issue 2's names),
verdicts are made by hand with the `details` layout of the decisions file: no trainer, no claims.
"""

import base64
import json
import math
import re
import shutil

import numpy as np
import pytest

from elr.report import FIGURES, verdict_table_md, write_report
from elr.runs import load_runs, write_json
from elr.verdict import HELD, INCONCLUSIVE, REFUTED, Verdict

REQUIRED_KEYS = {"id", "claim", "verdict", "statistic", "p", "p_corrected", "effect", "ci", "runs",
                 "seed_finding", "reason", "details"}
META = {"wall_time": 3725.0, "device": "cpu", "scale": "smoke", "model": "convnet_si", "data": "synthetic",
        "epochs": 30, "seeds": 1, "versions": {"torch": "2.x", "python": "3.11"}, "zeta_extra": "last"}


def make_run(root, name, group, epochs=30, lr=0.1, wd=1e-3, summary=True, final=None, diverged=False,
             nulls=()):
    """A run directory with a sawtooth-ish train loss; `nulls` = (metric, epoch) pairs stored as null."""
    d = root / name
    d.mkdir(parents=True)
    write_json(d / "config.json", {"model": "convnet_si", "optimizer": "sgd", "schedule": "elr" if group == "elr" else "cosine",
                                   "lr": lr, "momentum": 0.0, "weight_decay": wd, "epochs": epochs, "seed": 0,
                                   "labels": {"group": group, "config_id": name, "scale": "smoke"}})
    accs, records = [], []
    for e in range(1, epochs + 1):
        phase = (e % 10) / 10
        acc = 0.3 + 0.5 * (1 - math.exp(-e / 8)) + (0.05 if group == "elr" else 0.0)
        rec = {"epoch": e, "step": 10 * e, "lr": lr, "weight_decay": wd, "train_loss": 0.05 + 1.5 * phase ** 4,
               "train_acc": acc, "test_loss": 1.0, "test_acc": acc, "weight_norm": 5.0, "si_norm": 4.0 - phase,
               "si_norm_by_layer": {"conv1": 1.0}, "elr": lr / (4.0 - phase) ** 2, "elr_by_layer": {"conv1": lr},
               "grad_norm": 0.1, "effective_grad_norm": 0.4, "angular_update": 0.01, "angular_update_per_step": 0.001,
               "wall_time": float(e)}
        for metric, epoch in nulls:
            if epoch == e:
                rec[metric] = None
        records.append(rec)
        accs.append(rec["test_acc"])
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if summary:
        clean = [a for a in accs if a is not None]
        write_json(d / "summary.json", {"final_test_acc": None if diverged else (final if final is not None else accs[-1]),
                                        "best_test_acc": max(clean), "best_epoch": 1, "final_train_loss": 0.1,
                                        "epochs": epochs, "epochs_done": epochs, "steps": 10 * epochs,
                                        "finished": not diverged, "diverged": diverged,
                                        "diverged_epoch": epochs if diverged else None, "wall_time": 1.0})
    return d


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    make_run(root, "elr-a", "elr", lr=0.3, wd=1e-4)
    make_run(root, "elr-b", "elr", lr=0.01, wd=1e-3, nulls=[("test_acc", 30), ("train_loss", 12)])
    make_run(root, "base-a", "baseline", lr=0.05)
    make_run(root, "base-b", "baseline", lr=0.001, diverged=True)
    nometrics = root / "base-empty"
    nometrics.mkdir()
    write_json(nometrics / "config.json", {"optimizer": "adam", "schedule": "step", "lr": 1e-3, "epochs": 30,
                                           "labels": {"group": "baseline"}})
    return load_runs(root)


@pytest.fixture(scope="module")
def built(tmp_path_factory, runs):
    """One full report, shared by the read-only checks (a build renders seven figures: ~1 s)."""
    import matplotlib
    backend = matplotlib.rcParams["backend"]
    out = tmp_path_factory.mktemp("report")
    verdicts = make_verdicts()
    path = write_report(out, verdicts, runs, META)
    return out, verdicts, path, backend


def make_verdicts(empty=("H1",)):
    """H1..H5 with the decisions file's details; claims named in `empty` are inconclusive with {}."""
    details = {
        "H1": {"runs": {"elr-a": {"lr0": 0.3, "wd": 1e-4, "initial_elr": 0.02, "final_elr": 0.03,
                                  "equilibrated": True, "tau_epochs": 3.0}}},
        "H2": {"runs": {"elr-a": {"lr0": 0.3, "wd": 1e-4, "periodic": True,
                                  "series": {"train_loss": {"periodic": True, "peaks": [9, 19, 29], "period": 10.0,
                                                            "cv": 0.0, "surrogate_p": 0.01},
                                             "si_norm": {"periodic": False, "peaks": [10], "period": None,
                                                         "cv": None, "surrogate_p": None}}},
                        "elr-b": {"lr0": 0.01, "wd": 1e-3, "periodic": False,
                                  "series": {"train_loss": {"periodic": False, "peaks": [12, 999], "period": None,
                                                            "cv": None, "surrogate_p": None}}}},
               "association": {"spearman_lr0": 0.5}},
        "H3": {"elr_acc": {"elr-a": 0.85, "elr-b": 0.83}, "baseline_acc": {"base-a": 0.80, "base-b": 0.1},
               "elr_best": {"elr-a": 0.86, "elr-b": 0.84}, "baseline_best": {"base-a": 0.81, "base-b": 0.4}},
        "H4": {"runs": {"elr-a": {"events": [[4, 6, 9, 12.0], [20, 21, 23, 8.0]]}, "base-a": {"events": []}},
               "params": {"drop": 5, "within": 3, "recover_within": 10}, "coincide_fraction": 0.5},
        "H5": {"points": [{"run": "elr-a", "eta": 0.3, "wd": 1e-4, "momentum": 0.0, "eta_lambda": 3e-5,
                           "measured_angle": 8e-3, "predicted_angle": 7.7e-3, "elr_star": 0.02},
                          {"run": "elr-b", "eta": 0.01, "wd": 1e-3, "momentum": 0.0, "eta_lambda": 1e-5,
                           "measured_angle": 4e-3, "predicted_angle": 4.5e-3, "elr_star": 0.012},
                          {"run": "base-a", "eta": 0.05, "wd": 1e-3, "momentum": 0.9, "eta_lambda": 5e-5,
                           "measured_angle": float("nan"), "predicted_angle": 7.2e-3, "elr_star": 0.03}],
               "slope": 0.48, "slope_ci": [0.3, 0.66]},
    }
    outcome = {"H1": HELD, "H2": HELD, "H3": REFUTED, "H4": HELD, "H5": HELD}
    verdicts = []
    for i, cid in enumerate(("H1", "H2", "H3", "H4", "H5")):
        is_empty = cid in empty
        verdicts.append(Verdict(
            id=cid, claim=f"claim {cid} | with a pipe", verdict=INCONCLUSIVE if is_empty else outcome[cid],
            statistic=None if is_empty else 1.5 + i, p=None if is_empty else 0.01 * (i + 1),
            effect=None if is_empty else 0.1 * i, ci=None if is_empty else (0.05 * i, 0.2 * i),
            runs=[] if is_empty else ["elr-a", "elr-b"], reason=f"reason text for {cid}",
            seed_finding=f"seed saw {cid}", p_corrected={} if is_empty else {"holm": 0.02 * (i + 1), "bh": 0.015 * (i + 1)},
            details={} if is_empty else details[cid]))
    return verdicts


def read_md(path):
    """report.md with Markdown's escapes in captions undone (train\\_loss -> train_loss)."""
    return path.read_text().replace("\\_", "_").replace("\\*", "*")


def section_positions(md, *needles):
    positions = [md.index(n) for n in needles]
    assert positions == sorted(positions), f"sections out of order: {list(zip(needles, positions))}"


def test_report_writes_every_file(built):
    out, _, path, _ = built
    assert path == out / "report.md"
    for name in ("report.md", "report.html", "verdicts.json", *FIGURES):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in FIGURES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    total = sum(p.stat().st_size for p in out.iterdir())
    assert total < 3_000_000, f"report is {total} bytes"
    assert not list(out.glob(".*tmp")), "temporary files left behind"


def test_verdicts_json_one_object_per_claim(built):
    out, verdicts, _, _ = built
    data = json.loads((out / "verdicts.json").read_text())
    assert [d["id"] for d in data] == ["H1", "H2", "H3", "H4", "H5"]
    for d, v in zip(data, verdicts):
        assert REQUIRED_KEYS <= set(d), REQUIRED_KEYS - set(d)
        assert d["verdict"] == v.verdict and d["p"] == v.p and d["p_corrected"] == v.p_corrected
        assert d["ci"] == (list(v.ci) if v.ci else None)
    assert data[0]["verdict"] == INCONCLUSIVE and data[0]["details"] == {} and data[0]["p_corrected"] == {}
    # H5's NaN measured angle became null: verdicts.json is strict JSON
    assert data[4]["details"]["points"][2]["measured_angle"] is None


def test_html_is_self_contained(built):
    out = built[0]
    page = (out / "report.html").read_text()
    imgs = re.findall(r"<img\b[^>]*>", page)
    assert len(imgs) == len(FIGURES)
    srcs = [re.search(r'src="([^"]*)"', tag).group(1) for tag in imgs]
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    # the embedded image is the PNG file itself
    assert base64.b64decode(srcs[0].split(",", 1)[1]) == (out / "curves_elr.png").read_bytes()
    for attr in re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', page):
        assert attr.startswith("data:"), attr
    assert "<link" not in page and "<script" not in page and "url(" not in page


def test_markdown_table_lists_every_claim_with_its_verdict(built):
    _, verdicts, path, _ = built
    table = verdict_table_md(verdicts)
    lines = table.splitlines()
    assert lines[0].startswith("| id | claim | verdict | seed's finding | statistic | p | p Holm | p BH | effect [CI]")
    assert len(lines) == 2 + len(verdicts)
    for v, line in zip(verdicts, lines[2:]):
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        assert len(cells) == 9, line  # the pipe inside the claim is escaped, not a column break
        assert cells[0] == v.id and cells[2] == v.verdict and cells[3] == v.seed_finding
    h3 = lines[2 + 2]
    assert "| 0.03 | 0.06 | 0.045 | 0.2 [0.1, 0.4] |" in h3
    assert "| — | — | — | — | — |" in lines[2]  # the inconclusive H1: no numbers, no crash

    md = read_md(path)
    assert table in md
    for v in verdicts:
        assert f"{v.id} ({v.verdict}): {v.reason}" in md
    section_positions(md, "# ELR study report — smoke", table, "reason text for H5", "curves_elr.png",
                      "curves_test_acc.png", "accuracy.png", "h5_angle.png", "## Runs", "## Setup")


def test_markers_runs_table_and_setup(built):
    assert r"*train\_loss per run;" in built[2].read_text()  # captions are italic, names escaped
    md = read_md(built[2])
    # train_loss: elr-a's 3 peaks, elr-b's epoch 12 is a null value and 999 is not an epoch -> 3 marked
    assert "train_loss per run" in md and "; 3 H2 peaks marked" in md
    assert "; 1 H2 peaks marked" in md  # si_norm: elr-a's one non-periodic peak
    assert "2 H4 drop events marked" in md
    assert "slope 0.48" in md and "(Wan et al. 2021), 2 runs;" in md  # base-a's NaN angle is left out of the angle plot
    # runs table: a diverged run without a final accuracy counts as chance; the run without metrics is listed
    assert re.search(r"\| base-b \| baseline \| sgd \| cosine \| 0\.001 \|.*\| 10\.0% \|.*\| yes \(epoch 30\) \| 30/30 \|", md)
    assert re.search(r"\| base-empty \| baseline \| adam \| step \|.*\| — \| — \| — \| 0/30 \|", md)
    setup = md[md.index("## Setup"):]
    order = [m.group(1) for m in re.finditer(r"^\| (\w+) \|", setup, re.M)][1:]
    assert order == ["scale", "data", "model", "epochs", "seeds", "versions", "device", "wall_time", "zeta_extra"]
    assert "3725.0 s (1:02:05)" in setup and "torch 2.x, python 3.11" in setup


def test_accuracy_falls_back_to_run_summaries(tmp_path, runs):
    md = read_md(write_report(tmp_path, make_verdicts(empty=("H3", "H5")), runs, META))
    assert (tmp_path / "accuracy.png").is_file()
    assert "the runs' summaries" in md
    # baselines: base-a's own final, base-b diverged -> chance 10%; base-empty has nothing
    base_a = next(r for r in runs if r.name == "base-a")
    base_final = [base_a.summary["final_test_acc"] * 100, 10.0]
    assert f"final baseline: n=2, median {np.median(base_final):.1f}%" in md


def test_rebuild_overwrites_cleanly(tmp_path, built, runs):
    out = tmp_path / "report"
    shutil.copytree(built[0], out)
    before = (out / "curves_elr.png").read_bytes()
    # second build: fewer runs, H5 without details, one claim fewer
    md = read_md(write_report(out, make_verdicts(empty=("H5",))[1:], [r for r in runs if r.name != "elr-a"], META))
    assert not (out / "h5_angle.png").exists() and not (out / "h5_elr_star.png").exists()
    assert "h5_angle.png omitted" in md and "](h5_angle.png)" not in md
    assert (out / "curves_elr.png").read_bytes() != before
    data = json.loads((out / "verdicts.json").read_text())
    assert [d["id"] for d in data] == ["H2", "H3", "H4", "H5"]
    assert "elr-a" not in md.split("## Runs")[1]
    assert "elr-a" not in (out / "report.html").read_text().split("<h2>Runs</h2>")[1]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["report.md", "report.html", "verdicts.json", "curves_elr.png", "curves_si_norm.png",
         "curves_train_loss.png", "curves_test_acc.png", "accuracy.png"])


def test_nothing_to_show_still_writes_a_report(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "elr-nan", "elr", epochs=5, summary=False,
             nulls=[(m, e) for m in ("elr", "si_norm", "train_loss", "test_acc") for e in range(1, 6)])
    bare = root / "bare"
    bare.mkdir()
    write_json(bare / "config.json", {"labels": {}})
    runs = load_runs(root)
    out = tmp_path / "report"
    md = read_md(write_report(out, make_verdicts(empty=("H1", "H2", "H3", "H4", "H5")), runs, {}))
    assert not any((out / name).exists() for name in FIGURES)
    assert md.count("omitted") == len(FIGURES)
    assert "no run has a finite `elr` value" in md
    assert "No setup recorded." in md
    assert "<img" not in (out / "report.html").read_text()
    md = read_md(write_report(out, [], [], {}))
    assert "No claim was evaluated." in md and "No runs." in md
    assert json.loads((out / "verdicts.json").read_text()) == []


def test_long_runs_get_a_log_epoch_axis(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "elr-long", "elr", epochs=201)
    md = read_md(write_report(tmp_path / "r", [], load_runs(root), {}))
    assert "elr per run; ELR arm solid, baselines dashed; log epoch axis, log y" in md
    assert "test_acc per run; ELR arm solid, baselines dashed; log epoch axis." in md


def test_figures_use_no_pyplot_state(built):
    import sys

    import matplotlib
    assert matplotlib.rcParams["backend"] == built[3]
    if "matplotlib.pyplot" in sys.modules:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []
