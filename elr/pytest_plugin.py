"""The pytest layer of the study: options, markers, the session's study, and the report plugin.

    pytest experiments/                                   smoke scale, CPU, synthetic data (minutes)
    pytest experiments/ --scale cpu --data npz:PATH -n 2  a laptop study on real CIFAR-10 (< 1 h, 2 cores)
    pytest experiments/ -m long --gpu                     the full 10,000-epoch study on CUDA
    pytest --pyargs elr.experiments                       the same study from an installed elr (no checkout)

Each claim test reads the study's verdict, records it (`record_property`, so it reaches the xdist
controller), and passes (held), fails (refuted) or skips (inconclusive). The report plugin lives on the
controller only and writes reports/<scale>-<date>/ once, from every worker's verdicts.

How it is loaded: an installed elr declares this module as a `pytest11` entry point named
"elr.pytest_plugin", so pytest loads it in EVERY session of the environment, the user's unrelated projects
included. It therefore does nothing unless the session runs the study: its one module-level hook,
`pytest_addoption`, looks at the command line and only when it names a study directory (a directory with
design.toml and test_claims.py: experiments/ in a checkout, elr/experiments in an installed package)
registers the study's options and a `StudyPlugin` holding every other hook and the fixtures. A checkout's
root conftest.py names this module in `pytest_plugins`: pytest imports a plugin once per name, so the entry
point and the conftest never register it twice.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

VERDICT_KEY, STUDY_KEY = "elr_verdict", "elr_study"
STUDY_PLUGIN = "elr-study"                  # the name StudyPlugin is registered under
STUDY_PACKAGE = "elr.experiments"           # the claim tests and design.toml, as installed
# the marks of the full-scale parameter of the `scale` fixture: `-m` selects the long study exactly when it
# selects an item carrying these marks
FULL_MARKS = ("long", "gpu")
MARKERS = ("long: the full-scale study (10,000 epochs on CUDA); run with -m long --gpu",
           "gpu: needs CUDA; run with --gpu")


# ------------------------------------------------------------------------------------ is this the study?
def is_study_dir(path: Path) -> bool:
    return (path / "design.toml").is_file() and (path / "test_claims.py").is_file()


def study_dir_for(arg: str, invocation_dir: Path, pyargs: bool = False) -> Path | None:
    """The study directory one command-line argument runs, or None: the argument is the study directory, a
    file or directory inside it, or the directory just above it (`pytest .` in a checkout's root)."""
    arg = arg.split("::")[0]
    if pyargs and not os.path.exists(arg):
        # only elr's own modules are looked up: finding another name's spec imports its parents, which a
        # plugin loaded in every session of the environment must not do
        if arg not in ("elr", STUDY_PACKAGE) and not arg.startswith(STUDY_PACKAGE + "."):
            return None
        try:
            spec = importlib.util.find_spec(arg)
        except (ImportError, ValueError):
            return None
        if spec is None or spec.origin in (None, "namespace"):
            return None
        arg = os.path.dirname(spec.origin) if spec.submodule_search_locations else spec.origin
    path = (invocation_dir / arg).resolve()
    if not path.exists():           # an option's value (--scale cpu) that pytest took for a path, or a typo
        return None
    for candidate in (path / "experiments", path, *path.parents):
        if candidate.is_dir() and is_study_dir(candidate):
            return candidate
    return None


def requested_study(config) -> Path | None:
    """The study directory this session's command line runs, or None, from the early parse of the command
    line (pytest's own rule for the paths: the arguments, else testpaths from the rootdir, else the current
    directory)."""
    ns = getattr(config, "known_args_namespace", None)
    if ns is None:                  # registered before pytest read its command line (pytest.main(plugins=...))
        return None
    invocation = Path(config.invocation_params.dir)
    args = list(getattr(ns, "file_or_dir", None) or [])
    if not args and invocation == config.rootpath:
        args = list(config.getini("testpaths") or [])
    for arg in args or ["."]:
        found = study_dir_for(str(arg), invocation, pyargs=bool(getattr(ns, "pyargs", False)))
        if found is not None:
            return found
    return None


def pytest_addoption(parser, pluginmanager):
    """The only hook of the module: registers the study (options and StudyPlugin) when, and only when, the
    command line runs it. pytest calls it once the command line is known (an entry point loads after the
    early parse, a conftest's pytest_plugins while the initial conftests load), before the full parse."""
    config = pluginmanager.get_plugin("pytestconfig")
    if config is None or pluginmanager.has_plugin(STUDY_PLUGIN):
        return
    study_dir = requested_study(config)
    if study_dir is None:
        return
    add_study_options(parser, study_dir / "design.toml")
    pluginmanager.register(StudyPlugin(study_dir), STUDY_PLUGIN)
    # the fixtures are module functions in a module of their own (pytest deprecates fixtures that are methods
    # of a plugin object), registered here so that no other session sees a `study` or `scale` fixture
    pluginmanager.register(importlib.import_module("elr.study_fixtures"), "elr-study-fixtures")


def add_study_options(parser, design: Path) -> None:
    g = parser.getgroup("elr study")
    g.addoption("--scale", default="smoke", help="study scale from the design file: smoke (default) | cpu")
    g.addoption("--data", default=None, help="override the scale's data: cifar10 | npz:PATH | synthetic")
    g.addoption("--gpu", action="store_true", help="train on CUDA (with -n N, worker i takes GPU i mod count)")
    g.addoption("--pack", type=int, default=None, help="train up to K runs of one model and data per step (default: 1 "
                                                       "on CPU, elr.study.PACK_CUDA with --gpu); metrics equal K=1's "
                                                       "up to float rounding")
    g.addoption("--seeds", type=int, default=1, help="repeat every configuration with K seeds (default 1)")
    g.addoption("--runs-dir", default="runs", help="where run directories go: RUNS_DIR/<scale>/<run> (default runs)")
    g.addoption("--report-dir", default="reports", help="where reports go: REPORT_DIR/<scale>-<date>/ (default reports)")
    g.addoption("--fresh", action="store_true", help="delete this scale's runs and start the study over")
    g.addoption("--design", default=str(design), help=f"the study design file (default {design})")
    from elr.cluster import OPTIONS

    c = parser.getgroup("elr study on a cluster (elr/cluster.py; needs pip install -e \".[slurm]\")")
    for flag, kwargs in OPTIONS:
        c.addoption(flag, **kwargs)


# ------------------------------------------------------------------------------------------- helpers
def selects_long(markexpr: str | None) -> bool:
    """Whether `-m markexpr` selects the full-scale items (marked FULL_MARKS), parsed as pytest parses it:
    `-m "not  long"` does not, `-m "(long)"` and `-m gpu` do, `-m "long and not gpu"` does not. An
    expression pytest cannot parse selects nothing here; pytest itself reports it."""
    if not markexpr or not markexpr.strip():
        return False
    from _pytest.mark import expression as mark_expression

    # pytest < 9 raises its own ParseError for a bad expression, pytest 9 a SyntaxError
    bad = (SyntaxError, getattr(mark_expression, "ParseError", SyntaxError))
    try:
        expression = mark_expression.Expression.compile(markexpr)
    except bad:
        return False
    # pytest >= 8.1 passes marker keyword arguments to the matcher; earlier versions only the name
    return bool(expression.evaluate(lambda name, **kwargs: name in FULL_MARKS and not kwargs))


def _scales(config) -> list[str]:
    return ["full"] if selects_long(config.getoption("markexpr")) else [config.getoption("scale")]


def _is_worker(config) -> bool:
    return hasattr(config, "workerinput")


def _cluster_options(config):
    from elr.cluster import options_from

    return options_from(config.getoption, poll_seconds=float(os.environ.get("ELR_PROGRESS_SECONDS") or 30.0))


def _check_request(config) -> str | None:
    """Why the requested study cannot start here (one line), or None. Cheapest checks first."""
    from elr.config import ConfigError
    from elr.training.data import DataError, load_data
    from elr.study import Design

    if config.getoption("seeds") < 1:
        return f"--seeds must be a positive integer, got {config.getoption('seeds')}"
    if config.getoption("pack") is not None and config.getoption("pack") < 1:
        return f"--pack must be a positive integer, got {config.getoption('pack')}"
    try:
        _cluster_options(config).check()
    except ConfigError as e:
        return str(e)
    if config.getoption("gpu") or selects_long(config.getoption("markexpr")):
        import torch

        if not config.getoption("gpu"):
            return "the long study trains on CUDA: add --gpu (pytest experiments/ -m long --gpu)"
        # with a cluster executor the controller (a login node) needs no GPU: the tasks check CUDA where they run
        if not torch.cuda.is_available() and config.getoption("executor") == "local":
            return "--gpu given but CUDA is not available on this machine; run without --gpu (CPU scales: smoke, cpu)"
    try:
        design = Design.load(config.getoption("design"))
        for name in _scales(config):
            scale = design.scale(name)
            # here, once, on the controller: a missing data set stops the session before any worker
            # starts, and a first-use CIFAR-10 download happens once, not once per worker
            load_data(config.getoption("data") or scale["data"], subset=scale.get("subset"),
                      test_subset=scale.get("test_subset"))
    except (ConfigError, DataError) as e:
        return str(e)
    return None


class _ReporterStream:
    """Writes through the terminal reporter with pytest's output capture set aside for the moment (a serial
    session trains inside a test's setup, where the capture is on; an xdist controller runs no test)."""

    def __init__(self, config, reporter):
        self.reporter, self.capman = reporter, config.pluginmanager.get_plugin("capturemanager")

    def write(self, text: str) -> None:
        if self.capman is None:
            self.reporter.write(text, flush=True)
            return
        with self.capman.global_and_fixture_disabled():
            self.reporter.write(text, flush=True)

    def flush(self) -> None:
        pass


def _start_progress(config) -> None:
    """The controller follows each study's runs directory and reports its progress (a terminal: one line
    rewritten every 2 s; a log: a line every 60 s; ELR_PROGRESS_SECONDS overrides the interval). It writes
    through pytest's terminal reporter, the one stream pytest's output capture leaves alone."""
    from elr.study import Design, StudyProgress, expand

    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    tty = bool(reporter.isatty)
    every = float(os.environ.get("ELR_PROGRESS_SECONDS") or (2.0 if tty else 60.0))
    stream = _ReporterStream(config, reporter)
    design = Design.load(config.getoption("design"))
    config._elr_progress = [
        StudyProgress(expand(design, s, seeds=config.getoption("seeds"), data=config.getoption("data")),
                      Path(config.getoption("runs_dir")) / s, label=s, stream=stream, every=every, tty=tty).start()
        for s in _scales(config)]


def _stop_progress(config) -> None:
    for progress in getattr(config, "_elr_progress", []):
        progress.stop()
    config._elr_progress = []


def _device(config) -> str:
    if not config.getoption("gpu"):
        return "cpu"
    if config.getoption("executor") != "local":
        return "cuda"               # each task's own GPU
    import torch

    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return f"cuda:{int(worker[2:] or 0) % torch.cuda.device_count()}"


def _train(config, configs, root, opts, pack):
    """The study's runs, here or as submitit jobs: a cluster controller waits (its line through the terminal
    reporter), or with --no-wait returns at once, and a crashed run that used up its retries ends the session
    in one line."""
    from elr.cluster import StudyFailed, Submitted, train_runs

    reporter = config.pluginmanager.get_plugin("terminalreporter")
    stream = _ReporterStream(config, reporter) if reporter is not None else None
    try:
        return train_runs(configs, root, opts, pack=pack, stream=stream)
    except Submitted as e:
        pytest.exit(f"elr: {e}", returncode=0)
    except StudyFailed as e:
        pytest.exit(f"elr: {e}", returncode=1)


@dataclass
class Study:
    scale: str
    root: Path
    runs: list
    verdicts: dict


# ------------------------------------------------------------------------------------------- the study
class StudyPlugin:
    """Every hook of a study session (its fixtures: elr/study_fixtures.py); registered by pytest_addoption only
    for such a session."""

    def __init__(self, study_dir: Path):
        self.study_dir = study_dir

    def pytest_configure(self, config):
        for line in MARKERS:
            config.addinivalue_line("markers", line)
        if not _is_worker(config):
            config.pluginmanager.register(StudyReport(config), "elr-study-report")

    def pytest_collection_modifyitems(self, config, items):
        """A plain run never starts a long test: without -m, long items are deselected."""
        if config.getoption("markexpr"):
            return
        keep = [i for i in items if i.get_closest_marker("long") is None]
        if len(keep) != len(items):
            config.hook.pytest_deselected(items=[i for i in items if i.get_closest_marker("long") is not None])
            items[:] = keep

    @pytest.hookimpl(tryfirst=True)
    def pytest_cmdline_main(self, config):
        """Bad input stops the session before it starts: one line on stderr, exit 2. (pytest.exit from a
        session hook prints its message twice, once as 'Exit:' and once framed in '!'.)"""
        if config.option.help or config.option.version or _is_worker(config):
            return None
        reason = _check_request(config)
        if reason is None and config.getoption("fresh"):
            from elr.config import ConfigError
            from elr.study import fresh

            try:
                for s in _scales(config):
                    fresh(Path(config.getoption("runs_dir")) / s)
            except ConfigError as e:  # a refusal is bad input: nothing deleted
                reason = str(e)
        if reason:
            sys.stderr.write(f"elr: {reason}\n")
            return 2
        return None

    def pytest_sessionstart(self, session):
        if not _is_worker(session.config):
            _start_progress(session.config)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session):
        """The progress line's last word comes before the report summary (the terminal summary follows this)."""
        _stop_progress(session.config)

    def pytest_unconfigure(self, config):
        _stop_progress(config)      # a session that ended before sessionfinish (an interrupt)


# ------------------------------------------------------------------------------------------- report
class StudyReport:
    """Controller-side plugin: collects verdicts from every worker's reports, writes the report once."""

    def __init__(self, config):
        self.config, self.verdicts, self.studies, self.paths = config, {}, {}, []
        self.started = time.time()

    def pytest_runtest_logreport(self, report):
        props = dict(report.user_properties)
        if VERDICT_KEY in props and STUDY_KEY in props:
            study = props[STUDY_KEY]
            self.studies[study["scale"]] = study["root"]
            self.verdicts.setdefault(study["scale"], {})[props[VERDICT_KEY]["id"]] = props[VERDICT_KEY]

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session):
        from elr import runs
        from elr.analysis.report import write_report
        from elr.study import meta, report_dir
        from elr.analysis.verdict import Verdict

        for scale, root in self.studies.items():
            loaded = runs.load_runs(root)
            info = meta(loaded, session_wall_time_s=round(time.time() - self.started, 1), scale=scale)
            out = report_dir(Path(self.config.getoption("report_dir")).resolve(), f"{scale}-{info['date']}", Path(root))
            verdicts = [Verdict.from_json(self.verdicts[scale][k]) for k in sorted(self.verdicts[scale])]
            self.paths.append((write_report(out, verdicts, loaded, info), verdicts))

    def pytest_terminal_summary(self, terminalreporter):
        from elr.analysis.report import REPORT_HTML, verdict_summary

        for path, verdicts in self.paths:
            terminalreporter.section("elr study report")
            terminalreporter.write_line(f"report: {path}")
            terminalreporter.write_line(f"        {path.with_name(REPORT_HTML)}")
            terminalreporter.write_line(verdict_summary(verdicts))
