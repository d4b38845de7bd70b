"""Check mutmut mutants in a kept clone, one fork per mutant of a process that has imported torch, elr and the
test modules once (mutmut's own workers import them per mutant, about 5 s each on 2 cores).

    KEEP=1 BUDGET=5 bash bench/mutation.sh train        # a clone with mutmut's stats (the budget can be short)
    cd <clone>/mutants
    python ROOT/bench/mutation_recheck.py train --unchecked          # the mutants mutmut did not reach
    python ROOT/bench/mutation_recheck.py train --survivors          # mutmut's survivors, against today's tests
    python ROOT/bench/mutation_recheck.py train NAME [NAME ...]
    python ROOT/bench/mutation_recheck.py train NAME ... --extra-only --extra tests/test_train.py   # new tests

A mutant's tests are the ones mutmut's stats run saw execute its function (mutants/mutmut-stats.json), fastest
first, then the --extra files whole (files whose association mutmut did not record, or new tests), with -x and
`-m "not slow"`: exit 1 is killed, 0 survived; any other code keeps the pytest output in <results>.logs/ (a
mutant that raises KeyboardInterrupt inside a test makes pytest exit 2: killed, but look). --skip deselects
expensive tests (a first pass; rerun the survivors without it). One JSON line per mutant goes to --results
(default mutation-recheck.jsonl); a rerun skips the names already there, so a killed recheck resumes.

The parent only imports: it never runs torch before forking (a fork after torch has run can hang in its thread
pools, the reason mutmut.sh uses mutmut's forkserver). Each child gets one torch thread and a CPU-time limit.
"""
import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.update(CI="true", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("module", help="the mutated module, e.g. train (elr/training/train.py)")
    ap.add_argument("names", nargs="*", help="mutant names (default: see --unchecked / --survivors)")
    ap.add_argument("--unchecked", action="store_true", help="the mutants without a mutmut result")
    ap.add_argument("--survivors", action="store_true", help="the mutants mutmut found surviving")
    ap.add_argument("--extra", nargs="*", default=[], help="test files run whole after the associated tests")
    ap.add_argument("--skip", nargs="*", default=[], help="test node ids to deselect")
    ap.add_argument("--extra-only", action="store_true",
                    help="run only the --extra files (confirming that tests added since kill known survivors)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--results", default="mutation-recheck.jsonl")
    ap.add_argument("--cpu-limit", type=int, default=600, help="CPU seconds a mutant's tests may take (a loop)")
    args = ap.parse_args()
    if args.extra_only and not args.extra:
        print("mutation_recheck: --extra-only needs --extra FILE ...", file=sys.stderr)
        return 2
    # elr/training/MODULE.py.meta or elr/analysis/MODULE.py.meta (elr/ is grouped by concept), or a flat checkout's
    meta_path = next(Path("elr").rglob(f"{args.module}.py.meta"), Path("elr") / f"{args.module}.py.meta")
    if not meta_path.exists() or not Path("mutmut-stats.json").exists():
        print(f"mutation_recheck: no {meta_path} or mutmut-stats.json here: run it in a kept clone's mutants/ "
              "directory (KEEP=1 bash bench/mutation.sh MODULE)", file=sys.stderr)
        return 2
    exit_codes = json.loads(meta_path.read_text())["exit_code_by_key"]
    names = list(args.names)
    names += [k for k, v in exit_codes.items() if (args.unchecked and v is None) or (args.survivors and v == 0)]
    if not names:
        print("mutation_recheck: no mutants: name some, or give --unchecked / --survivors", file=sys.stderr)
        return 2
    results = Path(args.results)
    done = {json.loads(line)["name"] for line in results.read_text().splitlines()} if results.exists() else set()
    names = [n for n in dict.fromkeys(names) if n not in done]

    stats = json.loads(Path("mutmut-stats.json").read_text())
    duration, tests_of = stats["duration_by_test"], stats["tests_by_mangled_function_name"]
    sys.path[:0] = [os.getcwd(), os.path.join(os.getcwd(), "tests")]
    import pytest  # noqa: E402  (after the environment and path are set)

    # collect once: the node ids that still exist (tests renamed or moved since the stats run are dropped), and
    # the test modules imported here, so that each child only collects
    class Collect:
        ids: set = set()

        def pytest_collection_modifyitems(self, items):
            Collect.ids |= {item.nodeid for item in items}

    # the collection's arguments and each run's
    pytest_args = ["--rootdir=.", "-q", "-p", "no:cacheprovider", "-m", "not slow"]
    files = sorted({t.split("::")[0] for ts in tests_of.values() for t in ts} | set(args.extra))
    with open(os.devnull, "w") as null:
        out, sys.stdout = sys.stdout, null
        try:
            pytest.main([*pytest_args, "--collect-only", *files], plugins=[Collect()])
        finally:
            sys.stdout = out
    skip = [a for t in args.skip for a in ("--deselect", t)]
    logs = results.with_suffix(".logs")
    logs.mkdir(exist_ok=True)

    def tests_for(name: str) -> list[str]:
        own = set() if args.extra_only else set(tests_of.get(name.rsplit("__mutmut_", 1)[0], ())) & Collect.ids
        return sorted(own - set(args.skip), key=lambda t: (duration.get(t, float("inf")), t)) + args.extra + skip

    print(f"mutation_recheck: {len(names)} mutants of elr/{args.module}.py, {args.jobs} at a time", flush=True)
    running, counts = {}, {}

    def reap() -> None:
        pid, status = os.wait()
        name, started, log = running.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        seconds = round(time.time() - started, 1)
        with results.open("a") as f:
            f.write(json.dumps({"name": name, "exit": code, "seconds": seconds}) + "\n")
        if code in (0, 1):
            log.unlink(missing_ok=True)
        verdict = {1: "killed", 0: "SURVIVED"}.get(code, f"exit {code}")
        counts[verdict] = counts.get(verdict, 0) + 1
        see = "" if code in (0, 1) else f" (see {log})"
        print(f"{verdict:>9}{see}  {name}  {seconds} s  [{sum(counts.values())}/{len(names)}]", flush=True)

    for name in names:
        while len(running) >= args.jobs:
            reap()
        log = logs / f"{name}.log"
        pid = os.fork()
        if pid == 0:    # the child: this mutant, its tests, its own output file
            try:
                os.environ["MUTANT_UNDER_TEST"] = name
                resource.setrlimit(resource.RLIMIT_CPU, (args.cpu_limit, args.cpu_limit + 20))
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                code = pytest.main([*pytest_args, "-x", *tests_for(name)])
                os._exit(int(code))
            except BaseException:
                os._exit(3)
        running[pid] = (name, time.time(), log)
    while running:
        reap()
    print("mutation_recheck: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
