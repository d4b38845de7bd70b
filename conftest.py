"""The pytest layer of the study: options, markers, the session's study, and the report plugin.

    pytest experiments/                                   smoke scale, CPU, synthetic data (minutes)
    pytest experiments/ --scale cpu --data npz:PATH -n 2  a laptop study on real CIFAR-10 (< 1 h, 2 cores)
    pytest experiments/ -m long --gpu                     the full 10,000-epoch study on CUDA

Each claim test reads the study's verdict, records it (`record_property`, so it reaches the xdist
controller), and passes (held), fails (refuted) or skips (inconclusive). The report plugin lives on the
controller only and writes reports/<scale>-<date>/ once, from every worker's verdicts.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parent
VERDICT_KEY, STUDY_KEY = "elr_verdict", "elr_study"


def pytest_addoption(parser):
    g = parser.getgroup("elr study")
    g.addoption("--scale", default="smoke", help="study scale from experiments/design.toml: smoke (default) | cpu")
    g.addoption("--data", default=None, help="override the scale's data: cifar10 | npz:PATH | synthetic")
    g.addoption("--gpu", action="store_true", help="train on CUDA (with -n N, worker i takes GPU i mod count)")
    g.addoption("--pack", type=int, default=None, help="train up to K runs of one model and data per step (default: 1 "
                                                       "on CPU, elr.study.PACK_CUDA with --gpu); metrics equal K=1's "
                                                       "up to float rounding")
    g.addoption("--seeds", type=int, default=1, help="repeat every configuration with K seeds (default 1)")
    g.addoption("--runs-dir", default="runs", help="where run directories go: RUNS_DIR/<scale>/<run> (default runs)")
    g.addoption("--report-dir", default="reports", help="where reports go: REPORT_DIR/<scale>-<date>/ (default reports)")
    g.addoption("--fresh", action="store_true", help="delete this scale's runs and start the study over")
    g.addoption("--design", default=str(ROOT / "experiments" / "design.toml"), help="the study design file")
    from elr.cluster import OPTIONS

    c = parser.getgroup("elr study on a cluster (elr/cluster.py; needs pip install -e \".[slurm]\")")
    for flag, kwargs in OPTIONS:
        c.addoption(flag, **kwargs)


def _selects_long(config) -> bool:
    expr = config.getoption("markexpr") or ""
    return "long" in expr and "not long" not in expr


def _scales(config) -> list[str]:
    return ["full"] if _selects_long(config) else [config.getoption("scale")]


def _is_worker(config) -> bool:
    return hasattr(config, "workerinput")


def pytest_configure(config):
    config.addinivalue_line("markers", "long: the full-scale study (10,000 epochs on CUDA); run with -m long --gpu")
    config.addinivalue_line("markers", "gpu: needs CUDA; run with --gpu")
    if not _is_worker(config):
        config.pluginmanager.register(StudyReport(config), "elr-study-report")


def pytest_collection_modifyitems(config, items):
    """A plain run never starts a long test: without -m naming `long`, long items are deselected."""
    if config.getoption("markexpr"):
        return
    keep = [i for i in items if i.get_closest_marker("long") is None]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i.get_closest_marker("long") is not None])
        items[:] = keep


def _cluster_options(config):
    from elr.cluster import options_from

    return options_from(config.getoption, poll_seconds=float(os.environ.get("ELR_PROGRESS_SECONDS") or 30.0))


def _check_request(config) -> str | None:
    """Why the requested study cannot start here (one line), or None. Cheapest checks first."""
    from elr.config import ConfigError
    from elr.data import DataError, load_data
    from elr.study import Design

    if config.getoption("seeds") < 1:
        return f"--seeds must be a positive integer, got {config.getoption('seeds')}"
    if config.getoption("pack") is not None and config.getoption("pack") < 1:
        return f"--pack must be a positive integer, got {config.getoption('pack')}"
    try:
        _cluster_options(config).check()
    except ConfigError as e:
        return str(e)
    if config.getoption("gpu") or _selects_long(config):
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


def _runs_the_study(config) -> bool:
    """The controller of a session that collects experiments/ (pytest tests/ never trains a study)."""
    return not _is_worker(config) and any(
        Path(a).resolve().is_relative_to(ROOT / "experiments") or (ROOT / "experiments").resolve().is_relative_to(Path(a).resolve())
        for a in (config.args or ["."]) if Path(a.split("::")[0]).exists())


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """Bad input stops the session before it starts: one line on stderr, exit 2. (pytest.exit from a session
    hook prints its message twice, once as 'Exit:' and once framed in '!'.)"""
    if config.option.help or config.option.version or not _runs_the_study(config):
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


def pytest_sessionstart(session):
    if _runs_the_study(session.config):
        _start_progress(session.config)


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


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    """The progress line's last word comes before the report summary (the terminal summary follows this)."""
    _stop_progress(session.config)


def pytest_unconfigure(config):
    _stop_progress(config)      # a session that ended before sessionfinish (an interrupt)


def _stop_progress(config) -> None:
    for progress in getattr(config, "_elr_progress", []):
        progress.stop()
    config._elr_progress = []


# ------------------------------------------------------------------------------------------- fixtures
@dataclass
class Study:
    scale: str
    root: Path
    runs: list
    verdicts: dict


@pytest.fixture(scope="session", params=["selected", pytest.param("full", marks=[pytest.mark.long, pytest.mark.gpu])])
def scale(request) -> str:
    return request.config.getoption("scale") if request.param == "selected" else "full"


def _device(config) -> str:
    if not config.getoption("gpu"):
        return "cpu"
    if config.getoption("executor") != "local":
        return "cuda"               # each task's own GPU
    import torch

    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return f"cuda:{int(worker[2:] or 0) % torch.cuda.device_count()}"


@pytest.fixture(scope="session")
def study(request, scale) -> Study:
    """Train (or reuse, or resume) every run of the study at this scale, then judge all claims."""
    from elr import runs
    from elr.config import ConfigError
    from elr.data import DataError
    from elr.study import Design, auto_pack, evaluate, expand

    config = request.config
    try:
        device, opts = _device(config), _cluster_options(config)
        configs = expand(Design.load(config.getoption("design")), scale, seeds=config.getoption("seeds"),
                         data=config.getoption("data"), device=device, check_device=opts.executor == "local")
        root = Path(config.getoption("runs_dir")) / scale
        paths = _train(config, configs, root, opts, config.getoption("pack") or auto_pack(device))
    except (ConfigError, DataError) as e:
        pytest.exit(f"elr: {e}", returncode=2)
    loaded = runs.load_runs(paths)
    return Study(scale, root, loaded, {v.id: v for v in evaluate(loaded)})


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


@pytest.fixture
def judge(study, record_property):
    """judge("H3"): record the verdict for the report, then pass / fail / skip as the verdict says."""
    from elr.verdict import HELD, REFUTED

    def _judge(claim_id: str):
        v = study.verdicts[claim_id]
        record_property(STUDY_KEY, {"scale": study.scale, "root": str(study.root.resolve())})
        record_property(VERDICT_KEY, v.to_json())
        message = f"{v.id} {v.verdict}: {v.reason}"
        if v.verdict == REFUTED:
            pytest.fail(message, pytrace=False)
        if v.verdict != HELD:
            pytest.skip(message)
        return v

    return _judge


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
        from elr.report import write_report
        from elr.study import meta, report_dir
        from elr.verdict import Verdict

        for scale, root in self.studies.items():
            loaded = runs.load_runs(root)
            info = meta(loaded, session_wall_time_s=round(time.time() - self.started, 1), scale=scale)
            out = report_dir(Path(self.config.getoption("report_dir")).resolve(), f"{scale}-{info['date']}", Path(root))
            verdicts = [Verdict.from_json(self.verdicts[scale][k]) for k in sorted(self.verdicts[scale])]
            self.paths.append((write_report(out, verdicts, loaded, info), verdicts))

    def pytest_terminal_summary(self, terminalreporter):
        from elr.report import REPORT_HTML, verdict_summary

        for path, verdicts in self.paths:
            terminalreporter.section("elr study report")
            terminalreporter.write_line(f"report: {path}")
            terminalreporter.write_line(f"        {path.with_name(REPORT_HTML)}")
            terminalreporter.write_line(verdict_summary(verdicts))
