"""The report: verdicts + runs -> report.md, a self-contained report.html, PNG figures, verdicts.json.

    write_report("reports/smoke-2026-11-01", verdicts, runs, meta)   # -> Path to report.md
    print(verdict_table_md(verdicts))                                 # the table alone (terminal, README)

Layout: the verdict table and the multiplicity policy; then one section per claim (the claim, the seed's
finding, the verdict with its reason, how the claim is decided, and the figures and tables of the numbers
it was decided on: `Verdict.details` as elr/analysis/claims.py builds them); then the training curves (small
multiples, one panel per arm), the per-run table and the setup.

The report is built once as a list of blocks (headings, paragraphs, tables, figures) and rendered twice,
to Markdown (figures linked as PNG files) and to HTML (figures embedded as data: URIs, so the file can be
mailed or archived alone). Figures use matplotlib's object API on the Agg canvas: no pyplot, no global
backend switch, nothing that touches a caller's own plotting. Every file is written atomically; a rebuild
into the same directory replaces them all and removes figures it no longer makes. Missing evidence (a
verdict with empty details, a run without metrics or without an epoch-0 record, an all-NaN series, a
study without controls or without the plain-SGD arm) shrinks a figure or replaces it by a note; it never
stops the report.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import math
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from elr.analysis import claims, detectors
from elr.analysis import inspect as run_inspect
from elr.runs import Run, atomic_write, write_json
from elr.analysis.verdict import Verdict

REPORT_MD, REPORT_HTML, VERDICTS_JSON = "report.md", "report.html", "verdicts.json"
SOURCE = "source.txt"   # the runs directory the report was made from: a rebuild never overwrites another study's
PIPELINE_ONLY_SCALES = ("smoke",)   # scales whose reports open with a warning that verdicts mean nothing there
CURVE_METRICS = ("elr", "si_norm", "train_loss", "test_acc")
LOG_Y_METRICS = ("elr", "si_norm", "train_loss")
FIGURES = ("h1_elr_theory.png", "h2_controls.png", "h2_episodes.png", "h3_accuracy.png", "h4_drops.png",
           "h5_angle.png", "h6_lr_sensitivity.png") + tuple(f"curves_{m}.png" for m in CURVE_METRICS)
# Figures earlier versions of the report made: a rebuild into an old report directory removes them.
LEGACY_FIGURES = ("accuracy.png", "h5_elr_star.png")
DPI = 100                  # a full report stays well under 2 MB
GRID_COLUMNS = 6           # small multiples: at most this many panels per row
VERDICT_COLUMNS = ("id", "claim", "verdict", "seed's finding", "test statistic", "p", "p Holm", "p BH",
                   "effect [95% CI]")
RUN_COLUMNS = ("id", "run", "group", "optimizer", "schedule", "lr", "weight_decay", "momentum",
               "final test acc", "best test acc", "diverged", "epochs done", "τ (epochs)", "t/τ")
META_ORDER = ("scale", "date", "data", "subset", "test_subset", "model", "width", "epochs", "batch_size", "seeds",
              "runs", "versions", "software", "device", "wall_time")
METRIC_LABELS = {"elr": "ELR = lr / ‖w_SI‖²", "si_norm": "‖w_SI‖", "train_loss": "train loss",
                 "test_acc": "test accuracy (%)"}
# The study's arms, in report order: (name in the report, colour, id prefix). Distinct hue families.
ARMS = {"elr": ("ELR rule", "#1f5fbf", "E"), "sgd": ("plain SGD, constant lr (H6 twin)", "#238b45", "S"),
        "baseline": ("baseline", "#d95f02", "B"), "control": ("detector control", "#7b3294", "C")}
COLOUR_NAMES = {"elr": "blue", "sgd": "green", "baseline": "orange", "control": "purple"}
OTHER_ARM = ("other", "#666666", "R")
ARM_SHADES = {"elr": "Blues", "sgd": "Greens", "control": "Purples"}
BASELINE_PALETTE = ("#d95f02", "#e7298a", "#a6761d", "#e6ab02", "#b2182b", "#f4a582", "#8c510a", "#ff7f00")
LINESTYLES = ("-", "--", "-.", ":")
EPISODE_COLOR, DROP_COLOR = "#c51b1b", "#111111"
RC = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8,
      "legend.fontsize": 8, "figure.titlesize": 10}
CSS = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
       "table{border-collapse:collapse;margin:1em 0;font-size:0.85em}"
       "th,td{border:1px solid #bbb;padding:3px 6px;text-align:left;vertical-align:top}"
       "th{background:#eee}img{max-width:100%}.note{color:#666;font-style:italic}"
       ".held{color:#060;font-weight:bold}.refuted{color:#a00;font-weight:bold}"
       ".inconclusive{color:#a60;font-weight:bold}")

# How each claim is decided: one sentence per claim, from elr/analysis/claims.py's docstrings and constants.
DECISIONS = {
    "H1": (f"OLS of log final ELR (median of the last {run_inspect.FINAL_FRACTION:.0%} of epochs) on log lr0 and "
           f"log λ over the ELR runs measured stationary (norm balance closing within "
           f"{run_inspect.theory.STATIONARY_TOL:.0%}); held when both slopes' 95% CIs lie inside "
           f"±{claims.H1_MARGIN:g} (a tenfold change moves the ELR by at most {10 ** claims.H1_MARGIN:.2f}x), "
           f"refuted when a CI lies entirely outside (theory: +{claims.H1_THEORY_SLOPES['lr0']:g} on lr0, "
           f"+{claims.H1_THEORY_SLOPES['weight_decay']:g} on λ); the seed's \"barely moved\" is checked on the "
           f"non-stationary runs: final ELR within {math.exp(claims.H1_BARELY):g}x of the initial one, against the "
           f"theory's prediction for that run (within {math.exp(claims.H1_THEORY_TOL):g}x)."),
    "H2": (f"Per ELR run whose train loss converged, destabilisation episodes (a train-loss spike with a norm jump "
           f"and an ELR drop) are detected; a run is periodic with >= {detectors.MIN_EPISODES} episodes, local "
           f"irregularity <= {detectors.MAX_IRREGULARITY:g} and a surrogate p (the same number of episodes at random epochs) < "
           f"{claims.ALPHA:g} after Holm across the ELR runs; held when any run is periodic, refuted when none is "
           f"among >= {claims.H2_MIN_RUNS} runs where the detector finds >= {claims.MIN_SENSITIVITY:.0%} of injected "
           f"episodes, inconclusive when the detector fails its controls (the periodic control must show "
           f"episodes, the smooth one must not)."),
    "H3": (f"One-sided Mann–Whitney (ELR > baseline, >= {claims.H3_MIN_PER_ARM} runs per arm) on the median test "
           f"accuracy of the final {run_inspect.FINAL_FRACTION:.0%} of epochs (diverged runs at chance); "
           f"Hodges–Lehmann shift with its exact CI against a margin of one binomial sd of a test accuracy "
           f"(refuted when the CI excludes an ELR advantage as large as the margin); power for a "
           f"{claims.H3_POWER_SHIFT * 100:g}-point advantage reported."),
    "H4": (f"Drop-and-recovery events in test accuracy after the initial transient (a drop of >= {100 * detectors.DROP:g} points "
           f"and >= {detectors.NOISE_K:g}x noise within {detectors.WITHIN} epochs, regained to within "
           f"{100 * detectors.TOLERANCE:g} point within {detectors.RECOVER_WITHIN} epochs), counted per run, controls excluded; "
           f"held with >= {claims.H4_MIN_RUNS_WITH_EVENTS} runs with an event, refuted with fewer among >= "
           f"{claims.H4_MIN_RUNS} runs where the detector finds >= {claims.MIN_SENSITIVITY:.0%} of injected drops, "
           f"inconclusive when the periodic control shows no drop; the coincidence with the runs' H2 episodes "
           f"(within {detectors.COINCIDENCE_WINDOW} epochs) is reported with a permutation p."),
    "H5": (f"Per stationary SGD run with weight decay (any arm), the RMS angular update per step over whole cycles "
           f"divided by √(2ηλ/(1+μ)); held when the 95% t interval of the geometric-mean ratio over >= "
           f"{claims.H5_MIN_RUNS} runs lies inside [{1 / claims.H5_RATIO_MARGIN:.2g}, {claims.H5_RATIO_MARGIN:g}], "
           f"refuted when it lies entirely outside."),
    "H6": (f"Per λ, the sd over lr0 (>= {claims.H6_MIN_CELLS} lr0 values) of final accuracy in the ELR arm against "
           f"its plain-SGD twins, cells paired; one-sided exact exchange test swapping the arms within cells, "
           f"held at p < {claims.ALPHA:g}; refuted when the 95% interval of the spread difference (SGD − ELR, "
           f"test-split binomial noise resampled) lies at or below 0."),
}
H6_MEANING = {
    "held": ("For the seed's question this means: the ELR rule makes the final accuracy less sensitive to the "
             "initial learning rate than plain SGD with weight decay, so on this evidence it reduces (not "
             "removes) the need to cross-validate lr0."),
    "refuted": ("For the seed's question this means: the rule does not reduce the sensitivity to lr0 — plain SGD "
                "with weight decay at a constant lr already steers its own ELR to an equilibrium (docs/science.md, "
                "spherical motion dynamics), so the rule is not a substitute for cross-validating the learning "
                "rate."),
    "inconclusive": ("For the seed's question this means: the study cannot yet say whether the rule can replace "
                     "cross-validation of the learning rate; plain SGD with weight decay steers its own ELR to an "
                     "equilibrium too (docs/science.md), so the rule has to beat that, and it has not been shown to."),
}


# ---------------------------------------------------------------- formatting

def _num(x, digits: int = 3) -> str:
    if x is None or isinstance(x, bool):
        return "—" if x is None else ("yes" if x else "no")
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "—" if math.isnan(x) else f"{x:.{digits}g}"


def _short(x) -> str:
    """A compact number for panel titles and legends: 0.3, 30, 5e-4, 1.2e-5."""
    x = _finite(x)
    if x is None:
        return "—"
    if x != 0 and (abs(x) < 0.01 or abs(x) >= 1e4):
        m, e = f"{x:.1e}".split("e")
        m = m.rstrip("0").rstrip(".")
        return f"{m}e{int(e)}"
    return f"{x:.2g}"


def _pct(x) -> str:
    """Accuracies are stored as fractions; people read percent."""
    x = _finite(x)
    return "—" if x is None else f"{100 * x:.1f}%"


def _yes(x) -> str:
    return "—" if x is None else ("yes" if x else "no")


def _finite(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


# unit -> (scale, format, prefix, suffix) of a value in that unit (claims.MEASURES names each claim's units)
UNITS = {"points": (100.0, ".2g", "", " pts"), "share": (100.0, ".2g", "", "%"), "count": (1.0, ".0f", "", ""),
         "ratio": (1.0, ".3g", "×", ""), "slope": (1.0, ".3g", "", ""), "U": (1.0, ".3g", "", "")}


def _in_unit(x, unit: str, *, sign: bool = False, bare: bool = False) -> str:
    """A statistic or effect in its unit: points and shares in percent, counts whole, ratios as ×r; `bare`
    leaves out the unit's prefix and suffix (an interval writes them once)."""
    x = _finite(x)
    if x is None:
        return "—"
    scale, fmt, prefix, suffix = UNITS.get(unit, (1.0, ".3g", "", ""))
    text = format(scale * x, ("+" if sign else "") + fmt).replace("-", "−")
    return text if bare else prefix + text + suffix


def _measure(v: Verdict, key: str) -> tuple[str, str] | None:
    return (claims.MEASURES.get(v.id.upper()) or {}).get(key)


def _statistic_cell(v: Verdict) -> str:
    """"Mann–Whitney U = 34.5", "periodic ELR runs = 1": the statistic named, so counts and U values never mix."""
    if v.statistic is None:
        return "—"
    m = _measure(v, "statistic")
    if m is None:
        return _num(v.statistic)
    return f"{m[0]} = {_in_unit(v.statistic, m[1])}"


def _effect_ci(v: Verdict) -> str:
    """The effect in its unit, its 95% CI, and what it is: "+0.43 [−6.4, +8.2] pts: Hodges–Lehmann shift ..."."""
    if v.effect is None:
        return "—"
    name, unit = _measure(v, "effect") or ("", "")
    signed = unit in ("points", "slope")
    text = _in_unit(v.effect, unit, sign=signed)
    if v.ci is not None and len(v.ci) == 2:
        lo, hi = (_in_unit(c, unit, sign=signed, bare=True) for c in v.ci)
        _, _, prefix, suffix = UNITS.get(unit, (1.0, "", "", ""))
        text = f"{text.removesuffix(suffix)} [{lo}, {hi}]{suffix}"
    return f"{text}: {name}" if name else text


def _ci_text(ci, fmt=None) -> str:
    ci, fmt = _list(ci), fmt or _num
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]" if len(ci) == 2 else "—"


def _points(x) -> str:
    """An accuracy difference or sd (a fraction) in accuracy points, as the runs table's percent reads it."""
    x = _finite(x)
    return "—" if x is None else f"{100 * x:.3g} pts"


def _get(d, *keys):
    """d[k1][k2]... or None as soon as a level is missing or not a dict (details are free-form)."""
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _dict(x) -> dict:
    return x if isinstance(x, dict) else {}


def _list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else []


def _epoch_list(xs, limit: int = 40) -> str:
    xs = [int(x) for x in _list(xs) if _finite(x) is not None]
    if not xs:
        return "none"
    return ", ".join(map(str, xs[:limit])) + (f", … ({len(xs)} in all)" if len(xs) > limit else "")


def _md_em(text: str) -> str:
    """Italic Markdown; asterisks (ELR*) and underscores (train_loss) inside are escaped, not markup."""
    return "*" + _md_escape(text) + "*"


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("_", "\\_")


def _md_cell(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _md_table(header, rows) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _verdict_rows(verdicts: list[Verdict]) -> list[list[str]]:
    rows = []
    for v in verdicts:
        pc = v.p_corrected or {}
        rows.append([v.id, v.claim, v.verdict, v.seed_finding or "—", _statistic_cell(v), _num(v.p),
                     _num(pc.get("holm")), _num(pc.get("bh")), _effect_ci(v)])
    return rows


def verdict_table_md(verdicts: list[Verdict]) -> str:
    """The verdict table alone, as Markdown (the terminal summary and the README reuse it)."""
    return _md_table(VERDICT_COLUMNS, _verdict_rows(verdicts))


def verdict_summary(verdicts: list[Verdict], width: int = 110) -> str:
    """The verdicts as aligned plain-text lines for a terminal: id, verdict, and the reason's first sentence
    (the criterion that decided it, or why the claim is inconclusive), cut to `width` characters."""
    lines = []
    for v in verdicts:
        first = v.reason.split(". ")[0].strip().rstrip(".")
        head = f"{v.id:<3} {v.verdict:<12} "
        room = max(20, width - len(head))
        lines.append(head + (first if len(first) <= room else first[:room - 1] + "…"))
    return "\n".join(lines)


def verdict_json(v: Verdict) -> dict:
    """One verdicts.json object: the issue's keys first, in its order, then reason and details."""
    return {"id": v.id, "claim": v.claim, "verdict": v.verdict, "statistic": v.statistic, "p": v.p,
            "p_corrected": dict(v.p_corrected or {}), "effect": v.effect,
            "ci": list(v.ci) if v.ci is not None else None, "runs": list(v.runs),
            "seed_finding": v.seed_finding, "reason": v.reason,
            "statistic_name": (_measure(v, "statistic") or (None,))[0], "effect_name": (_measure(v, "effect") or (None,))[0],
            "effect_unit": (_measure(v, "effect") or (None, None))[1], "details": v.details or {}}


# ---------------------------------------------------------------- runs: arms, ids, labels, styles

def _labels(run: Run) -> dict:
    return _dict(run.config.get("labels"))


def _arm(run: Run) -> str:
    return run.group if run.group in ARMS else "other"


def _arm_info(arm: str) -> tuple[str, str, str]:
    return ARMS.get(arm, OTHER_ARM)


def _cfg_num(run: Run, key: str) -> float | None:
    return _finite(run.config.get(key))


def _order(runs: list[Run]) -> list[Run]:
    """Arm order (ELR, plain SGD, baselines, controls, others), then by name (the study numbers its runs)."""
    rank = {a: i for i, a in enumerate(ARMS)}
    return sorted(runs, key=lambda r: (rank.get(_arm(r), len(rank)), r.name))


class Catalog:
    """Short ids (E1, S3, B2, Cp), readable labels and line styles for every run; one per report, so a run
    keeps its id and colour in every figure and table."""

    def __init__(self, runs: list[Run]):
        self.runs = _order(runs)
        self.by_name = {r.name: r for r in self.runs}
        self.ids, self.colors, self.styles = {}, {}, {}
        counters: dict[str, int] = {}
        for r in self.runs:
            arm = _arm(r)
            prefix = _arm_info(arm)[2]
            if arm == "control" and _labels(r).get("control"):
                rid = "C" + str(_labels(r)["control"])[:1]
            else:
                counters[arm] = counters.get(arm, 0) + 1
                rid = f"{prefix}{counters[arm]}"
            while rid in self.ids.values():
                rid += "'"
            self.ids[r.name] = rid
        for arm in list(ARMS) + ["other"]:
            members = [r for r in self.runs if _arm(r) == arm]
            self._style_arm(arm, members)
        self._analyses: dict[str, dict] = {}

    def analysis(self, name: str) -> dict:
        """inspect.analyse of a run, without the sensitivity injections (the claims' own per-run numbers:
        episodes, drops, the theory's fixed point and τ); {} for a run it cannot analyse. Computed once."""
        if name not in self._analyses:
            run = self.by_name.get(name)
            try:
                self._analyses[name] = run_inspect.analyse(run, sensitivity=False) if run is not None and run.metrics else {}
            except Exception:       # a run the analysis cannot read: its panels and cells just go without
                self._analyses[name] = {}
        return self._analyses[name]

    def _style_arm(self, arm: str, members: list[Run]) -> None:
        if not members:
            return
        if arm in ("elr", "sgd"):
            # shade by lr0 (darker = larger), line style by λ: the grid reads off the legend's order
            lr0s = sorted({self.lr0(r) or 0.0 for r in members})
            wds = sorted({_cfg_num(r, "weight_decay") or 0.0 for r in members})
            cmap = colormaps[ARM_SHADES[arm]]
            for r in members:
                i = lr0s.index(self.lr0(r) or 0.0)
                self.colors[r.name] = cmap(0.45 + 0.5 * i / max(len(lr0s) - 1, 1))
                self.styles[r.name] = LINESTYLES[wds.index(_cfg_num(r, "weight_decay") or 0.0) % len(LINESTYLES)]
        elif arm == "baseline":
            for i, r in enumerate(members):
                self.colors[r.name] = BASELINE_PALETTE[i % len(BASELINE_PALETTE)]
                self.styles[r.name] = LINESTYLES[(i // len(BASELINE_PALETTE)) % len(LINESTYLES)]
        else:
            cmap = colormaps[ARM_SHADES.get(arm, "Greys")]
            for i, r in enumerate(members):
                self.colors[r.name] = cmap(0.9 - 0.45 * i / max(len(members) - 1, 1))
                self.styles[r.name] = LINESTYLES[i % len(LINESTYLES)]

    def lr0(self, run: Run) -> float | None:
        """The ELR grid cell's lr0: the run's lr for an ELR run, its twin's lr0 for a plain-SGD twin."""
        return _finite(_labels(run).get("lr0")) if _arm(run) == "sgd" and _labels(run).get("lr0") is not None \
            else _cfg_num(run, "lr")

    def id(self, name: str) -> str:
        return self.ids.get(name, name)

    def color(self, name: str):
        return self.colors.get(name, _arm_info("other")[1])

    def style(self, name: str) -> str:
        return self.styles.get(name, "-")

    def arm_color(self, name: str):
        r = self.by_name.get(name)
        return _arm_info(_arm(r) if r is not None else "other")[1]

    def title(self, name: str) -> tuple[str, str]:
        """The label split for a small panel's two-line title: (first line, start of the second or "")."""
        r = self.by_name.get(name)
        if r is not None and _arm(r) == "baseline":
            c = r.config
            return (f"{self.id(name)} {c.get('optimizer', '?')} {c.get('schedule', '?')}",
                    f"lr {_short(c.get('lr'))}")
        return self.label(name), ""

    def label(self, name: str) -> str:
        """A short readable description: E3 lr0 3, λ 5e-4 / S3 lr 0.4, λ 5e-4 / B2 adam cosine lr 1e-3."""
        r = self.by_name.get(name)
        rid = self.id(name)
        if r is None:
            return f"{rid}"
        arm, c = _arm(r), r.config
        wd = f"λ {_short(c.get('weight_decay'))}"
        if arm == "elr":
            return f"{rid} lr0 {_short(c.get('lr'))}, {wd}"
        if arm == "sgd":
            return f"{rid} lr {_short(c.get('lr'))}, {wd}"
        if arm == "baseline":
            return f"{rid} {c.get('optimizer', '?')} {c.get('schedule', '?')} lr {_short(c.get('lr'))}"
        if arm == "control":
            return f"{rid} {_labels(r).get('control', '?')} control"
        return f"{rid} {r.name[:18]}"


def _epochs(run: Run) -> np.ndarray:
    return run_inspect.epochs(run).astype(np.float64)


def _with_initial(run: Run, key: str, fallback: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of a metric, the epoch-0 record first where the run has one and it holds the key."""
    y, used = run_inspect.series(run, key, fallback)
    x = _epochs(run)
    if used and run.initial and _finite(run.initial.get(used)) is not None:
        x, y = np.concatenate([[0.0], x]), np.concatenate([[float(run.initial[used])], y])
    return x, y


# ---------------------------------------------------------------- figure helpers

def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    # "tight": titles and outside legends are never cut off
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None}, bbox_inches="tight", pad_inches=0.08)
    return _palette_png(buf.getvalue())


def _palette_png(png: bytes) -> bytes:
    """The PNG as 256 colours (octree, no dithering): line plots on white look the same and take a third
    of the bytes, which keeps a 26-run report.html well under 2 MB. The RGBA original where Pillow fails."""
    try:
        from PIL import Image
        img = Image.open(io.BytesIO(png)).convert("RGB")
        out = io.BytesIO()
        img.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(out, format="PNG")
        return out.getvalue()
    except Exception:
        return png


def _grid(n: int, *, ncols: int | None = None, panel=(2.3, 1.75), sharex=True, sharey=False):
    """A figure with n panels in rows of at most GRID_COLUMNS; unused cells removed. (fig, [axes])."""
    ncols = max(1, min(n, ncols or GRID_COLUMNS))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(panel[0] * ncols + 0.4, panel[1] * nrows + 0.5))
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=sharex, sharey=sharey).ravel()
    for ax in axes[n:]:
        ax.remove()
    return fig, list(axes[:n])


def _cell_layout(items: list[dict]) -> tuple[list[tuple[int, int]], int, int] | None:
    """Positions (row = λ, column = lr0) when every (λ, lr0) holds at most one item: the ELR grid as a grid."""
    lrs = sorted({x["lr0"] for x in items if x["lr0"] is not None})
    wds = sorted({x["wd"] for x in items if x["wd"] is not None})
    cells = [(wds.index(x["wd"]), lrs.index(x["lr0"])) if x["lr0"] is not None and x["wd"] is not None else None
             for x in items]
    if None in cells or len(set(cells)) != len(cells) or len(lrs) > GRID_COLUMNS + 2:
        return None
    return cells, len(wds), len(lrs)


def _run_grid(items: list[dict], *, panel=(2.4, 1.8), sharey=True):
    """Small multiples for ELR runs: rows λ, columns lr0 when the grid is complete, else rows of panels.
    items: dicts with lr0 and wd. Returns (fig, axes in the order of items)."""
    layout = _cell_layout(items)
    if layout is None:
        return _grid(len(items), panel=panel, sharey=sharey)
    cells, nrows, ncols = layout
    fig = Figure(figsize=(panel[0] * ncols + 0.4, panel[1] * nrows + 0.5))
    grid = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=sharey)
    used = set(cells)
    for i in range(nrows):
        for j in range(ncols):
            if (i, j) not in used:
                grid[i, j].set_axis_off()
    return fig, [grid[i, j] for i, j in cells]


def _log_y_if_positive(ax, values) -> bool:
    v = np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in values]) if values else np.array([])
    v = v[np.isfinite(v)]
    if v.size and (v > 0).all():
        ax.set_yscale("log")
        return True
    return False


def _vlines(ax, xs, **kw) -> int:
    xs = [float(x) for x in _list(xs) if _finite(x) is not None]
    for x in xs:
        ax.axvline(x, **kw)
    return len(xs)


def _at(x: np.ndarray, y: np.ndarray, epochs) -> list[tuple[float, float]]:
    index = {int(round(e)): i for i, e in enumerate(x) if np.isfinite(e)}
    pts = []
    for e in _list(epochs):
        if _finite(e) is not None and int(round(e)) in index and np.isfinite(y[index[int(round(e))]]):
            pts.append((float(e), float(y[index[int(round(e))]])))
    return pts


def _log_limits(values, min_decades: float = 1.0) -> tuple[float, float]:
    """Log-axis limits around positive values spanning at least `min_decades`, so that a power of ten
    (a labelled major tick) falls inside or near and minor tick labels never crowd the axis."""
    lo, hi = math.log10(min(values)), math.log10(max(values))
    mid, half = (lo + hi) / 2, max((hi - lo) / 2 + 0.15, min_decades / 2)
    return 10 ** (mid - half), 10 ** (mid + half)


def _log_ticks(axis, lo: float, hi: float) -> None:
    """Log-axis labels: within two decades 1-2-5 steps (0.05, 0.1, 0.2), so that an axis never shows one lone
    power of ten; wider, the powers of ten alone. Minor ticks unlabelled either way."""
    if hi / lo < 100:
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _header(fig: Figure, title: str | None, handles: list, *, ncol: int, title_lines: int = 2) -> None:
    """A figure title and a legend in a band above the panels (whose own titles take title_lines lines), laid
    out in inches so that neither overlaps the other nor the panel titles, whatever the figure's height."""
    h = fig.get_size_inches()[1]
    legend_rows = math.ceil(len(handles) / ncol) if handles else 0
    title_h = 0.32 if title else 0.0
    legend_h = 0.2 * legend_rows + (0.08 if legend_rows else 0.0)
    top = title_h + legend_h + 0.17 * title_lines + 0.12
    fig.subplots_adjust(top=1 - top / h)
    if title:
        fig.suptitle(title, y=1 - 0.04 / h, va="top", fontsize=10)
    if handles:
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1 - (title_h + 0.02) / h), ncol=ncol,
                   frameon=False)


# ---------------------------------------------------------------- H1

def _h1_rows(h1: dict) -> list[dict]:
    rows = h1.get("runs")
    if isinstance(rows, dict):       # tolerate a dict keyed by run name
        rows = [dict(v, run=v.get("run", k)) for k, v in rows.items() if isinstance(v, dict)]
    out = []
    for x in _list(rows):
        if isinstance(x, dict) and x.get("run") is not None:
            out.append(dict(x, lr0=_finite(x.get("lr0")), wd=_finite(x.get("weight_decay", x.get("wd")))))
    return out


def _h1_figure(h1: dict, cat: Catalog) -> tuple[bytes | None, str]:
    rows = [x for x in _h1_rows(h1) if x["run"] in cat.by_name]
    rows = [x for x in rows if np.isfinite(run_inspect.series(cat.by_name[x["run"]], "elr_mean", "elr")[0]).any()]
    if not rows:
        return None, "H1 lists no ELR run with a measured ELR"
    rows.sort(key=lambda x: (x["wd"] or 0.0, x["lr0"] or 0.0))
    fig, axes = _run_grid(rows, sharey=True)
    no_theory, keys, n_star = [], set(), 0
    for ax, x in zip(axes, rows):
        run = cat.by_name[x["run"]]
        ex, y = _with_initial(run, "elr_mean", "elr")
        keys.add(run_inspect.series(run, "elr_mean", "elr")[1])
        ax.plot(ex, y, color=ARMS["elr"][1], linewidth=1.1)
        try:
            pred = run_inspect.predicted_elr(run)
        except Exception:          # a theory that cannot be integrated for this run: no line, a note
            pred = None
        if pred is not None and np.isfinite(pred).any():
            ax.plot(_epochs(run), pred, color="k", linestyle="--", linewidth=1.0)
        else:
            no_theory.append((cat.id(x["run"]), "no epoch-0 record" if not run.initial else
                              run_inspect.theory_applies(run)[1] or "the recursion gave no finite value"))
        star = _finite(x.get("elr_fixed_point"))
        if star is not None and star > 0:
            ax.axhline(star, color="#555555", linestyle=":", linewidth=1.2)
            n_star += 1
        stat = "yes" if x.get("stationary") else "no"
        ax.set_title(f"{cat.id(x['run'])}: lr0 {_short(x['lr0'])}, λ {_short(x['wd'])}\nstationary: {stat}",
                     color="k" if x.get("stationary") else "#666666")
        ax.grid(True, which="major", alpha=0.3)
    _log_y_if_positive(axes[0], [_with_initial(cat.by_name[x["run"]], "elr_mean", "elr")[1] for x in rows] +
                       [[s] for s in (_finite(x.get("elr_fixed_point")) for x in rows) if s])
    for ax in axes:
        ax.tick_params(labelleft=True, labelbottom=True)
    axes[0].set_ylabel("ELR")
    for ax in axes:
        if ax.get_subplotspec().is_last_row():
            ax.set_xlabel("epoch")
    handles = [Line2D([], [], color=ARMS["elr"][1], label="measured ELR per epoch"),
               Line2D([], [], color="k", linestyle="--", label="theory: norm recursion with the run's G"),
               Line2D([], [], color="#555555", linestyle=":", label="fixed point ELR*")]
    fig.subplots_adjust(hspace=0.7, wspace=0.25)
    _header(fig, "H1: ELR against theory", handles, ncol=3)
    key = "elr_mean (step average)" if keys == {"elr_mean"} else "elr_mean where logged, else the end-of-epoch elr"
    caption = (f"ELR against theory, one panel per ELR run (rows λ, columns lr0 where the grid is complete); measured "
               f"ELR = {key}, log y shared across panels, epoch 0 = initialisation; dashed: the theory's trajectory "
               f"(inspect.predicted_elr: the norm recursion integrated from the epoch-0 norm with the run's measured "
               f"G), in {len(rows) - len(no_theory)} of {len(rows)} panels; dotted: the fixed point ELR* for the run's "
               f"final G, in {n_star} of {len(rows)}")
    if no_theory and {why for _, why in no_theory} == {"no epoch-0 record"} and len(no_theory) == len(rows):
        caption += "; no theory line in any panel (no epoch-0 records: runs made before they were logged)"
    elif no_theory:
        caption += "; no theory line for " + ", ".join(f"{rid} ({why})" for rid, why in no_theory)
    return _png(fig), caption + "."


def _h1_blocks(blocks: list, h1: dict, cat: Catalog, fig) -> None:
    blocks.append(fig("h1_elr_theory.png", lambda: _h1_figure(h1, cat)))
    rows = sorted(_h1_rows(h1), key=lambda x: (x["wd"] or 0.0, x["lr0"] or 0.0))
    if rows:
        def factor(ln):
            ln = _finite(ln)
            return "—" if ln is None else f"×{math.exp(ln):.3g}"
        blocks.append(("table", ("id", "run", "lr0", "λ", "stationary", "drift ratio D", "initial ELR", "final ELR",
                                 "predicted final ELR", "ELR*", "moved (final/initial)", "predicted move", "t/τ"),
                       [[cat.id(x["run"]), x["run"], _num(x["lr0"]), _num(x["wd"]), _yes(x.get("stationary")),
                         _num(x.get("drift_ratio")), _num(x.get("elr_initial")), _num(x.get("elr_final")),
                         _num(x.get("elr_predicted_final")), _num(x.get("elr_fixed_point")), factor(x.get("moved")),
                         factor(x.get("predicted_move")), _num(x.get("n_tau"))] for x in rows]))
        blocks.append(("note", "Final ELR: the median over the last 10% of epochs; t/τ: epochs run / the relaxation "
                               "time τ at the fixed point; D: the norm balance's drift ratio over the stationarity "
                               "window (|D| <= 0.2: stationary)."))
    fit = _dict(h1.get("fit"))
    theory_slopes = _dict(h1.get("theory_slopes")) or claims.H1_THEORY_SLOPES
    margin = _finite(h1.get("margin"))
    if fit:
        names = {"lr0": "log lr0", "weight_decay": "log λ"}
        blocks.append(("table", ("slope on", "fitted slope", "95% CI", "theory (fixed point)", "H1's band"),
                       [[names.get(k, k), _num(_get(f, "slope")), _ci_text(_get(f, "ci")),
                         _num(_get(f, "theory") if _get(f, "theory") is not None else theory_slopes.get(k)),
                         f"±{_num(margin)}" if margin is not None else "—"] for k, f in fit.items()]))
    elif h1:
        blocks.append(("note", "No slope was fitted (too few stationary ELR runs, or lr0 / λ did not vary among them); "
                               f"theory's slopes: {', '.join(f'{k} +{v:g}' for k, v in theory_slopes.items())}."))
    obs = _dict(h1.get("observation"))
    if obs:
        blocks.append(("p", f"The seed's observation, on the non-stationary ELR runs: {obs.get('n_barely', '—')} of "
                            f"{obs.get('n_moving', '—')} moved their ELR by less than 2x over the run; the theory "
                            f"predicted the final ELR within 1.5x in {obs.get('n_explained', '—')} of "
                            f"{obs.get('n_moving', '—')}."))


# ---------------------------------------------------------------- H2

def _h2_controls_figure(h2: dict, cat: Catalog) -> tuple[bytes | None, str]:
    controls = [(name, c) for name, c in _dict(h2.get("controls")).items()
                if isinstance(c, dict) and c.get("run") in cat.by_name and cat.by_name[c["run"]].metrics]
    if not controls:
        return None, "no detector control (periodic / smooth) in this study"
    fig = Figure(figsize=(4.6 * len(controls) + 0.4, 5.0))
    axes = fig.subplots(2, len(controls), squeeze=False, sharex="col")
    parts = []
    for j, (name, c) in enumerate(controls):
        run = cat.by_name[c["run"]]
        ep = [e for e in _list(c.get("episodes")) if _finite(e) is not None]
        for i, (metric, label) in enumerate((("train_loss", "train loss"), ("si_norm", "‖w_SI‖"))):
            ax = axes[i, j]
            x, y = _with_initial(run, metric)
            ax.plot(x, y, color=_arm_info("control")[1], linewidth=1.0)
            if metric == "train_loss":
                _log_y_if_positive(ax, [y])
            _vlines(ax, ep, color=EPISODE_COLOR, alpha=0.55, linewidth=0.9, linestyle="-", zorder=0)
            pts = _at(x, y, ep)
            if pts:
                ax.plot(*zip(*pts), linestyle="none", marker="o", markersize=4, color=EPISODE_COLOR, zorder=3)
            ax.set_ylabel(label)
            ax.grid(True, which="major", alpha=0.3)
        axes[1, j].set_xlabel("epoch")
        period = f", period {_num(c.get('period'))}" if c.get("period") is not None else ""
        expected = {True: "episodes", False: "none", None: "—"}.get(c.get("expected"), "—")
        ok = c.get("expected") is None or bool(c.get("found")) == bool(c.get("expected"))
        axes[0, j].set_title(f"{name} control ({cat.id(c['run'])}, {run.name[:28]})\n{len(ep)} episodes{period}; "
                             f"expected: {expected}; sensitivity {_num(c.get('sensitivity'), 2)}",
                             color="k" if ok else "#a00000")
        parts.append(f"{name} control: {len(ep)} episodes at epochs {_epoch_list(ep)}")
    fig.subplots_adjust(hspace=0.12, wspace=0.3)
    handles = [Line2D([], [], color=EPISODE_COLOR, marker="o", markersize=4, label="destabilisation episode (H2 detector)")]
    _header(fig, "H2: the detector's controls", handles, ncol=1)
    return _png(fig), ("The detector's controls: train loss (log) and SI norm per epoch, episodes the H2 detector "
                       "found marked by vertical lines and dots; " + "; ".join(parts) + ".")


def _h2_items(h2: dict, cat: Catalog) -> list[dict]:
    items = []
    for name, x in _dict(h2.get("runs")).items():
        if isinstance(x, dict):
            run = cat.by_name.get(name)
            lr0 = _finite(x.get("lr0")) if x.get("lr0") is not None else (_cfg_num(run, "lr") if run else None)
            wd = _finite(x.get("wd", x.get("weight_decay")))
            items.append(dict(x, run=name, lr0=lr0, wd=wd if wd is not None else (
                _cfg_num(run, "weight_decay") if run else None)))
    return sorted(items, key=lambda x: (x["wd"] or 0.0, x["lr0"] or 0.0, x["run"]))


def _h2_episodes_figure(h2: dict, cat: Catalog) -> tuple[bytes | None, str]:
    items = [x for x in _h2_items(h2, cat) if x["run"] in cat.by_name
             and np.isfinite(cat.by_name[x["run"]].series("train_loss")).any()]
    if not items:
        return None, "H2 lists no ELR run with a train loss"
    fig, axes = _run_grid(items, sharey=True)
    # a panel's tag on a title line of its own: beside the settings it ran into the next panel's title
    tags = ["periodic" if x.get("periodic") else ("not analysable" if not x.get("analysable", True) else "")
            for x in items]
    values, n_marked = [], 0
    for ax, x, tag in zip(axes, items, tags):
        run = cat.by_name[x["run"]]
        e, y = _epochs(run), run.series("train_loss")
        values.append(y)
        ax.plot(e, y, color=ARMS["elr"][1], linewidth=0.9)
        ep = _list(x.get("episodes"))
        n_marked += _vlines(ax, ep, color=EPISODE_COLOR, alpha=0.5, linewidth=0.8, zorder=0)
        if _finite(x.get("converged_epoch")) is not None:
            ax.axvline(float(x["converged_epoch"]), color="#888888", linestyle=":", linewidth=1.0)
        sens = _num(x.get("sensitivity"), 2)
        lines = [f"{cat.id(x['run'])}: lr0 {_short(x['lr0'])}, λ {_short(x['wd'])}", tag,
                 f"{len(ep)} episodes, sensitivity {sens}"]
        ax.set_title("\n".join(line for line in lines if line),
                     color="#a00000" if x.get("periodic") else "k",
                     fontweight="bold" if x.get("periodic") else "normal")
        ax.grid(True, which="major", alpha=0.3)
    _log_y_if_positive(axes[0], values)
    for ax in axes:
        ax.tick_params(labelleft=True, labelbottom=True)
        if ax.get_subplotspec().is_last_row():
            ax.set_xlabel("epoch")
    axes[0].set_ylabel("train loss")
    handles = [Line2D([], [], color=ARMS["elr"][1], label="train loss"),
               Line2D([], [], color=EPISODE_COLOR, alpha=0.6, label="episode"),
               Line2D([], [], color="#888888", linestyle=":", label="train loss converged")]
    tagged = any(tags)     # a third title line somewhere
    fig.subplots_adjust(hspace=0.9 if tagged else 0.7, wspace=0.25)
    _header(fig, "H2: destabilisation episodes per ELR run", handles, ncol=3, title_lines=3 if tagged else 2)
    return _png(fig), (f"Train loss of every ELR run (log y, shared), the H2 detector's episodes as red lines ({n_marked} "
                       f"in {len(items)} runs), the "
                       "epoch the loss converged (analysis starts) dotted; panel titles: episodes found and the "
                       "detector's measured sensitivity (share of injected episode trains it calls periodic in this "
                       "run); periodic runs' titles in bold red.")


def _h2_blocks(blocks: list, h2: dict, cat: Catalog, fig) -> None:
    blocks.append(fig("h2_controls.png", lambda: _h2_controls_figure(h2, cat)))
    controls = _dict(h2.get("controls"))
    if controls:
        blocks.append(("table", ("control", "id", "run", "expected", "found periodic", "episodes (epochs)", "period",
                                 "sensitivity"),
                       [[name, cat.id(_get(c, "run") or ""), _get(c, "run") or "—",
                         {True: "periodic", False: "not periodic", None: "—"}.get(_get(c, "expected"), "—"),
                         _yes(_get(c, "found")), f"{len(_list(_get(c, 'episodes')))}: {_epoch_list(_get(c, 'episodes'))}",
                         _num(_get(c, "period")), _num(_get(c, "sensitivity"), 2)]
                        for name, c in controls.items() if isinstance(c, dict)]))
    blocks.append(fig("h2_episodes.png", lambda: _h2_episodes_figure(h2, cat)))
    items = _h2_items(h2, cat)
    if items:
        blocks.append(("table", ("id", "run", "lr0", "λ", "analysable", "converged (epoch)", "episodes", "period",
                                 "irregularity", "surrogate p", "p Holm", "sensitivity", "periodic"),
                       [[cat.id(x["run"]), x["run"], _num(x["lr0"]), _num(x["wd"]), _yes(x.get("analysable")),
                         _num(x.get("converged_epoch")), f"{len(_list(x.get('episodes')))}",
                         _num(x.get("period")), _num(x.get("irregularity")), _num(x.get("surrogate_p")),
                         _num(x.get("p_holm")), _num(x.get("sensitivity"), 2), _yes(x.get("periodic"))]
                        for x in items]))
        eps = [f"{cat.id(x['run'])}: {_epoch_list(x.get('episodes'))}" for x in items if _list(x.get("episodes"))]
        if eps:
            blocks.append(("p", "Episode epochs: " + "; ".join(eps) + "."))
    assoc = _dict(h2.get("association"))
    if assoc.get("summary"):
        blocks.append(("p", str(assoc["summary"])))


# ---------------------------------------------------------------- H3

def _final_accuracies(runs: list[Run]) -> dict[str, float]:
    """Final test accuracy per run as the claims measure it (median of the last 10%, diverged at chance);
    runs without a recorded accuracy are left out."""
    out = {}
    for r in runs:
        if r.metrics and (claims.diverged(r) or np.isfinite(r.series("test_acc")).any()):
            out[r.name] = claims.final_accuracy(r)
        elif claims.diverged(r):
            out[r.name] = claims.chance(r)
    return out


def _h3_figure(h3: dict, h6: dict, cat: Catalog) -> tuple[bytes | None, str]:
    measured = _final_accuracies(cat.runs)
    arms = []
    for arm, key in (("elr", "elr_acc"), ("baseline", "baseline_acc"), ("sgd", None)):
        d = _dict(h3.get(key)) if key else {}
        if not d and arm == "sgd":
            d = {c.get("sgd_run"): c.get("sgd_acc") for c in _list(h6.get("cells")) if isinstance(c, dict)}
        if not d:
            d = {r.name: measured[r.name] for r in cat.runs if _arm(r) == arm and r.name in measured}
        vals = [(n, _finite(v)) for n, v in d.items() if _finite(v) is not None]
        if vals:
            arms.append((arm, vals))
    if not arms:
        return None, "no ELR, baseline or plain-SGD run has a test accuracy"
    hl, ci, margin = _finite(h3.get("hodges_lehmann")), _list(h3.get("ci")), _finite(h3.get("margin"))
    has_shift = hl is not None and len(ci) == 2
    fig = Figure(figsize=(8.2 if has_shift else 5.6, 3.8))
    gs = fig.add_gridspec(1, 2 if has_shift else 1, width_ratios=[3, 1.1] if has_shift else [1], wspace=0.45)
    ax = fig.add_subplot(gs[0, 0])
    names = {"elr": "ELR rule", "baseline": "baselines", "sgd": "plain SGD\n(H6 arm, not in H3)"}
    parts = []
    for pos, (arm, vals) in enumerate(arms):
        y = 100 * np.array([v for _, v in vals])
        jitter = np.linspace(-0.18, 0.18, len(y)) if len(y) > 1 else np.zeros(1)   # deterministic
        order = np.argsort(y)
        ax.scatter(pos + jitter, y[order], s=26, color=_arm_info(arm)[1], edgecolors="k", linewidths=0.4, zorder=3,
                   marker="o" if arm != "sgd" else "s")
        ax.hlines(np.median(y), pos - 0.3, pos + 0.3, color="k", linewidth=1.5, zorder=4)
        parts.append(f"{names[arm].splitlines()[0]}: n={len(y)}, median {np.median(y):.1f}%")
    ax.set_xticks(range(len(arms)), [names[a] for a, _ in arms])
    ax.set_xlim(-0.6, len(arms) - 0.4)
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title("final test accuracy per run (bar: median)")
    ax.grid(True, axis="y", alpha=0.3)
    caption = ("Final test accuracy (median over the last 10% of epochs; diverged runs at chance) per run and arm; "
               + "; ".join(parts))
    if has_shift:
        bx = fig.add_subplot(gs[0, 1])
        bx.errorbar([0], [100 * hl], yerr=[[100 * (hl - ci[0])], [100 * (ci[1] - hl)]], fmt="o", color="k",
                    capsize=5, markersize=6)
        bx.axhline(0, color="#888888", linewidth=1)
        if margin is not None:
            bx.axhline(100 * margin, color="#a00000", linestyle="--", linewidth=1, label=f"margin {100 * margin:.2g} pts")
            bx.legend(loc="upper center", bbox_to_anchor=(0.5, -0.06), frameon=False)
        bx.set_xticks([])
        bx.set_xlim(-1, 1)
        bx.set_ylabel("ELR − baseline (points)")
        cov = _finite(h3.get("coverage"))
        bx.set_title(f"HL shift, exact {cov:.0%} CI" if cov else "HL shift and CI")
        bx.grid(True, axis="y", alpha=0.3)
        caption += (f". Right: the Hodges–Lehmann shift ELR − baseline {100 * hl:.2g} points with its exact CI "
                    f"[{100 * ci[0]:.2g}, {100 * ci[1]:.2g}]" +
                    (f" against the margin {100 * margin:.2g} points (dashed)" if margin is not None else ""))
    return _png(fig), caption + "."


def _h3_blocks(blocks: list, h3: dict, h6: dict, cat: Catalog, fig) -> None:
    blocks.append(fig("h3_accuracy.png", lambda: _h3_figure(h3, h6, cat)))
    if not h3:
        return
    ea, ba = _dict(h3.get("elr_acc")), _dict(h3.get("baseline_acc"))
    power = _dict(h3.get("power"))
    def med(d):
        vals = [_finite(v) for v in d.values() if _finite(v) is not None]
        return _pct(np.median(vals)) if vals else "—"

    rows = [["runs per arm", f"ELR {len(ea)}, baseline {len(ba)}"],
            ["median final accuracy", f"ELR {med(ea)}, baseline {med(ba)}"],
            ["Hodges–Lehmann shift (ELR − baseline)", _points(h3.get("hodges_lehmann"))],
            ["its exact CI (coverage)", f"{_ci_text(h3.get('ci'), _points)} ({_num(h3.get('coverage'))})"],
            ["margin: one binomial sd of a test accuracy", f"{_points(h3.get('margin'))} (test split "
                                                            f"{h3.get('n_test') or '—'} images)"],
            ["pooled within-arm sd", _points(h3.get("pooled_sd"))],
            [f"power for a true {claims.H3_POWER_SHIFT * 100:g}-point advantage",
             f"held {_num(power.get('p_held'), 2)}, refuted {_num(power.get('p_refuted'), 2)}, inconclusive "
             f"{_num(power.get('p_inconclusive'), 2)}" if power else "—"],
            ["diverged runs (scored at chance)", ", ".join(_list(h3.get("diverged"))) or "none"]]
    blocks.append(("table", ("quantity", "value"), rows))


# ---------------------------------------------------------------- H4

def _h4_figure(h4: dict, h2: dict, cat: Catalog) -> tuple[bytes | None, str]:
    per_run = {n: x for n, x in _dict(h4.get("runs")).items() if isinstance(x, dict)}
    controls = {_get(c, "run"): (name, c) for name, c in _dict(h4.get("controls")).items() if isinstance(c, dict)}
    h2_controls = {_get(c, "run"): c for c in _dict(h2.get("controls")).values() if isinstance(c, dict)}
    h2_runs = _dict(h2.get("runs"))
    names = [r.name for r in cat.runs if (r.name in per_run or r.name in controls)
             and np.isfinite(r.series("test_acc")).any()]
    if not names:
        return None, "H4 lists no run with a test accuracy"
    fig, axes = _grid(len(names), panel=(2.3, 1.75), sharey=True)
    n_drops = n_eps = 0
    for ax, name in zip(axes, names):
        run = cat.by_name[name]
        x, y = _epochs(run), 100 * run.series("test_acc")
        info = per_run.get(name) or _dict(controls.get(name, (None, {}))[1])
        events = [ev for ev in _list(info.get("events")) if isinstance(ev, (list, tuple)) and len(ev) > 1]
        episodes = info.get("episodes")
        if episodes is None:
            episodes = _get(h2_controls.get(name), "episodes") or _get(h2_runs, name, "episodes")
        n_eps += _vlines(ax, episodes, color=EPISODE_COLOR, alpha=0.25, linewidth=0.7, zorder=0)
        te = _finite(info.get("transient_end"))
        if te is not None:
            ax.axvspan(float(np.nanmin(x)) if len(x) else 0.0, te, color="#dddddd", alpha=0.6, zorder=0, linewidth=0)
        ax.plot(x, y, color=cat.arm_color(name), linewidth=0.9)
        pts = _at(x, y, [ev[1] for ev in events])
        if pts:
            ax.plot(*zip(*pts), linestyle="none", marker="v", markersize=6, color=DROP_COLOR, zorder=4)
            n_drops += len(pts)
        first, second = cat.title(name)
        ax.set_title(f"{first}\n{second + ' · ' if second else ''}{len(events)} drop{'s' if len(events) != 1 else ''}",
                     color=cat.arm_color(name))
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes:
        ax.tick_params(labelleft=True, labelbottom=True)
        if ax.get_subplotspec().is_last_row() or ax is axes[-1]:
            ax.set_xlabel("epoch")
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("test acc (%)")
    handles = [Patch(color=_arm_info(a)[1], label=_arm_info(a)[0]) for a in ARMS
               if any(_arm(cat.by_name[n]) == a for n in names)]
    handles += [Line2D([], [], color=DROP_COLOR, marker="v", linestyle="none", label="drop event (bottom)"),
                Line2D([], [], color=EPISODE_COLOR, alpha=0.4, label="H2 episode"),
                Patch(color="#dddddd", label="initial transient (not counted)")]
    fig.subplots_adjust(hspace=0.75, wspace=0.2)
    _header(fig, "H4: test accuracy per run, drop-and-recovery events", handles, ncol=4)
    return _png(fig), (f"Test accuracy of every run (controls included and labelled; shared y), {n_drops} "
                       f"drop-and-recovery events marked ▼ at their bottom, H2 destabilisation episodes as faint red "
                       f"lines ({n_eps} in all), the initial transient shaded (events are counted after it).")


def _h4_blocks(blocks: list, h4: dict, h2: dict, cat: Catalog, fig) -> None:
    blocks.append(fig("h4_drops.png", lambda: _h4_figure(h4, h2, cat)))
    if not h4:
        return
    n_ev, n_co = h4.get("n_events"), h4.get("n_coincident")
    if n_ev is not None:
        blocks.append(("p", f"Coincidence with destabilisation episodes: {n_co} of {n_ev} drop events within "
                            f"{_get(h4, 'params', 'coincidence_window') or detectors.COINCIDENCE_WINDOW} epochs of "
                            f"one of the run's H2 episodes (fraction {_num(h4.get('coincide_fraction'))}, permutation "
                            f"p = {_num(h4.get('coincide_p'))})."))
    rows = []
    for name, x in sorted(_dict(h4.get("runs")).items(), key=lambda kv: cat.runs.index(cat.by_name[kv[0]])
                          if kv[0] in cat.by_name else len(cat.runs)):
        if not isinstance(x, dict):
            continue
        events = [ev for ev in _list(x.get("events")) if isinstance(ev, (list, tuple)) and len(ev) > 3]
        rows.append([cat.id(name), name, _num(x.get("transient_end")), str(len(events)),
                     ", ".join(f"{int(ev[1])} (−{100 * float(ev[3]):.1f} pts)" for ev in events[:12])
                     + (" …" if len(events) > 12 else "") or "—",
                     str(len(_list(x.get("episodes")))), _num(x.get("sensitivity"), 2)])
    for name, c in _dict(h4.get("controls")).items():
        if isinstance(c, dict):
            events = [ev for ev in _list(c.get("events")) if isinstance(ev, (list, tuple)) and len(ev) > 3]
            rows.append([cat.id(c.get("run", "")), f"{c.get('run')} ({name} control)", "—", str(len(events)),
                         ", ".join(f"{int(ev[1])} (−{100 * float(ev[3]):.1f} pts)" for ev in events[:12]) or "—",
                         "—", "—"])
    if rows:
        blocks.append(("table", ("id", "run", "transient ends (epoch)", "events", "bottom epochs (depth)",
                                 "H2 episodes", "drop sensitivity"), rows))
    params = _dict(h4.get("params"))
    if params:
        blocks.append(("note", "Detector parameters: " + ", ".join(f"{k} {_num(v)}" for k, v in params.items()) + "."))


# ---------------------------------------------------------------- H5

def _h5_figure(h5: dict, cat: Catalog) -> tuple[bytes | None, str]:
    pts = []
    for p in _list(h5.get("points")):
        if isinstance(p, dict):
            x, y = _finite(p.get("predicted_angle")), _finite(p.get("measured_angle"))
            if x is not None and y is not None and x > 0 and y > 0:
                pts.append((str(p.get("run")), x, y, p.get("group")))
    if not pts:
        return None, "H5 has no run with positive finite measured and predicted RMS angles"
    margin = _finite(h5.get("ratio_margin")) or claims.H5_RATIO_MARGIN
    fig = Figure(figsize=(5.6, 4.8))
    ax = fig.add_subplot()
    xs, ys = np.array([p[1] for p in pts]), np.array([p[2] for p in pts])
    lim = _log_limits(np.concatenate([xs, ys, xs * margin, xs / margin]))
    grid = np.geomspace(*lim, 50)
    ax.fill_between(grid, grid / margin, grid * margin, color="#dddddd", alpha=0.8, linewidth=0,
                    label=f"±{(margin - 1) * 100:.0f}% (H5's band)")
    ax.plot(lim, lim, color="k", linestyle="--", linewidth=1, label="measured = predicted")
    arms_seen = []
    order = np.argsort(xs)
    for k, i in enumerate(order):
        name, x, y, group = pts[i]
        arm = group if group in ARMS else _arm(cat.by_name[name]) if name in cat.by_name else "other"
        if arm not in arms_seen:
            arms_seen.append(arm)
        ax.scatter([x], [y], s=30, color=_arm_info(arm)[1], edgecolors="k", linewidths=0.4, zorder=3)
        # labels alternate above-left / below-right along x, so neighbours do not print over each other
        dx, dy, ha, va = ((-4, 4, "right", "bottom") if k % 2 == 0 else (4, -4, "left", "top"))
        ax.annotate(cat.id(name), (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=8, ha=ha, va=va)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ax.set_aspect("equal")
    _log_ticks(ax.xaxis, *lim)
    _log_ticks(ax.yaxis, *lim)
    ax.grid(True, which="major", alpha=0.3)
    ax.set_xlabel("predicted √(2ηλ/(1+μ)) (rad per step)")
    ax.set_ylabel("measured RMS angle (rad per step)")
    ratio, ci = _finite(h5.get("ratio")), _list(h5.get("ratio_ci"))
    ax.set_title("H5: RMS angle against prediction per run" +
                 (f"\ngeometric mean ratio {ratio:.3g}, 95% CI {_ci_text(ci)}" if ratio is not None else ""))
    handles = [Line2D([], [], marker="o", linestyle="none", color=_arm_info(a)[1], markeredgecolor="k",
                      label=_arm_info(a)[0]) for a in list(ARMS) + ["other"] if a in arms_seen]
    handles += [Patch(color="#dddddd", label=f"±{(margin - 1) * 100:.0f}% band"),
                Line2D([], [], color="k", linestyle="--", label="y = x")]
    ax.legend(handles=handles, loc="upper left", frameon=True, framealpha=0.9)
    return _png(fig), (f"RMS angular update per step over whole cycles against the prediction √(2ηλ/(1+μ)) "
                       f"(Wan et al. 2021), {len(pts)} stationary SGD runs with weight decay, log-log; dashed y = x, "
                       f"grey the ±{(margin - 1) * 100:.0f}% band of H5's criterion; points labelled by run id "
                       f"(table below).")


def _h5_blocks(blocks: list, h5: dict, cat: Catalog, fig) -> None:
    blocks.append(fig("h5_angle.png", lambda: _h5_figure(h5, cat)))
    points = [p for p in _list(h5.get("points")) if isinstance(p, dict)]
    if points:
        blocks.append(("table", ("id", "run", "group", "η·λ (final)", "μ", "measured RMS angle", "predicted",
                                 "ratio", "whole cycles"),
                       [[cat.id(str(p.get("run"))), p.get("run"), p.get("group") or "—", _num(p.get("eta_lambda")),
                         _num(p.get("momentum")), _num(p.get("measured_angle")), _num(p.get("predicted_angle")),
                         _num(p.get("ratio")), _yes(p.get("whole_cycles"))] for p in points]))
    if h5.get("ratio") is not None:
        m = _finite(h5.get("ratio_margin")) or claims.H5_RATIO_MARGIN
        blocks.append(("p", f"Geometric mean of measured / predicted: {_num(h5.get('ratio'))}, 95% t CI "
                            f"{_ci_text(h5.get('ratio_ci'))}; H5's band [{1 / m:.3g}, {m:g}]."))
    skipped = _list(h5.get("not_stationary"))
    if skipped:
        blocks.append(("note", "Not in H5 (not measured stationary, diverged, or without the RMS angle): "
                               + ", ".join(f"{cat.id(n)} {n}" for n in skipped) + "."))


# ---------------------------------------------------------------- H6

def _h6_cells(h6: dict) -> list[dict]:
    out = []
    for c in _list(h6.get("cells")):
        if isinstance(c, dict) and _finite(c.get("lr0")) and _finite(c.get("weight_decay")) is not None:
            out.append(c)
    return out


def _h6_figure(h6: dict, cat: Catalog) -> tuple[bytes | None, str]:
    cells = _h6_cells(h6)
    if not cells:
        return None, "no ELR / plain-SGD cell pairs in this study (no third arm)"
    wds = sorted({float(c["weight_decay"]) for c in cells})
    fig = Figure(figsize=(3.6 * len(wds) + 0.4, 3.4))
    axes = fig.subplots(1, len(wds), squeeze=False, sharey=True)[0]
    per_wd = _dict(h6.get("per_weight_decay"))
    for ax, wd in zip(axes, wds):
        cs = sorted((c for c in cells if float(c["weight_decay"]) == wd), key=lambda c: float(c["lr0"]))
        lr = [float(c["lr0"]) for c in cs]
        for key, arm, marker in (("elr_acc", "elr", "o"), ("sgd_acc", "sgd", "s")):
            y = [100 * v if (v := _finite(c.get(key))) is not None else np.nan for c in cs]
            ax.plot(lr, y, marker=marker, color=_arm_info(arm)[1], linewidth=1.2, markersize=5,
                    markeredgecolor="k", markeredgewidth=0.4)
        ax.set_xscale("log")
        ax.set_xticks(lr, [_short(v) for v in lr])          # the grid's own lr0 values, not powers of ten
        ax.xaxis.set_minor_formatter(NullFormatter())
        spread = _dict(per_wd.get(f"{wd:g}"))
        title = f"λ {_short(wd)}"
        if spread:
            title += (f"\nsd over lr0: ELR {100 * (_finite(spread.get('sd_elr')) or math.nan):.2g}, "
                      f"SGD {100 * (_finite(spread.get('sd_sgd')) or math.nan):.2g} pts")
        ax.set_title(title)
        ax.set_xlabel("lr0 (the SGD twin starts at lr0 / ‖w0‖)")
        ax.grid(True, which="major", alpha=0.3)
        ax.tick_params(labelleft=True)
    axes[0].set_ylabel("final test accuracy (%)")
    handles = [Line2D([], [], marker="o", color=ARMS["elr"][1], markeredgecolor="k", label="ELR rule"),
               Line2D([], [], marker="s", color=ARMS["sgd"][1], markeredgecolor="k",
                      label="plain SGD twin (constant lr)")]
    fig.subplots_adjust(wspace=0.25)
    _header(fig, "H6: final accuracy against lr0, ELR rule vs plain SGD", handles, ncol=2)
    return _png(fig), (f"Final test accuracy against lr0, one panel per λ (log x): the ELR rule against its plain-SGD "
                       f"twin started at the same step size, {len(cells)} cells paired; titles: the spread (sd over "
                       f"lr0) per arm in accuracy points.")


def _h6_blocks(blocks: list, h6: dict, verdict: str, cat: Catalog, fig) -> None:
    blocks.append(fig("h6_lr_sensitivity.png", lambda: _h6_figure(h6, cat)))
    per_wd = _dict(h6.get("per_weight_decay"))
    if per_wd:
        rows = []
        for wd, s in per_wd.items():
            a, b = _finite(_get(s, "sd_elr")), _finite(_get(s, "sd_sgd"))
            rows.append([wd, _points(a), _points(b), _points(b - a) if a is not None and b is not None else "—"])
        blocks.append(("table", ("λ", "sd over lr0, ELR arm", "sd over lr0, plain SGD", "difference (SGD − ELR)"),
                       rows))
        blocks.append(("p", f"Mean spread difference (SGD − ELR) {_points(h6.get('spread_difference'))}, 95% interval from "
                            f"test-split noise {_ci_text(h6.get('ci'), _points)}; exact exchange p = {_num(h6.get('p'))} "
                            f"({h6.get('null_size', '—')} swaps)."))
    cells = _h6_cells(h6)
    if cells:
        blocks.append(("table", ("λ", "lr0", "ELR run", "SGD twin", "twin's lr", "ELR final acc", "SGD final acc"),
                       [[_num(c["weight_decay"]), _num(c["lr0"]), f"{cat.id(c.get('elr_run', ''))} {c.get('elr_run')}",
                         f"{cat.id(c.get('sgd_run', ''))} {c.get('sgd_run')}", _num(c.get("matched_lr")),
                         _pct(c.get("elr_acc")), _pct(c.get("sgd_acc"))]
                        for c in sorted(cells, key=lambda c: (float(c["weight_decay"]), float(c["lr0"])))]))
    blocks.append(("p", H6_MEANING.get(verdict, H6_MEANING["inconclusive"])))


# ---------------------------------------------------------------- training curves

def _curve_sections(cat: Catalog, metric: str) -> list[tuple[str, list[Run]]]:
    sections = []
    for arm in list(ARMS) + ["other"]:
        members = [r for r in cat.runs if _arm(r) == arm and r.metrics and np.isfinite(_with_initial(r, metric)[1]).any()]
        if arm in ("elr", "sgd"):
            members.sort(key=lambda r: (_cfg_num(r, "weight_decay") or 0.0, cat.lr0(r) or 0.0, r.name))
        if members:
            sections.append((arm, members))
    return sections


def _section_cells(arm: str, members: list[Run], cat: Catalog, ncols: int) -> tuple[list[tuple[int, int]], int]:
    """(row, column) of each run inside its arm's block, and the block's rows: the ELR arm and its plain-SGD
    twins as the design's grid (rows λ, columns lr0), the others in reading order."""
    if arm in ("elr", "sgd"):
        layout = _cell_layout([{"lr0": cat.lr0(r), "wd": _cfg_num(r, "weight_decay")} for r in members])
        if layout is not None and layout[2] <= ncols:
            return layout[0], layout[1]
    return [(i // ncols, i % ncols) for i in range(len(members))], math.ceil(len(members) / ncols)


def _curves_figure(metric: str, cat: Catalog) -> tuple[bytes | None, str]:
    """Small multiples: one panel per run, the ELR arm and its plain-SGD twins as lr0 x λ grids, then the
    baselines and the controls in rows; linear epoch axis; shared y; the H2 detector's episodes, H4's drops
    (test accuracy) and the theory's fixed point (ELR, norm) marked where the analysis has them."""
    scale = 100.0 if metric == "test_acc" else 1.0
    sections = _curve_sections(cat, metric)
    if not sections:
        return None, f"no run has a finite `{metric}` value"
    grid_cols = [len({cat.lr0(r) for r in m}) for a, m in sections if a in ("elr", "sgd")]
    ncols = max(min(max(grid_cols, default=4), GRID_COLUMNS + 2), 4)
    placed, row0 = [], 0
    for arm, members in sections:
        cells, nrows = _section_cells(arm, members, cat, ncols)
        placed += [(r, row0 + i, j) for r, (i, j) in zip(members, cells)]
        row0 += nrows
    fig = Figure(figsize=(2.45 * ncols + 0.4, 1.95 * row0 + 0.6))
    axes = fig.subplots(row0, ncols, squeeze=False)
    used = {(i, j) for _, i, j in placed}
    for i in range(row0):
        for j in range(ncols):
            if (i, j) not in used:
                axes[i, j].set_axis_off()
    key = {"elr": "elr", "si_norm": "rho"}.get(metric)     # the analysis's predicted level for this metric
    # y shared within a block of comparable runs: the ELR grid with its plain-SGD twins, the baselines, the controls
    # (a baseline whose plateau schedule cut its lr a billionfold must not flatten the ELR grid)
    block = lambda run: "grid" if _arm(run) in ("elr", "sgd") else _arm(run)  # noqa: E731
    values: dict[str, list] = {}
    n_eps = n_drops = n_theory = 0
    for run, i, j in placed:
        ax = axes[i, j]
        x, y = _with_initial(run, metric)
        y = y * scale
        values.setdefault(block(run), []).append(y)
        a = cat.analysis(run.name)
        n_eps += _vlines(ax, a.get("episodes"), color=EPISODE_COLOR, alpha=0.35, linewidth=0.7, zorder=0)
        ax.plot(x, y, color=cat.arm_color(run.name), linewidth=0.9)
        if metric == "test_acc":
            pts = _at(x, y, [ev[1] for ev in _list(_get(a, "drops", "events")) if len(_list(ev)) > 1])
            if pts:
                ax.plot(*zip(*pts), linestyle="none", marker="v", markersize=4.5, color=DROP_COLOR, zorder=4)
                n_drops += len(pts)
        level = _finite(_get(a, "predicted", key)) if key else None
        if level is not None and level > 0 and _arm(run) in ("elr", "sgd", "control"):
            ax.axhline(level, color="k", linestyle=":", linewidth=1.1, zorder=3)
            values[block(run)].append(np.array([level]))
            n_theory += 1
        first, second = cat.title(run.name)
        ax.set_title(first + (f"\n{second}" if second else ""), color=cat.arm_color(run.name), fontsize=8.5)
        ax.set_xlim(0, max(float(np.nanmax(x)) if len(x) else 1.0, 1.0))
        ax.grid(True, which="major", alpha=0.3)
        ax.tick_params(labelleft=True)
        if j == 0:
            ax.set_ylabel(METRIC_LABELS.get(metric, metric) if metric != "elr" else "ELR")
    logs = []
    for name, vs in values.items():
        members = [axes[i, j] for run, i, j in placed if block(run) == name]
        v = np.concatenate([np.ravel(a) for a in vs])
        v = v[np.isfinite(v)]
        if not v.size:
            continue
        log = metric in LOG_Y_METRICS and bool((v > 0).all())
        logs.append(log)
        lo, hi = _log_limits(v, 1.0) if log else (float(v.min()), float(v.max()))
        pad = 0.0 if log else 0.05 * (hi - lo or 1.0)
        for ax in members:
            if log:
                ax.set_yscale("log")
                _log_ticks(ax.yaxis, lo, hi)
            ax.set_ylim(lo - pad, hi + pad)
    for _, i, j in placed:
        if i == row0 - 1 or (i + 1, j) not in used:
            axes[i, j].set_xlabel("epoch")
    handles = [Patch(color=_arm_info(a)[1], label=_arm_info(a)[0]) for a, _ in sections]
    handles.append(Line2D([], [], color=EPISODE_COLOR, alpha=0.5, label="H2 episode"))
    if metric == "test_acc":
        handles.append(Line2D([], [], color=DROP_COLOR, marker="v", linestyle="none", label="H4 drop (bottom)"))
    if n_theory:
        handles.append(Line2D([], [], color="k", linestyle=":", label="theory's fixed point"))
    fig.subplots_adjust(hspace=0.75, wspace=0.32)
    _header(fig, f"{METRIC_LABELS.get(metric, metric)} per run", handles, ncol=min(len(handles), 4), title_lines=1)
    arms = ", ".join(f"{_arm_info(a)[0]} ({len(m)})" for a, m in sections)
    theory_note = (f"; dotted: the theory's fixed point for the run's RMS G over its last window, in {n_theory} panels "
                   "(constant-lr and ELR-rule SGD runs)" if key else "")
    return _png(fig), (f"{METRIC_LABELS.get(metric, metric)} per epoch, one panel per run: {arms}; the ELR rule and its "
                       f"plain-SGD twins laid out as the design's grid (rows λ, columns lr0); linear epoch axis (each "
                       f"panel to its run's length), {'log' if all(logs) else 'linear'} y shared within the ELR grid "
                       f"with its twins, the baselines, and the controls; epoch 0 = "
                       f"initialisation; red lines: the H2 detector's episodes ({n_eps})"
                       + (f"; ▼: H4's drop-and-recovery events ({n_drops})" if metric == "test_acc" else "")
                       + theory_note + ".")


# ---------------------------------------------------------------- tables

def _final_acc(run: Run) -> float | None:
    """A run's final test accuracy as the claims measure it; None for a run without any accuracy."""
    return _final_accuracies([run]).get(run.name)


def _best_acc(run: Run) -> float | None:
    s = run.summary or {}
    if _finite(s.get("best_test_acc")) is not None:
        return float(s["best_test_acc"])
    y = run.series("test_acc") if run.metrics else np.array([])
    return float(np.nanmax(y)) if np.isfinite(y).any() else None


def _diverged(run: Run) -> str:
    s = run.summary
    if s is None:
        return "—"
    if s.get("diverged"):
        return f"yes (epoch {s['diverged_epoch']})" if s.get("diverged_epoch") is not None else "yes"
    return "no"


def _group(run: Run) -> str:
    labels = _labels(run)
    if run.group == "control" and labels.get("control"):
        return f"control ({labels['control']})"
    if run.group == "sgd" and labels.get("twin"):
        return f"sgd (twin of {labels['twin']})"
    return run.group or "—"


def _run_rows(cat: Catalog) -> list[list[str]]:
    rows = []
    for r in cat.runs:
        c = r.config
        # what the analyses saw (the logged epochs), not what the summary claims; ⚠: see "Damaged or incomplete runs"
        done = f"{len(r.metrics)}" + (f"/{c['epochs']}" if c.get("epochs") is not None else "")
        rows.append([cat.id(r.name), r.name, _group(r), c.get("optimizer", "—"), c.get("schedule", "—"),
                     _num(c.get("lr")), _num(c.get("weight_decay")), _num(c.get("momentum")), _pct(_final_acc(r)),
                     _pct(_best_acc(r)), _diverged(r), done + (" ⚠" if _problems(r) else ""),
                     _num(cat.analysis(r.name).get("tau_epochs")), _num(cat.analysis(r.name).get("n_tau"))])
    return rows


def _problems(run: Run) -> list[str]:
    return list(getattr(run, "problems", None) or [])


def problem_lines(runs: list[Run]) -> list[str]:
    """One line per damaged or incomplete run: its name and what is wrong (runs.Run.problems)."""
    return [f"{r.name}: {'; '.join(_problems(r))}" for r in runs if _problems(r)]


def _problem_blocks(cat: Catalog) -> list:
    lines = problem_lines(cat.runs)
    if not lines:
        return []
    return [("h", 2, "Damaged or incomplete runs"),
            ("p", f"{len(lines)} of {len(cat.runs)} runs are damaged or incomplete; the claims analysed what they "
                  "logged (marked ⚠ in the runs table). Finish or repair them and rebuild the report."),
            ("table", ("id", "run", "problem"), [[cat.id(r.name), r.name, "; ".join(_problems(r))]
                                                 for r in cat.runs if _problems(r)])]


def _meta_value(key: str, value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_meta_value(k, v)}" for k, v in value.items()) or "—"
    if isinstance(value, (list, tuple)):
        return ", ".join(_meta_value(key, v) for v in value) or "—"
    if "wall" in key and _finite(value) is not None:
        return f"{float(value):.1f} s ({datetime.timedelta(seconds=round(float(value)))})"
    if isinstance(value, float):
        return _num(value, 4)
    return "—" if value is None else str(value)


def _meta_rows(meta: dict) -> list[list[str]]:
    keys = [k for k in META_ORDER if k in meta] + sorted(k for k in meta if k not in META_ORDER)
    return [[k, _meta_value(k, meta[k])] for k in keys]


# ---------------------------------------------------------------- rendering

def _render_md(blocks) -> str:
    out = []
    for b in blocks:
        kind = b[0]
        if kind == "h":
            out.append("#" * b[1] + " " + b[2])
        elif kind == "p":
            out.append(b[1])
        elif kind == "kv":
            out.append(f"**{_md_escape(b[1])}:** {b[2]}")
        elif kind == "note":
            out.append(_md_em(b[1]))
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in b[1]))
        elif kind == "table":
            out.append(_md_table(b[1], b[2]))
        elif kind == "fig":
            out.append(f"![{b[1]}]({b[1]})\n\n{_md_em(b[2])}")
    return "\n\n".join(out) + "\n"


def _render_html(blocks, title: str) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
           f"<style>{CSS}</style></head><body>"]
    for b in blocks:
        kind = b[0]
        if kind == "h":
            out.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
        elif kind == "p":
            out.append(f"<p>{e(b[1])}</p>")
        elif kind == "kv":
            cls = f' class="{b[3]}"' if len(b) > 3 and b[3] else ""
            out.append(f"<p><strong{cls}>{e(b[1])}:</strong> {e(b[2])}</p>")
        elif kind == "note":
            out.append(f'<p class="note">{e(b[1])}</p>')
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{e(item)}</li>" for item in b[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in b[1])
            body = "".join("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in b[2])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "fig":
            data = base64.b64encode(b[3]).decode("ascii")
            out.append(f'<figure><img alt="{e(b[1], quote=True)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{e(b[2])}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _html_cell(c) -> str:
    c = str(c)
    cls = f' class="{c}"' if c in ("held", "refuted", "inconclusive") else ""
    return f"<td{cls}>{html.escape(c)}</td>"


# ---------------------------------------------------------------- the report

def _plain(claim: str) -> str:
    """A claim as a clause: "in several runs test accuracy drops sharply and then recovers"."""
    claim = claim.strip().rstrip(".")
    return claim[:1].lower() + claim[1:] if claim[:3] not in ("ELR", "SGD") else claim


def _first_sentence(reason: str) -> str:
    return (reason or "no reason given").split(". ")[0].strip().rstrip(".")


def _summary_blocks(verdicts: list[Verdict], scale: str) -> list:
    """The answer in plain words, before any table: what held, what was refuted, what this study could not
    decide and why, and what that means for the seed's question (H6)."""
    by = {k: [v for v in verdicts if v.verdict == k] for k in ("held", "refuted", "inconclusive")}
    items = []
    if by["held"]:
        items.append("Held: " + "; ".join(f"{v.id}, {_plain(v.claim)}" for v in by["held"]) + ".")
    items.append("Refuted: " + ("; ".join(f"{v.id}, {_plain(v.claim)} ({_first_sentence(v.reason)})"
                                          for v in by["refuted"]) if by["refuted"] else "none") + ".")
    for v in by["inconclusive"]:
        items.append(f"Not decided: {v.id}, {_plain(v.claim)}. Why: {_first_sentence(v.reason)}.")
    blocks = [("h", 2, "In short"), ("list", items)]
    h6 = next((v for v in verdicts if v.id.upper() == "H6"), None)
    if h6 is not None and h6.verdict in H6_MEANING:
        blocks.append(("p", H6_MEANING[h6.verdict]))
    if scale in PIPELINE_ONLY_SCALES:
        blocks.append(("p", f"At the {scale} scale none of this is evidence: the verdicts only show that the pipeline "
                            "runs end to end."))
    elif by["inconclusive"]:
        blocks.append(("p", "An undecided claim is neither support nor refutation: its section says what the study "
                            "would need (more runs, longer runs, or runs that reach their equilibrium) to decide it."))
    return blocks


def _claim_blocks(v: Verdict) -> list:
    return [("h", 2, f"{v.id}: {v.verdict}"),
            ("kv", "Claim", v.claim or "—"),
            ("kv", "The seed's finding", v.seed_finding or "—"),
            ("kv", "Verdict", f"{v.verdict} — {v.reason or 'no reason given'}", v.verdict),
            ("kv", "How it is decided", DECISIONS.get(v.id.upper(), "see elr/analysis/claims.py"))]


def write_report(out_dir, verdicts: list[Verdict], runs: list[Run], meta: dict) -> Path:
    """Write report.md, report.html, the figures and verdicts.json into out_dir; return report.md's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    by_id = {v.id.upper(): v for v in verdicts}

    def details(claim_id: str) -> dict:
        v = by_id.get(claim_id)
        return v.details if v is not None and isinstance(v.details, dict) else {}

    scales = [_labels(r).get("scale") for r in runs]
    scale = meta.get("scale") or next((s for s in scales if s), "unknown scale")
    date = meta.get("date") or datetime.date.today().isoformat()
    title = f"ELR study report — {scale}, {date}"
    cat = Catalog(runs)

    blocks = [("h", 1, title)]
    if scale in PIPELINE_ONLY_SCALES:
        blocks.append(("kv", "Read this first", f"the {scale} scale only exercises the pipeline (a few epochs, small or "
                                                 "synthetic data): its verdicts say nothing about the science."))
    if verdicts:
        blocks += _summary_blocks(verdicts, scale)
    blocks += [("h", 2, "Verdicts"), ("table", VERDICT_COLUMNS, _verdict_rows(verdicts))]
    if not verdicts:
        blocks.append(("note", "No claim was evaluated."))
    blocks += _problem_blocks(cat)
    blocks.append(("kv", "Multiplicity", claims.MULTIPLICITY))
    if cat.runs:
        blocks.append(("p", "Runs are named by short ids in figures and tables (E = ELR rule, S = plain SGD twin, "
                            "B = baseline, C = detector control); the table under Runs maps them to run "
                            "directories. Colours: " + ", ".join(f"{ARMS[a][0]} {COLOUR_NAMES[a]}" for a in ARMS) + "."))

    figures: dict[str, bytes] = {}

    def fig(name: str, make) -> tuple:
        """Draw one figure (make() -> (png | None, caption or why not)); its block, or a note saying why not."""
        try:
            with matplotlib.rc_context(RC):
                png, caption = make()
        except Exception as exc:     # a figure must never stop the report: say what went wrong instead
            png, caption = None, f"it could not be drawn ({type(exc).__name__}: {exc})"
        if png is None:
            return ("note", f"Figure {name} omitted: {caption.rstrip('.')}.")
        figures[name] = png
        return ("fig", name, caption, png)

    sections = {"H1": lambda part, d: _h1_blocks(part, d, cat, fig),
                "H2": lambda part, d: _h2_blocks(part, d, cat, fig),
                "H3": lambda part, d: _h3_blocks(part, d, details("H6"), cat, fig),
                "H4": lambda part, d: _h4_blocks(part, d, details("H2"), cat, fig),
                "H5": lambda part, d: _h5_blocks(part, d, cat, fig),
                "H6": lambda part, d: _h6_blocks(part, d, by_id["H6"].verdict, cat, fig)}
    for v in verdicts:
        blocks.extend(_claim_blocks(v))
        cid, part = v.id.upper(), []
        if cid in sections:
            try:
                sections[cid](part, details(cid))
            except Exception as exc:     # malformed details: a note, the rest of the report goes on
                part.append(("note", f"The rest of this section could not be built ({type(exc).__name__}: {exc})."))
        blocks.extend(part)

    blocks.append(("h", 2, "Training curves"))
    for metric in CURVE_METRICS:
        blocks.append(fig(f"curves_{metric}.png", lambda metric=metric: _curves_figure(metric, cat)))
    blocks.append(("h", 2, "Runs"))
    blocks.append(("table", RUN_COLUMNS, _run_rows(cat)) if runs else ("note", "No runs."))
    if runs:
        blocks.append(("note", "τ: the relaxation time of the norm to its fixed point, (1−μ)/((4+p)ηλ) steps with η at "
                               "the theory's fixed point for the run's RMS G (p = 0 at a constant lr, 1 for the seed's rule), "
                               "in epochs; t/τ: epochs run / τ, how many relaxation times the run covered (a run needs "
                               "several to reach its equilibrium). — where the theory does not apply (adaptive "
                               "optimizers, no weight decay)."))
    blocks.append(("h", 2, "Setup"))
    blocks.append(("table", ("key", "value"), _meta_rows(meta)) if meta else ("note", "No setup recorded."))

    for name, png in figures.items():
        atomic_write(out / name, lambda f, png=png: f.write(png))
    for name in FIGURES + LEGACY_FIGURES:
        if name not in figures:  # a figure this build could not make must not survive from the last one
            (out / name).unlink(missing_ok=True)
    write_json(out / VERDICTS_JSON, [verdict_json(v) for v in verdicts])
    roots = {str(r.path.resolve().parent) for r in runs if r.path is not None}
    if len(roots) == 1:
        source = (roots.pop() + "\n").encode()
        atomic_write(out / SOURCE, lambda f: f.write(source))
    md, page = _render_md(blocks).encode(), _render_html(blocks, title).encode()
    atomic_write(out / REPORT_HTML, lambda f: f.write(page))
    atomic_write(out / REPORT_MD, lambda f: f.write(md))
    return out / REPORT_MD
