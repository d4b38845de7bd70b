"""The report: verdicts + runs -> report.md, a self-contained report.html, PNG figures, verdicts.json.

    write_report("reports/smoke-2026-11-01", verdicts, runs, meta)   # -> Path to report.md
    print(verdict_table_md(verdicts))                                 # the table alone (terminal, README)

The report is built once as a list of blocks (headings, paragraphs, tables, figures) and rendered
twice, to Markdown (figures linked as PNG files) and to HTML (figures embedded as data: URIs, so the
file can be mailed or archived alone). Figures use matplotlib's object API on the Agg canvas: no
pyplot, no global backend switch, nothing that touches a caller's own plotting. Every file is written
atomically; a rebuild into the same directory replaces them all and removes figures it no longer makes.
Missing evidence (a verdict with empty details, a run without metrics, an all-NaN series) shrinks a
figure or replaces it by a note; it never stops the report.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import math
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter

from elr.runs import Run, atomic_write, write_json
from elr.verdict import Verdict

REPORT_MD, REPORT_HTML, VERDICTS_JSON = "report.md", "report.html", "verdicts.json"
CURVE_METRICS = ("elr", "si_norm", "train_loss", "test_acc")
LOG_Y_METRICS = ("elr", "si_norm", "train_loss")
FIGURES = tuple(f"curves_{m}.png" for m in CURVE_METRICS) + ("accuracy.png", "h5_angle.png", "h5_elr_star.png")
LOG_X_AFTER_EPOCHS = 200   # longer runs get a log epoch axis: early transients and late periods both show
DPI = 100                  # a full report stays a few hundred kB
LEGEND_MAX_RUNS = 24       # beyond this a per-run legend is unreadable; the arm styles still are
VERDICT_COLUMNS = ("id", "claim", "verdict", "seed's finding", "statistic", "p", "p Holm", "p BH", "effect [CI]")
RUN_COLUMNS = ("run", "group", "optimizer", "schedule", "lr", "weight_decay", "momentum",
               "final test acc", "best test acc", "diverged", "epochs done")
META_ORDER = ("scale", "date", "data", "subset", "model", "width", "epochs", "batch_size", "seeds",
              "runs", "versions", "software", "device", "wall_time")
METRIC_LABELS = {"elr": "ELR = lr / ‖w_SI‖²", "si_norm": "‖w_SI‖", "train_loss": "train loss",
                 "test_acc": "test accuracy (%)"}
CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
       "table{border-collapse:collapse;margin:1em 0;font-size:0.85em}"
       "th,td{border:1px solid #bbb;padding:3px 6px;text-align:left;vertical-align:top}"
       "th{background:#eee}img{max-width:100%}.note{color:#666;font-style:italic}"
       ".held{color:#060;font-weight:bold}.refuted{color:#a00;font-weight:bold}"
       ".inconclusive{color:#a60;font-weight:bold}")


# ---------------------------------------------------------------- formatting

def _num(x, digits: int = 3) -> str:
    if x is None or isinstance(x, bool):
        return "—" if x is None else str(x)
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "—" if math.isnan(x) else f"{x:.{digits}g}"


def _pct(x) -> str:
    """Accuracies are stored as fractions; people read percent."""
    x = _finite(x)
    return "—" if x is None else f"{100 * x:.1f}%"


def _finite(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _effect_ci(v: Verdict) -> str:
    if v.ci is None or len(v.ci) != 2:
        return _num(v.effect)
    return f"{_num(v.effect)} [{_num(v.ci[0])}, {_num(v.ci[1])}]"


def _get(d, *keys):
    """d[k1][k2]... or None as soon as a level is missing or not a dict (details are free-form)."""
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _md_em(text: str) -> str:
    """Italic Markdown; asterisks (ELR*) and underscores (train_loss) inside are escaped, not markup."""
    return "*" + text.replace("\\", "\\\\").replace("*", "\\*").replace("_", "\\_") + "*"


def _list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else []


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
        rows.append([v.id, v.claim, v.verdict, v.seed_finding or "—", _num(v.statistic), _num(v.p),
                     _num(pc.get("holm")), _num(pc.get("bh")), _effect_ci(v)])
    return rows


def verdict_table_md(verdicts: list[Verdict]) -> str:
    """The verdict table alone, as Markdown (the terminal summary and the README reuse it)."""
    return _md_table(VERDICT_COLUMNS, _verdict_rows(verdicts))


def verdict_json(v: Verdict) -> dict:
    """One verdicts.json object: the issue's keys first, in its order, then reason and details."""
    return {"id": v.id, "claim": v.claim, "verdict": v.verdict, "statistic": v.statistic, "p": v.p,
            "p_corrected": dict(v.p_corrected or {}), "effect": v.effect,
            "ci": list(v.ci) if v.ci is not None else None, "runs": list(v.runs),
            "seed_finding": v.seed_finding, "reason": v.reason, "details": v.details or {}}


# ---------------------------------------------------------------- figures

def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    # "tight" draws each figure twice, but long run names in an outside legend are not cut off
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None}, bbox_inches="tight")
    return buf.getvalue()


def _epochs(run: Run) -> np.ndarray:
    e = run.series("epoch")
    return e if len(e) and np.isfinite(e).all() else np.arange(1, len(run.metrics) + 1, dtype=np.float64)


def _style(run: Run) -> str:
    return {"elr": "-", "baseline": "--"}.get(run.group, ":")


def _run_colors(runs: list[Run]) -> dict[str, tuple]:
    """ELR arm in cool colours, baselines in warm ones, others grey: the arm reads at a glance and
    every run keeps its colour across figures."""
    arms = {"elr": [r for r in runs if r.group == "elr"], "baseline": [r for r in runs if r.group == "baseline"]}
    maps = {"elr": (colormaps["winter"], 0.0, 0.9), "baseline": (colormaps["autumn"], 0.0, 0.75)}
    colors = {r.name: (0.45, 0.45, 0.45, 1.0) for r in runs}
    for arm, members in arms.items():
        cmap, lo, hi = maps[arm]
        for i, r in enumerate(members):
            colors[r.name] = cmap(lo + (hi - lo) * (i / max(len(members) - 1, 1)))
    return colors


def _curve_figure(metric: str, runs: list[Run], colors: dict, h2: dict, h4: dict) -> tuple[bytes | None, str]:
    """One metric over epochs, every run; H2 peaks (metric-specific) and H4 drops (test_acc) marked."""
    fig = Figure(figsize=(8.0, 3.6))
    fig.subplots_adjust(left=0.09, right=0.74, bottom=0.14, top=0.9)  # the legend lives in the right margin
    ax = fig.add_subplot()
    scale = 100.0 if metric == "test_acc" else 1.0
    plotted, values, max_epoch, n_peaks, n_drops = [], [], 0.0, 0, 0
    for run in runs:
        y = run.series(metric) * scale if run.metrics else np.array([])
        if not np.isfinite(y).any():
            continue
        x = _epochs(run)
        ax.plot(x, y, color=colors[run.name], linestyle=_style(run), linewidth=1.0)
        plotted.append(run)
        values.append(y[np.isfinite(y)])
        max_epoch = max(max_epoch, float(np.nanmax(x)))
        index = {int(round(e)): i for i, e in enumerate(x)}

        def at(epochs):
            pts = [(e, y[index[int(round(e))]]) for e in epochs
                   if _finite(e) is not None and int(round(e)) in index]
            return [(e, v) for e, v in pts if np.isfinite(v)]

        series = _get(h2, "runs", run.name, "series", metric)
        series = series if isinstance(series, dict) else {}
        peaks = at(_list(series.get("peaks")))
        if peaks:
            face = colors[run.name] if series.get("periodic") else "none"
            ax.plot(*zip(*peaks), linestyle="none", marker="^", markersize=5,
                    markeredgecolor=colors[run.name], markerfacecolor=face)
            n_peaks += len(peaks)
        if metric == "test_acc":
            events = _list(_get(h4, "runs", run.name, "events"))
            drops = at([ev[1] for ev in events if isinstance(ev, (list, tuple)) and len(ev) > 1])
            if drops:
                ax.plot(*zip(*drops), linestyle="none", marker="v", markersize=7,
                        markeredgecolor="k", markerfacecolor=colors[run.name])
                n_drops += len(drops)
    if not plotted:
        return None, f"no run has a finite `{metric}` value"
    notes = []
    if max_epoch > LOG_X_AFTER_EPOCHS:
        ax.set_xscale("log")
        notes.append("log epoch axis")
    if metric in LOG_Y_METRICS:
        if (np.concatenate(values) > 0).all():
            ax.set_yscale("log")
            notes.append("log y")
        else:
            notes.append("linear y: non-positive values present")
    ax.set_xlabel("epoch")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.set_title(f"{metric} over epochs ({len(plotted)} runs)", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    handles = [Line2D([], [], color="k", linestyle="-", label="ELR arm"),
               Line2D([], [], color="k", linestyle="--", label="baseline")]
    if n_peaks:
        handles.append(Line2D([], [], color="k", linestyle="none", marker="^", label="H2 peak (filled: periodic)"))
    if n_drops:
        handles.append(Line2D([], [], color="k", linestyle="none", marker="v", label="H4 drop (bottom)"))
    if len(plotted) <= LEGEND_MAX_RUNS:
        handles += [Line2D([], [], color=colors[r.name], linestyle=_style(r), label=r.name) for r in plotted]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    caption = f"{metric} per run; ELR arm solid, baselines dashed; {', '.join(notes) or 'linear axes'}"
    if n_peaks:
        caption += f"; {n_peaks} H2 peaks marked ▲"
    if n_drops:
        caption += f"; {n_drops} H4 drop events marked ▼ at their bottom"
    return _png(fig), caption + "."


def _final_acc(run: Run) -> float | None:
    """A run's final test accuracy: its summary, chance for a diverged run without one (decisions),
    else the last finite logged value."""
    s = run.summary or {}
    if _finite(s.get("final_test_acc")) is not None:
        return float(s["final_test_acc"])
    if s.get("diverged"):
        return 0.1  # decisions: a diverged run counts as chance, 1/num_classes with 10 classes
    y = run.series("test_acc") if run.metrics else np.array([])
    y = y[np.isfinite(y)]
    return float(y[-1]) if len(y) else None


def _best_acc(run: Run) -> float | None:
    s = run.summary or {}
    if _finite(s.get("best_test_acc")) is not None:
        return float(s["best_test_acc"])
    y = run.series("test_acc") if run.metrics else np.array([])
    return float(np.nanmax(y)) if np.isfinite(y).any() else None


def _arm_accuracies(h3: dict, runs: list[Run]) -> tuple[dict, str]:
    """{"final"|"best": {"elr": [...], "baseline": [...]}} from H3's details, else from the runs."""
    def finite_values(key):
        d = _get(h3, key)
        return [float(v) for v in d.values() if _finite(v) is not None] if isinstance(d, dict) else []
    from_h3 = {"final": {"elr": finite_values("elr_acc"), "baseline": finite_values("baseline_acc")},
               "best": {"elr": finite_values("elr_best"), "baseline": finite_values("baseline_best")}}
    if any(from_h3["final"].values()):
        return from_h3, "H3's evaluation"
    from_runs = {"final": {}, "best": {}}
    for arm in ("elr", "baseline"):
        members = [r for r in runs if r.group == arm]
        from_runs["final"][arm] = [a for a in map(_final_acc, members) if a is not None]
        from_runs["best"][arm] = [a for a in map(_best_acc, members) if a is not None]
    return from_runs, "the runs' summaries (H3 gave no accuracies)"


def _accuracy_figure(acc: dict, source: str) -> tuple[bytes | None, str]:
    if not any(v for panel in acc.values() for v in panel.values()):
        return None, "no ELR or baseline run has a test accuracy"
    fig = Figure(figsize=(7.0, 3.4))
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.1, top=0.9, wspace=0.3)
    colors = {"elr": "tab:blue", "baseline": "tab:red"}
    parts = []
    for k, which in enumerate(("final", "best")):
        ax = fig.add_subplot(1, 2, k + 1)
        ax.set_title(f"{which} test accuracy", fontsize=10)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(True, axis="y", alpha=0.3)
        panel = {arm: 100 * np.asarray(acc[which].get(arm, []), dtype=np.float64) for arm in ("elr", "baseline")}
        if not any(len(v) for v in panel.values()):
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="grey")
        for pos, arm in ((1, "elr"), (2, "baseline")):
            y = panel[arm]
            if not len(y):
                continue
            ax.boxplot([y], positions=[pos], widths=0.5, showfliers=False, medianprops={"color": "k"})
            # Deterministic jitter: a rebuild gives the same picture.
            jitter = np.linspace(-0.15, 0.15, len(y)) if len(y) > 1 else np.zeros(1)
            ax.scatter(pos + jitter, y, s=16, color=colors[arm], alpha=0.8, zorder=3)
            parts.append(f"{which} {arm}: n={len(y)}, median {np.median(y):.1f}%")
        ax.set_xticks([1, 2], ["ELR", "baseline"])  # after boxplot, which sets its own ticks
        ax.set_xlim(0.4, 2.6)
    caption = f"Test accuracy per arm (box: quartiles, points: runs), from {source}; " + "; ".join(parts)
    return _png(fig), caption + "."


def _h5_points(h5: dict, key_x: str, key_y: str) -> list[tuple[str, float, float]]:
    pts = []
    for p in _list(_get(h5, "points")):
        if not isinstance(p, dict):
            continue
        x, y = _finite(p.get(key_x)), _finite(p.get(key_y))
        if x is not None and y is not None and x > 0 and y > 0:
            pts.append((str(p.get("run")), x, y))
    return pts


def _log_limits(values, min_decades: float = 1.2) -> tuple[float, float]:
    """Log-axis limits around positive values spanning at least `min_decades`, so that a power of ten
    (a labelled major tick) always falls inside and minor tick labels never crowd the axis."""
    lo, hi = math.log10(min(values)), math.log10(max(values))
    mid, half = (lo + hi) / 2, max((hi - lo) / 2 + 0.15, min_decades / 2)
    return 10 ** (mid - half), 10 ** (mid + half)


def _log_log_axes(ax, xlim, ylim) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="major", alpha=0.3)


def _scatter_figure(pts, colors):
    """A small square figure with one dot per run, in the run's curve colour."""
    fig = Figure(figsize=(4.2, 3.8))
    fig.subplots_adjust(left=0.2, right=0.96, bottom=0.14, top=0.9)
    ax = fig.add_subplot()
    for name, x, y in pts:
        ax.scatter([x], [y], s=22, color=colors.get(name, "tab:purple"), edgecolors="k", linewidths=0.4, zorder=3)
    return fig, ax


def _h5_angle_figure(h5: dict, colors: dict) -> tuple[bytes | None, str]:
    pts = _h5_points(h5, "predicted_angle", "measured_angle")
    if not pts:
        return None, "H5 has no point with positive finite measured and predicted angular updates"
    fig, ax = _scatter_figure(pts, colors)
    xs, ys = np.array([p[1] for p in pts]), np.array([p[2] for p in pts])
    lim = _log_limits(np.concatenate([xs, ys]))
    ax.plot(lim, lim, color="grey", linestyle="--", linewidth=1, label="measured = predicted")
    _log_log_axes(ax, lim, lim)
    ax.set_xlabel("predicted √(2ηλ/(1+μ)) (rad/step)")
    ax.set_ylabel("measured angular update (rad/step)")
    ax.set_title("H5: equilibrium angular update", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", frameon=False)
    ratio = float(np.median(ys / xs))
    return _png(fig), (f"Measured vs predicted equilibrium angular update per step (Wan et al. 2021), "
                       f"{len(pts)} runs; median measured/predicted = {ratio:.3g}; colours as in the curves.")


def _h5_elr_figure(h5: dict, colors: dict) -> tuple[bytes | None, str]:
    pts = _h5_points(h5, "eta_lambda", "elr_star")
    if not pts:
        return None, "H5 has no point with positive finite ηλ and equilibrium ELR"
    fig, ax = _scatter_figure(pts, colors)
    lx, ly = np.log([p[1] for p in pts]), np.log([p[2] for p in pts])
    xlim = _log_limits(np.exp(lx))
    grid = np.log(xlim)
    slope, ci = _finite(_get(h5, "slope")), _get(h5, "slope_ci")
    # Lines are drawn through the points' centroid in log-log space: the slope is the claim, the
    # intercept (∝ 1/G, the effective gradient norm) is not.
    # theory: Wan et al. 2021, equilibrium ELR ≈ √(2ηλ)/G, so slope 1/2 in log ELR* vs log ηλ
    ax.plot(np.exp(grid), np.exp(ly.mean() + 0.5 * (grid - lx.mean())), color="grey", linestyle="--",
            linewidth=1, label="theory: slope 1/2")
    title = "H5: ELR* vs ηλ"
    if slope is not None:
        ax.plot(np.exp(grid), np.exp(ly.mean() + slope * (grid - lx.mean())), color="k", linewidth=1,
                label=f"fit: slope {slope:.3g}")
        title += f", slope {slope:.3g}"
        if isinstance(ci, (list, tuple)) and len(ci) == 2:
            title += f" [{_num(ci[0])}, {_num(ci[1])}]"
    _log_log_axes(ax, xlim, _log_limits(np.exp(ly)))
    ax.set_xlabel("η·λ")
    ax.set_ylabel("equilibrium ELR*")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", frameon=False)
    slope_txt = "no slope was fitted" if slope is None else f"fitted slope {slope:.3g}"
    return _png(fig), f"Equilibrium ELR against η·λ, {len(pts)} runs, log-log; {slope_txt} (theory: 1/2)."


# ---------------------------------------------------------------- tables

def _diverged(run: Run) -> str:
    s = run.summary
    if s is None:
        return "—"
    if s.get("diverged"):
        return f"yes (epoch {s['diverged_epoch']})" if s.get("diverged_epoch") is not None else "yes"
    return "no"


def _run_rows(runs: list[Run]) -> list[list[str]]:
    rows = []
    for r in runs:
        c, s = r.config, r.summary or {}
        done = s.get("epochs_done", len(r.metrics))
        planned = s.get("epochs", c.get("epochs"))
        rows.append([r.name, r.group or "—", c.get("optimizer", "—"), c.get("schedule", "—"), _num(c.get("lr")),
                     _num(c.get("weight_decay")), _num(c.get("momentum")), _pct(_final_acc(r)), _pct(_best_acc(r)),
                     _diverged(r), f"{done}/{planned}" if planned is not None else str(done)])
    return rows


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

def write_report(out_dir, verdicts: list[Verdict], runs: list[Run], meta: dict) -> Path:
    """Write report.md, report.html, the figures and verdicts.json into out_dir; return report.md's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    by_id = {v.id.upper(): v for v in verdicts}

    def details(claim_id: str) -> dict:
        v = by_id.get(claim_id)
        return v.details if v is not None and isinstance(v.details, dict) else {}

    scales = [(r.config.get("labels") or {}).get("scale") for r in runs]
    scale = meta.get("scale") or next((s for s in scales if s), "unknown scale")
    date = meta.get("date") or datetime.date.today().isoformat()
    title = f"ELR study report — {scale}, {date}"
    colors = _run_colors(runs)

    blocks = [("h", 1, title), ("h", 2, "Verdicts"), ("table", VERDICT_COLUMNS, _verdict_rows(verdicts))]
    if not verdicts:
        blocks.append(("note", "No claim was evaluated."))
    else:
        blocks.append(("list", [f"{v.id} ({v.verdict}): {v.reason or 'no reason given'}" for v in verdicts]))

    figures: dict[str, bytes] = {}

    def add_figure(name: str, made: tuple[bytes | None, str]) -> None:
        png, caption = made
        if png is None:
            blocks.append(("note", f"Figure {name} omitted: {caption}."))
        else:
            figures[name] = png
            blocks.append(("fig", name, caption, png))

    blocks.append(("h", 2, "Training curves"))
    for metric in CURVE_METRICS:
        add_figure(f"curves_{metric}.png", _curve_figure(metric, runs, colors, details("H2"), details("H4")))
    blocks.append(("h", 2, "ELR vs baseline accuracy (H3)"))
    add_figure("accuracy.png", _accuracy_figure(*_arm_accuracies(details("H3"), runs)))
    blocks.append(("h", 2, "Equilibrium theory (H5)"))
    add_figure("h5_angle.png", _h5_angle_figure(details("H5"), colors))
    add_figure("h5_elr_star.png", _h5_elr_figure(details("H5"), colors))
    blocks.append(("h", 2, "Runs"))
    blocks.append(("table", RUN_COLUMNS, _run_rows(runs)) if runs else ("note", "No runs."))
    blocks.append(("h", 2, "Setup"))
    blocks.append(("table", ("key", "value"), _meta_rows(meta)) if meta else ("note", "No setup recorded."))

    for name, png in figures.items():
        atomic_write(out / name, lambda f, png=png: f.write(png))
    for name in FIGURES:
        if name not in figures:  # a figure this build could not make must not survive from the last one
            (out / name).unlink(missing_ok=True)
    write_json(out / VERDICTS_JSON, [verdict_json(v) for v in verdicts])
    md, page = _render_md(blocks).encode(), _render_html(blocks, title).encode()
    atomic_write(out / REPORT_HTML, lambda f: f.write(page))
    atomic_write(out / REPORT_MD, lambda f: f.write(md))
    return out / REPORT_MD
