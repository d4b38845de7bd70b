"""The report, through the real chain: planted run directories -> claims.evaluate_all -> write_report.

The planted study (tests/planted.py) has every arm the design has, and every claim decided.
An older study (no epoch-0 records, no controls, no SGD arm) must give notes instead of figures.
"""

import base64
import json
import math
import re
import shutil
from pathlib import Path

import pytest

import fakeruns
from planted import ELR_GRID, N_TEST, SAW, write_planted_study
from elr.analysis import claims
from elr.analysis.report import DECISIONS, FIGURES, H6_MEANING, LEGACY_FIGURES, verdict_table_md, write_report
from elr.runs import load_runs, write_json
from elr.analysis.verdict import HELD, INCONCLUSIVE, REFUTED, Verdict

REQUIRED_KEYS = {"id", "claim", "verdict", "statistic", "p", "p_corrected", "effect", "ci", "runs",
                 "seed_finding", "reason", "details"}
META = {"wall_time": 3725.0, "device": "cpu", "scale": "fake", "model": "convnet_si", "data": "synthetic",
        "epochs": 100, "seeds": 1, "versions": {"torch": "2.x", "python": "3.11"}, "zeta_extra": "last"}

@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    write_planted_study(root)
    loaded = load_runs(root)
    return loaded, claims.evaluate_all(loaded)


@pytest.fixture(scope="module")
def built(tmp_path_factory, study):
    """One full report of the planted study, shared by the read-only checks."""
    import matplotlib
    before = {k: matplotlib.rcParams[k] for k in ("backend", "font.size", "legend.fontsize")}
    loaded, verdicts = study
    out = tmp_path_factory.mktemp("report")
    path = write_report(out, verdicts, loaded, META)
    return out, verdicts, read_md(path), before


def built_runs(built):
    return load_runs(Path((built[0] / "source.txt").read_text().strip()))


def read_md(path):
    """report.md with Markdown's escapes undone (train\\_loss -> train_loss, ELR\\* -> ELR*)."""
    return Path(path).read_text().replace("\\_", "_").replace("\\*", "*")


def section(md, cid):
    """The text of one claim's section: from its heading to the next level-2 heading."""
    start = md.index(f"\n## {cid}: ")
    end = md.find("\n## ", start + 1)
    return md[start:end if end > 0 else None]


def by_id(verdicts):
    return {v.id: v for v in verdicts}


def num(x):
    """The report's number format."""
    return f"{x:.3g}"


def pts(x):
    """An accuracy difference in points."""
    return f"{100 * x:.3g} pts"


# ---------------------------------------------------------------------------------------------- the planted study

def test_the_planted_study_decides_every_claim(study):
    """The report tests below need every claim's details filled: the planted effects are found."""
    got = {v.id: v.verdict for v in study[1]}
    assert got == {"H1": REFUTED, "H2": HELD, "H3": HELD, "H4": HELD, "H5": HELD, "H6": HELD}, \
        {v.id: v.reason for v in study[1]}


def table_rows(section_md, header_start):
    """The rows of the Markdown table whose header line starts with `header_start`: run name -> cells."""
    lines = section_md.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(header_start))
    rows = {}
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[1]] = cells
    return rows


def test_the_report_marks_what_the_claims_found(study, tmp_path):
    """End to end, write_report(evaluate_all(runs)), with the expectations taken from the verdicts' decisions
    and from the per-run analysis (inspect.analyse), never from the details' keys: a key renamed on one side
    of claims -> report leaves the report marking nothing (or "—") where the claims found something."""
    from elr.analysis.inspect import analyse

    loaded, verdicts = study
    md = read_md(write_report(tmp_path, verdicts, loaded, META))
    v = by_id(verdicts)
    h2 = table_rows(section(md, "H2"), "| id | run |")
    assert sum(cells[-1] == "yes" for cells in h2.values()) == v["H2"].statistic == 2      # the periodic runs
    h4 = table_rows(section(md, "H4"), "| id | run | transient ends")
    studied = [r for r in loaded if r.group != "control"]
    assert sum(h4[r.name][3] != "0" for r in studied) == v["H4"].statistic >= 2             # runs with a drop
    for r in studied:
        drops = analyse(r, sensitivity=False)["drops"]
        cells = h4[r.name]
        assert cells[2] == num(drops["transient_end_epoch"]), r.name
        assert cells[3] == str(len(drops["events"])), r.name
        assert [int(b.split(" (")[0]) for b in cells[4].split(", ")] == [e[1] for e in drops["events"]] \
            if drops["events"] else cells[4] == "—", r.name


# ---------------------------------------------------------------------------------------------- files

def test_report_writes_every_file(built):
    out = built[0]
    for name in ("report.md", "report.html", "verdicts.json", *FIGURES):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in FIGURES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert "omitted" not in built[2] and "could not" not in built[2], "a figure of the full study was left out"
    total = sum(p.stat().st_size for p in out.iterdir())
    assert (out / "report.html").stat().st_size < 2_500_000 and total < 5_000_000, total
    assert not list(out.glob(".*tmp")), "temporary files left behind"


def test_html_is_self_contained(built):
    out = built[0]
    page = (out / "report.html").read_text()
    imgs = re.findall(r"<img\b[^>]*>", page)
    assert len(imgs) == len(FIGURES)
    srcs = [re.search(r'src="([^"]*)"', tag).group(1) for tag in imgs]
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    first = re.search(r'alt="([^"]*)"', imgs[0]).group(1)
    assert base64.b64decode(srcs[0].split(",", 1)[1]) == (out / first).read_bytes()
    for attr in re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', page):
        assert attr.startswith("data:"), attr
    assert "<link" not in page and "<script" not in page and "url(" not in page


def test_verdicts_json_one_strict_object_per_claim(built):
    out, verdicts, _, _ = built
    text = (out / "verdicts.json").read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert [d["id"] for d in data] == ["H1", "H2", "H3", "H4", "H5", "H6"]
    for d, v in zip(data, verdicts):
        assert REQUIRED_KEYS <= set(d), REQUIRED_KEYS - set(d)
        assert d["verdict"] == v.verdict and d["p"] == v.p and d["p_corrected"] == v.p_corrected
        assert d["ci"] == (list(v.ci) if v.ci else None)
        assert Verdict.from_json({k: d[k] for k in d}).verdict == v.verdict


# ---------------------------------------------------------------------------------------------- the text

def test_every_claim_has_its_section_with_the_decision_rule(built):
    _, verdicts, md, _ = built
    assert verdict_table_md(verdicts) in md
    assert f"**Multiplicity:** {claims.MULTIPLICITY}" in md
    for v in verdicts:
        s = section(md, v.id)
        assert f"## {v.id}: {v.verdict}" in s
        assert f"**Claim:** {v.claim}" in s and f"**The seed's finding:** {v.seed_finding}" in s
        assert f"**Verdict:** {v.verdict} — {v.reason}" in s
        assert f"**How it is decided:** {DECISIONS[v.id]}" in s
    # the sentences say what claims.py does (its constants, not copies that could drift)
    assert "One-sided Mann–Whitney" in DECISIONS["H3"] and "final 10% of epochs" in DECISIONS["H3"]
    assert "Hodges–Lehmann" in DECISIONS["H3"] and "binomial sd" in DECISIONS["H3"] and "5-point" in DECISIONS["H3"]
    assert f"±{claims.H1_MARGIN:g}" in DECISIONS["H1"] and "+0.4" in DECISIONS["H1"] and "+0.6" in DECISIONS["H1"]
    assert "[0.8, 1.25]" in DECISIONS["H5"] and "Holm" in DECISIONS["H2"] and "exchange" in DECISIONS["H6"]
    positions = [md.index(f"\n## {v.id}: ") for v in verdicts] + [md.index(h) for h in
                                                                   ("## Training curves", "## Runs", "## Setup")]
    assert positions == sorted(positions)


def test_the_report_opens_with_the_answer_in_plain_words(built, tmp_path):
    _, verdicts, md, _ = built
    short = md[md.index("## In short"):md.index("## Verdicts")]
    v = by_id(verdicts)
    assert "- Held: H2, ELR runs show periodic destabilisation episodes" in short and "; H3, ELR runs reach" in short
    first = v["H1"].reason.split(". ")[0]
    assert f"- Refuted: H1, the ELR of the seed's rule converges to one value, whatever the initial lr0 and L2 ({first})." \
        in short
    assert H6_MEANING[HELD] in short and "Not decided" not in short
    # an undecided claim says why, in its own item
    undecided = Verdict(id="H6", claim="The rule helps.", verdict=INCONCLUSIVE, statistic=None, p=None, effect=None,
                        ci=None, runs=[], reason="Too few cells. More text")
    md2 = read_md(write_report(tmp_path / "r", [undecided], [], {"scale": "cpu"}))
    assert "- Not decided: H6, the rule helps. Why: Too few cells." in md2 and "- Refuted: none." in md2
    assert H6_MEANING[INCONCLUSIVE] in md2 and md2.index("## In short") < md2.index("## Verdicts")


def test_elr_and_twin_panels_are_laid_out_as_the_design_grid(study):
    """Curves: each ELR run in its (λ row, lr0 column) cell and each twin in its ELR run's cell; baselines wrap."""
    from elr.analysis.report import Catalog, _curve_sections, _section_cells

    cat = Catalog(study[0])
    lr0s, wds = sorted({lr for lr, _ in ELR_GRID}), sorted({wd for _, wd in ELR_GRID})
    sections = dict(_curve_sections(cat, "train_loss"))
    assert list(sections) == ["elr", "sgd", "baseline", "control"]
    for arm in ("elr", "sgd"):
        members = sections[arm][1:]        # a missing cell stays empty: the others keep their places
        cells, rows = _section_cells(arm, members, cat, ncols=len(lr0s))
        assert rows == len(wds)
        for run, cell in zip(members, cells):
            assert cell == (wds.index(run.config["weight_decay"]), lr0s.index(cat.lr0(run))), run.name
    cells, rows = _section_cells("baseline", sections["baseline"], cat, ncols=3)
    assert cells == [(0, 0), (0, 1), (0, 2), (1, 0)] and rows == 2


def test_h1_table_fit_and_theory_lines(built):
    _, verdicts, md, _ = built
    h1 = by_id(verdicts)["H1"].details
    s = section(md, "H1")
    assert "](h1_elr_theory.png)" in s and "no theory line" not in s   # every run has its epoch-0 record
    n = len(h1["runs"])
    assert f"in {n} of {n} panels; dotted: the fixed point ELR* for the run's final G, in {n} of {n}" in s
    for x in h1["runs"]:
        row = next(line for line in s.splitlines() if f"| {x['run']} |" in line)
        assert f"| {num(x['lr0'])} | {num(x['weight_decay'])} | {'yes' if x['stationary'] else 'no'} |" in row
        assert num(x["elr_final"]) in row and num(x["elr_fixed_point"]) in row and num(x["n_tau"]) in row
        assert f"×{math.exp(x['moved']):.3g}" in row
    for key, label in (("lr0", "log lr0"), ("weight_decay", "log λ")):
        f = h1["fit"][key]
        assert f"| {label} | {num(f['slope'])} | [{num(f['ci'][0])}, {num(f['ci'][1])}] | {f['theory']:g} | ±0.1 |" in s
    obs = h1["observation"]
    assert f"{obs['n_barely']} of {obs['n_moving']} moved their ELR" in s


def test_h2_controls_episode_epochs_sensitivities_and_association(built):
    _, verdicts, md, _ = built
    h2 = by_id(verdicts)["H2"].details
    s = section(md, "H2")
    assert "](h2_controls.png)" in s and "](h2_episodes.png)" in s
    periodic = h2["controls"]["periodic"]
    assert periodic["episodes"] == SAW                                   # the planted episodes were found ...
    epochs = ", ".join(map(str, periodic["episodes"]))
    assert f"periodic control: {len(SAW)} episodes at epochs {epochs}" in s   # ... and the figure's caption says so
    row = next(line for line in s.splitlines() if line.startswith("| periodic |"))
    assert f"| {len(SAW)}: {epochs} |" in row and f"| {periodic['sensitivity']:.2g} |" in row
    assert next(line for line in s.splitlines() if line.startswith("| smooth |")).count("| 0: none |") == 1
    n_eps = sum(len(x["episodes"]) for x in h2["runs"].values())
    assert n_eps == 2 * len(SAW) and f"red lines ({n_eps} in {len(h2['runs'])} runs)" in s
    for name, x in h2["runs"].items():
        row = next(line for line in s.splitlines() if f"| {name} |" in line)
        assert f"| {len(x['episodes'])} |" in row and f"| {x['sensitivity']:.2g} |" in row
        assert row.rstrip().endswith(f"| {'yes' if x['periodic'] else 'no'} |")
    assert h2["association"]["summary"] in s


def test_h3_accuracy_shift_margin_power(built):
    _, verdicts, md, _ = built
    h3 = by_id(verdicts)["H3"].details
    s = section(md, "H3")
    assert "](h3_accuracy.png)" in s
    # accuracy differences in points, as the runs table's accuracies are in percent
    assert f"| Hodges–Lehmann shift (ELR − baseline) | {pts(h3['hodges_lehmann'])} |" in s
    assert f"[{pts(h3['ci'][0])}, {pts(h3['ci'][1])}] ({num(h3['coverage'])})" in s
    assert f"{pts(h3['margin'])} (test split {N_TEST} images)" in s
    assert f"held {h3['power']['p_held']:.2g}" in s
    assert f"ELR rule: n={len(h3['elr_acc'])}" in s and f"baselines: n={len(h3['baseline_acc'])}" in s
    assert "plain SGD: n=8" in s                       # the third arm is in the accuracy figure, marked as such


def test_h4_drop_bottoms_and_coincidence(built):
    _, verdicts, md, _ = built
    h4 = by_id(verdicts)["H4"].details
    s = section(md, "H4")
    assert "](h4_drops.png)" in s
    assert (f"{h4['n_coincident']} of {h4['n_events']} drop events within 2 epochs of one of the run's H2 episodes "
            f"(fraction {num(h4['coincide_fraction'])}, permutation p = {num(h4['coincide_p'])})") in s
    n_drops = sum(len(x["events"]) for x in h4["runs"].values()) + sum(len(c["events"]) for c in h4["controls"].values())
    n_eps = sum(len(x["episodes"]) for x in h4["runs"].values()) + len(by_id(verdicts)["H2"].details["controls"]
                                                                       ["periodic"]["episodes"])
    assert f"{n_drops} drop-and-recovery events marked ▼" in s and f"lines ({n_eps} in all)" in s
    runs_with_events = {n: x for n, x in h4["runs"].items() if x["events"]}
    assert set(runs_with_events) == {"elr-2", "elr-3", "sgd-0"}
    for name, x in runs_with_events.items():
        row = next(line for line in s.splitlines() if f"| {name} |" in line)
        assert all(f"{ev[1]} (−" in row for ev in x["events"])
    assert "ctl-periodic (periodic control)" in s


def test_h5_points_band_and_mean(built):
    _, verdicts, md, _ = built
    h5 = by_id(verdicts)["H5"].details
    s = section(md, "H5")
    assert "](h5_angle.png)" in s and "±25% band" in s and f"{len(h5['points'])} stationary SGD runs" in s
    for p in h5["points"]:
        row = next(line for line in s.splitlines() if f"| {p['run']} |" in line)
        assert f"| {num(p['measured_angle'])} | {num(p['predicted_angle'])} | {num(p['ratio'])} |" in row
    assert f"Geometric mean of measured / predicted: {num(h5['ratio'])}" in s
    assert all(n in s for n in h5["not_stationary"])


def test_h6_spreads_cells_and_what_it_means(built):
    _, verdicts, md, _ = built
    h6 = by_id(verdicts)["H6"].details
    s = section(md, "H6")
    assert "](h6_lr_sensitivity.png)" in s and f"{len(h6['cells'])} cells paired" in s
    for wd, x in h6["per_weight_decay"].items():
        assert f"| {wd} | {pts(x['sd_elr'])} | {pts(x['sd_sgd'])} | {pts(x['sd_sgd'] - x['sd_elr'])} |" in s
    for c in h6["cells"]:
        assert f"{c['elr_run']} |" in s and f"{c['sgd_run']} |" in s
    assert H6_MEANING[HELD] in s


def test_curves_runs_table_and_setup(built):
    md = built[2]
    curves = md[md.index("## Training curves"):md.index("## Runs")]
    for metric in ("elr", "si_norm", "train_loss", "test_acc"):
        assert f"](curves_{metric}.png)" in curves
    assert "one panel per run" in curves and "laid out as the design's grid (rows λ, columns lr0)" in curves
    assert "linear epoch axis" in curves and "▼: H4's drop-and-recovery events" in curves
    assert re.search(r"dotted: the theory's fixed point .* in [1-9]\d* panels", curves)
    runs_table = md[md.index("## Runs"):md.index("## Setup")]
    assert "| epochs done | τ (epochs) | t/τ |" in runs_table
    # τ and t/τ are inspect.analyse's, for every run the theory covers (E1: SGD with the rule and weight decay)
    from elr.analysis.inspect import analyse
    e1 = next(r for r in built_runs(built) if r.name == "elr-0")
    a = analyse(e1, sensitivity=False)
    assert re.search(rf"\| E1 \| elr-0 \|.*\| {re.escape(num(a['tau_epochs']))} \| {re.escape(num(a['n_tau']))} \|", runs_table)
    assert re.search(r"\| S1 \| sgd-0 \| sgd \(twin of elr-0\) \| sgd \| constant \|", runs_table)
    assert re.search(r"\| Cp \| ctl-periodic \| control \(periodic\) \|", runs_table)
    assert re.search(r"\| E1 \| elr-0 \| elr \| sgd \| elr \| 0\.03 \| 0\.005 \|", runs_table)
    setup = md[md.index("## Setup"):]
    order = [m.group(1) for m in re.finditer(r"^\| (\w+) \|", setup, re.M)][1:]
    assert order == ["scale", "data", "model", "epochs", "seeds", "versions", "device", "wall_time", "zeta_extra"]
    assert "3725.0 s (1:02:05)" in setup and "torch 2.x, python 3.11" in setup


# ---------------------------------------------------------------------------------------------- older studies, rebuilds

def test_an_older_study_gets_notes_and_a_rebuild_removes_stale_figures(tmp_path, built):
    """Runs made before epoch-0 records, controls and the SGD arm: the report says what is missing; a rebuild
    into the full report's directory removes the figures it no longer makes (and an older version's)."""
    root = tmp_path / "runs"
    for i, (lr0, wd) in enumerate([(0.03, 5e-4), (0.3, 5e-4), (0.03, 5e-3), (0.3, 5e-3)]):
        fakeruns.write_run(root, f"0{i}-elr", group="elr", lr=lr0, weight_decay=wd, epochs=40, seed=i, noise=0.01)
    for j in range(2):
        fakeruns.write_run(root, f"1{j}-base", group="baseline", lr=10 ** -(j + 1), weight_decay=1e-4, epochs=40,
                           optimizer="adam", seed=10 + j, noise=0.01, diverged_epoch=20 if j == 1 else None)
    loaded = load_runs(root)
    out = tmp_path / "report"
    shutil.copytree(built[0], out)
    (out / LEGACY_FIGURES[0]).write_bytes(b"old")
    md = read_md(write_report(out, claims.evaluate_all(loaded), loaded, META))
    gone = {"h2_controls.png", "h5_angle.png", "h6_lr_sensitivity.png", *LEGACY_FIGURES}
    assert not any((out / name).exists() for name in gone)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        {"report.md", "report.html", "verdicts.json", "source.txt", *FIGURES} - gone)
    assert (out / "source.txt").read_text().strip() == str(root.resolve())   # the runs it was made from
    assert "h2_controls.png omitted: no detector control (periodic / smooth) in this study" in md
    assert "h6_lr_sensitivity.png omitted: no ELR / plain-SGD cell pairs in this study" in md
    assert "no theory line in any panel (no epoch-0 records" in md
    assert H6_MEANING[INCONCLUSIVE] in md
    assert "elr-0 " not in md.split("## Runs")[1] and "| 11-base | baseline |" in md
    assert re.search(r"\| 11-base \|.*\| 10\.0% \|.*\| yes \(epoch 20\) \| 20/40 \|", md)   # diverged: chance
    assert len(re.findall(r"<img\b", (out / "report.html").read_text())) == len(FIGURES) - 3


def test_missing_or_malformed_evidence_never_stops_the_report(tmp_path):
    root = tmp_path / "runs"
    fakeruns.write_run(root, "elr-nan", epochs=5, series={"train_loss": [math.nan] * 5, "test_acc": [math.nan] * 5})
    bare = root / "bare"
    bare.mkdir()
    write_json(bare / "config.json", {"labels": {}})
    loaded = load_runs(root)
    garbage = {"H1": {"runs": "x", "fit": {"lr0": 3}}, "H2": {"runs": {"elr-nan": 5}, "controls": {"periodic": 3}},
               "H3": {"elr_acc": {"elr-nan": "?"}, "ci": [1]}, "H4": {"runs": {"elr-nan": {"events": [[1]]}}},
               "H5": {"points": [{"run": "elr-nan", "measured_angle": None}]}, "H6": {"cells": [{"lr0": None}]}}
    verdicts = [Verdict(id=cid, claim=f"claim {cid}", verdict=INCONCLUSIVE, statistic=None, p=None, effect=None,
                        ci=None, runs=[], reason=f"reason {cid}", details=d) for cid, d in garbage.items()]
    out = tmp_path / "report"
    md = read_md(write_report(out, verdicts, loaded, {}))
    figures = {n for n in FIGURES if (out / n).exists()}
    assert figures <= {"curves_elr.png", "curves_si_norm.png"}          # the only finite series of elr-nan
    assert md.count("omitted") == len(FIGURES) - len(figures)
    assert "No setup recorded." in md and all(f"reason {cid}" in md for cid in garbage)
    assert "could not" not in md                     # each section coped with its garbage itself
    md = read_md(write_report(out, [], [], {}))
    assert "No claim was evaluated." in md and "No runs." in md and "Read this first" not in md
    md = read_md(write_report(out, [], [], {"scale": "smoke"}))
    assert md.index("Read this first") < md.index("Verdicts") and "say nothing about the science" in md
    assert json.loads((out / "verdicts.json").read_text()) == []
    assert not any((out / n).exists() for n in FIGURES)


def test_verdict_table_md_escapes_and_formats():
    verdicts = [Verdict(id="H1", claim="claim | with a pipe", verdict=INCONCLUSIVE, statistic=None, p=None, effect=None,
                        ci=None, runs=[], reason="r", seed_finding="seed saw H1"),
                Verdict(id="H3", claim="c", verdict=REFUTED, statistic=3.5, p=0.03, effect=0.2, ci=(0.1, 0.4),
                        runs=["a"], reason="r", seed_finding="s", p_corrected={"holm": 0.06, "bh": 0.045})]
    lines = verdict_table_md(verdicts).splitlines()
    assert lines[0] == "| id | claim | verdict | seed's finding | test statistic | p | p Holm | p BH | effect [95% CI] |"
    assert len(lines) == 4
    cells = [c.strip() for c in re.split(r"(?<!\\)\|", lines[2])[1:-1]]
    assert len(cells) == 9 and cells[1] == "claim \\| with a pipe"   # the pipe is escaped, not a column break
    assert "| — | — | — | — | — |" in lines[2]
    # the statistic named, the effect in its unit (H3: accuracy points) with what it is
    assert lines[3].endswith("| Mann–Whitney U = 3.5 | 0.03 | 0.06 | 0.045 | "
                             "+20 [+10, +40] pts: Hodges–Lehmann shift, ELR − baseline |")


def test_figures_use_no_pyplot_state(built):
    import sys

    import matplotlib
    assert {k: matplotlib.rcParams[k] for k in built[3]} == built[3]     # rc_context only, restored
    if "matplotlib.pyplot" in sys.modules:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []


def test_verdict_summary_is_aligned_and_gives_each_reason():
    from elr.analysis.report import verdict_summary

    vs = [Verdict("H1", "c", "inconclusive", None, None, None, None, [], "too few runs. More text."),
          Verdict("H4", "c", "held", None, None, None, None, [], "x" * 300)]
    lines = verdict_summary(vs, width=60).splitlines()
    assert lines[0] == "H1  inconclusive too few runs"
    assert lines[1].startswith("H4  held         x") and len(lines[1]) == 60 and lines[1].endswith("…")
