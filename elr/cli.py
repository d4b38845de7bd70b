"""Command line: `python -m elr train ...` (one run), `python -m elr inspect RUN_DIR` (analyse one run) and
`python -m elr report RUNS_DIR` (rebuild a report).

Bad input exits 2 with one line `elr: error: ...` naming the problem and the accepted values.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import ConfigError, RunConfig, load_mapping


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump: the message names the flag and its choices
        self.exit(2, f"elr: error: {message} (see --help)\n")


def _flag(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _directory(value: str) -> Path:
    if not value.strip():   # Path("") is ".": an empty --out would write into the current directory
        raise argparse.ArgumentTypeError("expected a directory, got an empty string")
    return Path(value)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="elr", description="Effective-learning-rate study: train runs, rebuild reports.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train (or resume) one run into a run directory",
                       description="Train one run. Rerunning the same command resumes it; a finished run "
                                   "is not retrained. Flags override --config; unset flags take the defaults.")
    t.add_argument("--out", required=True, type=_directory, help="run directory (config.json, metrics.jsonl, checkpoint.pt, summary.json)")
    t.add_argument("--config", type=Path, help="JSON or TOML file of run settings (keys = the long flag names with _)")
    g = t.add_argument_group("model and data")
    g.add_argument("--model", help="convnet_si (default) | resnet18 | resnet18_si | tv_resnet18")
    g.add_argument("--width", type=int, help="base channel width (default: the model's own, 32 for convnet_si, 64 for resnets)")
    g.add_argument("--data", help="synthetic (default) | cifar10 (torchvision download, cache $ELR_DATA_DIR or ~/.cache/elr) | npz:PATH")
    g.add_argument("--subset", type=int, help="class-balanced seeded subset of N training images (test subset proportional)")
    g.add_argument("--test-subset", type=int, help="class-balanced seeded subset of N test images (default: proportional to --subset)")
    g.add_argument("--data-seed", type=int, help="seed of the subset draw (default 0: every run sees the same images)")
    g = t.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, help="epochs to train (default 10)")
    g.add_argument("--batch-size", type=int, help="minibatch size (default 128)")
    g.add_argument("--optimizer", help="sgd (default) | adam | adamw | rmsprop")
    g.add_argument("--lr", type=float, help="initial learning rate lr0 (> 0, default 0.1); with --schedule sphere: the ELR")
    g.add_argument("--momentum", type=float, help="SGD/RMSprop momentum in [0, 1) (default 0)")
    g.add_argument("--nesterov", type=_flag, help="Nesterov momentum for sgd: true|false (default false)")
    g.add_argument("--weight-decay", type=float, help="L2 strength lambda >= 0: adds lambda*w to the gradient, "
                                                      "i.e. (lambda/2)||w||^2 in the loss; decoupled for adamw (default 0)")
    g = t.add_argument_group("schedule")
    g.add_argument("--schedule", help="constant (default) | step | multistep | cosine | exponential | warmup | plateau | "
                                      "elr (lr = lr0/||w||^p) | sphere (fixed ELR on the sphere, Kodryan et al. 2022)")
    g.add_argument("--step-size", type=int, help="step: epochs between decays (default 30)")
    g.add_argument("--milestones", type=lambda s: [int(x) for x in s.split(",")], help="multistep: comma-separated epochs (default 50,75)")
    g.add_argument("--gamma", type=float, help="step/multistep/exponential/plateau decay factor (default 0.1)")
    g.add_argument("--warmup-epochs", type=int, help="warmup: epochs of linear ramp, then constant (default 5)")
    g.add_argument("--plateau-patience", type=int, help="plateau: epochs without test-loss improvement (default 10)")
    g = t.add_argument_group("effective-LR rule (--schedule elr)")
    g.add_argument("--elr-power", type=int, help="p in lr = lr0/||w||^p: 1 (the seed's rule, default), 2, -1 "
                                                  "(holds lr/||w|| = lr0, Adam-like), -2 (holds ELR = lr/||w||^2 = lr0, van Laarhoven)")
    g.add_argument("--elr-norm", help="||w|| over all trainable weights: all (default, the seed) | si (scale-invariant only)")
    g.add_argument("--elr-per-layer", type=_flag, help="one rate per scale-invariant layer: true|false (default false)")
    g.add_argument("--elr-every", help="recompute the rate every epoch (default, the seed) | step")
    g = t.add_argument_group("run")
    g.add_argument("--seed", type=int, help="seed of initialisation and batch order (default 0)")
    g.add_argument("--device", help="cpu (default) | cuda | cuda:N")
    g.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, all cores); results depend "
                                               "on it in the last bits, so a study fixes it at 1 per run")
    g.add_argument("--channels-last", type=_flag, help="NHWC memory layout for convolutions: true (default) | false "
                                                       "(the same values up to float32 rounding, faster)")
    g.add_argument("--compile", help="torch.compile the model: auto (default: for runs of >= 1000 steps) | on | off; "
                                     "falls back to eager with a one-line notice where unavailable")
    g.add_argument("--precision", help="fp32 (default) | bf16 (autocast forward and backward; fp32 weights, optimizer "
                                       "state and norms; part of the run's identity)")
    g.add_argument("--checkpoint-every", type=int, help="epochs between checkpoints (default 1; always at the end and on Ctrl-C)")
    g.add_argument("--progress", type=_flag, help="live progress line: true|false (default: on a terminal only)")

    i = sub.add_parser("inspect", help="analyse one run directory: theory vs measurement, episodes, drops",
                       description="Analyse one run (finished or not): the theory's fixed point beside the measured "
                                   "norm, ELR and RMS angle, stationarity, the relaxation time, destabilisation "
                                   "episodes and drop-and-recovery events.")
    i.add_argument("run_dir", type=Path, help="a run directory (with config.json and metrics.jsonl)")
    i.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    i.add_argument("--no-sensitivity", action="store_true", help="skip the injection tests (faster)")

    r = sub.add_parser("report", help="rebuild a report from existing run directories, without training")
    r.add_argument("runs_dir", type=Path, help="a study's runs directory (RUNS_DIR/<scale>), or RUNS_DIR to report every "
                                                "study under it")
    r.add_argument("--out", type=_directory, help="report directory (default reports/<scale>-<date>, with a -2, -3 ... suffix "
                                            "rather than over another study's report)")
    st = sub.add_parser("study", help="a study in flight: status of its runs and cluster tasks")
    ss = st.add_subparsers(dest="study_command", required=True, metavar="run|status")
    sr = ss.add_parser("run", help="train a study (here, or as cluster jobs) and write its report",
                       description="The study without pytest: expand the design at a scale, train every run not yet "
                                   "ended (here, or through --executor), judge the claims and write "
                                   "REPORT_DIR/<scale>-<date>/. `pytest experiments/` does the same and turns the "
                                   "verdicts into test outcomes.")
    sr.add_argument("--scale", default="smoke", help="smoke (default) | cpu | full (a scale in the design file)")
    sr.add_argument("--design", type=Path, default=None, help="the design file (default: experiments/design.toml "
                                                               "of this checkout, else the installed copy)")
    sr.add_argument("--data", help="override the scale's data: cifar10 | npz:PATH | synthetic")
    sr.add_argument("--seeds", type=int, default=1, help="repeat every configuration with K seeds (default 1)")
    sr.add_argument("--runs-dir", type=Path, default=Path("runs"), help="run directories go to RUNS_DIR/<scale>/ "
                                                                        "(default runs)")
    sr.add_argument("--report-dir", type=Path, default=Path("reports"), help="the report goes to "
                                                                             "REPORT_DIR/<scale>-<date>/ (default reports)")
    sr.add_argument("--gpu", action="store_true", help="train on CUDA")
    sr.add_argument("--pack", type=int, default=None, help="up to K runs per step (default 1 on CPU, 16 with --gpu)")
    from .cluster import OPTIONS

    for flag, kwargs in OPTIONS:
        sr.add_argument(flag, **kwargs)
    s1 = ss.add_parser("status", help="one line per run: finished / diverged / epoch reached, its task's job id, and "
                                      "failures with their logs (RUNS_DIR/<scale>/.cluster.json)")
    s1.add_argument("runs_dir", type=Path, help="a study's runs directory, e.g. runs/full")
    b = sub.add_parser("bench", help="measure training throughput (images/s, MFU) and project the study's wall time",
                       description="Time whole training epochs on CIFAR-shaped noise or real images (--data), "
                                   "batch 128, in four modes: loop (a plain DataLoader + SGD loop, the baseline), eager (the trainer's "
                                   "epoch, evaluation included), fast (channels_last + torch.compile), packed K "
                                   "(K runs at once through elr.training.pack). Prints a table, the projected wall "
                                   "time of each study scale, and writes JSON. Full default CPU run: ~2 h (resnet18 "
                                   "~3 s a step on one core); --quick: < 2 min.")
    b.add_argument("--models", help="NAME or NAME:WIDTH, comma-separated (default convnet_si:8,convnet_si,resnet18; "
                                    "--quick: convnet_si:8,resnet18); accepted names: convnet_si, resnet18, "
                                    "resnet18_si, tv_resnet18")
    b.add_argument("--width", type=int, help="width of models given without :WIDTH (default: the model's own)")
    b.add_argument("--modes", default="loop,eager,fast,packed", help="comma-separated subset of loop, eager, fast, "
                                                                     "packed (default all)")
    b.add_argument("--precisions", default="fp32", help="fp32 (default) and/or bf16, comma-separated: rows of eager, "
                                                        "fast and packed per precision (loop is fp32)")
    b.add_argument("--pack", help="K runs per packed row, comma-separated integers >= 1 (default 1,4,16; --quick 1,4)")
    b.add_argument("--device", default="cpu", help="cpu (default) | cuda | cuda:N")
    b.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, as a study run)")
    b.add_argument("--images", type=int, help="training images per epoch (default 2560 = 20 batches; --quick 1280)")
    b.add_argument("--test-images", type=int, help="test images each trainer epoch evaluates (default 1000; --quick 500)")
    b.add_argument("--warmup", type=int, help="untimed epochs before the timed ones (default 1); fast's first "
                                              "epoch compiles")
    b.add_argument("--repeats", type=int, help="timed epochs; the median is reported (default 3; --quick 2)")
    b.add_argument("--quick", action="store_true", help="< 2 min on a 2-core CPU: smaller epochs, 2 timed; models "
                                                        "over 0.1 GFLOP per training image get loop and eager over 2 "
                                                        "steps only")
    b.add_argument("--profile", action="store_true", help="after timing each fast row, profile one more epoch and "
                                                          "print the share of CPU time in convolutions (forward, "
                                                          "backward), compiled kernels and the rest (--device cpu)")
    b.add_argument("--data", help="noise (default: generated normal noise, no data set needed) | synthetic | cifar10 | "
                                  "npz:PATH: class-balanced subsets of --images / --test-images images, loaded as "
                                  "elr train loads them")
    b.add_argument("--out", type=Path, default=Path("bench.json"), help="JSON output (default bench.json)")
    return p


def config_from_args(args: argparse.Namespace) -> RunConfig:
    settings = load_mapping(args.config) if args.config else {}
    settings = RunConfig.from_dict(settings).to_dict()  # unknown keys in the file -> one-line error
    for key in RunConfig.__dataclass_fields__:
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    return RunConfig.from_dict(settings)


def cmd_train(args) -> int:
    from .training.train import RunDirConflict, train

    try:
        summary = train(config_from_args(args), args.out, progress=args.progress)
    except RunDirConflict as e:
        raise ConfigError(f"{e}; use another --out, or delete {args.out} to train this configuration there") from None
    if summary.get("interrupted"):
        print(f"stopped after epoch {summary['epochs_done']}/{summary['epochs']}: rerun the same command to resume",
              file=sys.stderr)
        return 130
    state = "diverged at epoch %s" % summary["diverged_epoch"] if summary["diverged"] else "finished"
    fmt = lambda a: "n/a" if a is None else f"{a:.4f}"  # noqa: E731
    print(f"{args.out}: {state}, {summary['epochs_done']} epochs, final test acc {fmt(summary['final_test_acc'])}, "
          f"best {fmt(summary['best_test_acc'])} (epoch {summary['best_epoch']})")
    return 0


def cmd_inspect(args) -> int:
    from . import runs
    from .analysis.inspect import analyse, summary_text

    if not runs.is_run_dir(args.run_dir):
        raise ConfigError(f"{args.run_dir} is not a run directory: it has no {runs.CONFIG}")
    try:
        run = runs.Run(args.run_dir)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{args.run_dir}/{runs.CONFIG} cannot be read: {e}") from None
    if not run.metrics:
        raise ConfigError(f"{args.run_dir} has no trained epoch in {runs.METRICS} yet")
    a = analyse(run, sensitivity=not args.no_sensitivity)
    print(runs.dumps(a) if args.json else summary_text(a))
    return 0


def cmd_report(args) -> int:
    from .analysis.report import problem_lines
    from .study import rebuild_report

    def warn(root, loaded) -> None:     # on the console too: the report's section is easy to miss
        for line in problem_lines(loaded):
            print(f"elr: warning: {root}/{line}", file=sys.stderr)

    try:
        made = rebuild_report(args.runs_dir, args.out, on_load=warn)
    except OSError as e:
        raise ConfigError(f"{e.filename or args.out}: {e.strerror or e}; the report needs readable runs and a "
                          "writable --out directory") from None
    for path in made:
        print(path)
    return 0


def cmd_study(args) -> int:
    from .cluster import status_table

    if args.study_command == "run":
        return _study_run(args)
    if not args.runs_dir.is_dir():
        raise ConfigError(f"{args.runs_dir} is not a directory; give a study's runs directory, e.g. runs/full")
    print(status_table(args.runs_dir))
    return 0


def _study_run(args) -> int:
    from .cluster import StudyFailed, Submitted, options_from, train_runs
    from .analysis.report import REPORT_HTML, verdict_summary
    from .study import Design, StudyProgress, auto_pack, default_design, expand, rebuild_report
    from .analysis.verdict import Verdict

    design = args.design or default_design()
    if not design.is_file():
        raise ConfigError(f"no design file at {design}; give --design PATH (experiments/design.toml in a checkout)")
    if args.seeds < 1 or (args.pack is not None and args.pack < 1):
        raise ConfigError("--seeds and --pack take integers >= 1")
    device = "cuda" if args.gpu else "cpu"
    opts = options_from(lambda k: getattr(args, k)).check()
    # a cluster controller needs no GPU of its own: the tasks check CUDA where they run
    configs = expand(Design.load(design), args.scale, seeds=args.seeds, data=args.data, device=device,
                     check_device=opts.executor == "local")
    root, pack = args.runs_dir / args.scale, args.pack or auto_pack(device)
    progress = StudyProgress(configs, root, label=args.scale, stream=sys.stderr, every=2.0 if sys.stderr.isatty()
                             else 60.0, tty=sys.stderr.isatty()).start()
    try:
        try:
            train_runs(configs, root, opts, pack=pack)
        finally:
            progress.stop()         # its last line before anything else is said
    except Submitted as e:
        print(f"elr: {e}", file=sys.stderr)
        return 0
    except StudyFailed as e:
        print(f"elr: {e}", file=sys.stderr)
        return 1
    for path in rebuild_report(root, reports=args.report_dir):
        verdicts = [Verdict.from_json(v) for v in json.loads(path.with_name("verdicts.json").read_text())]
        print(f"report: {path}\n        {path.with_name(REPORT_HTML)}\n{verdict_summary(verdicts)}")
    return 0


def cmd_bench(args) -> int:
    from .bench import plan_from_args, report_text, run

    print(report_text(run(plan_from_args(args))))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = None
    try:
        # inside the try: elr.training.data imports torch, seconds in which a Ctrl-C must end in one line, not a
        # traceback
        from .training.data import DataError

        args = build_parser().parse_args(argv)
        return {"train": cmd_train, "inspect": cmd_inspect, "report": cmd_report, "bench": cmd_bench,
                "study": cmd_study}[args.command](args)
    except KeyboardInterrupt:
        resume = "; the last checkpoint stands: rerun the same command to resume" if getattr(
            args, "command", None) in ("train", "study") else ""
        print(f"elr: interrupted{resume}", file=sys.stderr)
        return 130
    except Exception as e:
        from .training.data import DataError

        if isinstance(e, (ConfigError, DataError)):
            print(f"elr: error: {e}", file=sys.stderr)
            return 2
        raise
