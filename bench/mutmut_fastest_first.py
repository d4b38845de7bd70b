"""`mutmut` with each mutant's tests run fastest first: python bench/mutmut_fastest_first.py run (in a clone).

mutmut 3 hands pytest a mutant's tests as a set, in arbitrary order, and stops at the first failure (-x). A killed
mutant therefore often waits for the multi-second subprocess tests (SIGKILL/SIGTERM resumes) before a 0.05 s test
that fails. Sorting by the stats run's call durations (mutants/mutmut-stats.json) puts the cheap tests first; the set
of tests, and so every verdict, is unchanged: a survivor still runs them all (no figure: no run compared
the two orders on the same mutants).
"""
import json
import sys
from pathlib import Path

import mutmut.runners.harness as harness
from mutmut.__main__ import cli

STATS = Path("mutants/mutmut-stats.json")   # written by mutmut's stats run, before any mutant is tested
_durations = {}
_regular_run = harness.PytestRunner._pytest_args_regular_run


def _fastest_first(self, tests):
    if not _durations and STATS.exists():
        _durations.update(json.loads(STATS.read_text())["duration_by_test"])
    # a test without a recorded duration goes last: it is unknown, not known to be cheap
    return _regular_run(self, sorted(tests, key=lambda t: (_durations.get(t, float("inf")), t)))


harness.PytestRunner._pytest_args_regular_run = _fastest_first
sys.exit(cli())
