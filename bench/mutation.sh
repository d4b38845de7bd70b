#!/usr/bin/env bash
# Mutation testing of the core modules with mutmut 3 (pip install mutmut): a benchmark-like figure, not a CI gate.
#
#     bash bench/mutation.sh                    # all eight core modules, one after the other
#     bash bench/mutation.sh models data        # some of them
#     KEEP=1 bash bench/mutation.sh stats       # keep each module's clone (mutmut results / show / browse there)
#     BUDGET=40 bash bench/mutation.sh runs     # stop each module after 40 minutes: a partial row, its
#                                               # unchecked mutants counted (train and runs need hours on 2 cores)
#
# For each module: a throwaway clone of the current commit (HEAD: commit first; uncommitted edits are not
# measured), its [tool.mutmut] section with that module and its test files (MAP below) added, `mutmut run`, then one
# line: mutants, killed, survived, "no tests" (mutants in a function that none of the selected tests executes),
# timeouts, wall time. The surviving mutants' names are written to $OUT/MODULE.survivors, mutmut's output to
# $OUT/MODULE.log (default OUT: ./mutation-out). Exits non-zero if mutmut itself fails (a failing clean test run,
# a crash), not for survivors.
#
# mutmut runs, per mutant, only the selected tests that executed the mutated function, so the test selection is
# the time lever: the map names the fast test files that exercise each module, and `-m "not slow"` leaves out
# the few multi-second training tests. CI=true loads the Hypothesis "ci" profile (derandomized): a mutant's
# verdict does not depend on the random examples drawn. process_isolation = "forkserver": each mutant's tests run
# in a process forked from a server that has only collected the tests, never run them, so no cache filled by an
# unmutated run (elr.training.data.synthetic_arrays, a test's lru_cache) hides a mutant, and torch never forks mid-run.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$PWD/mutation-out}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/elr-mutation.XXXXXX")}
MUTMUT=${MUTMUT:-mutmut}
ALL=(rule train runs models data detectors stats claims)
declare -A MAP=(
    [rule]="tests/test_rule.py"
    [train]="tests/test_train.py tests/test_faults.py tests/test_optim.py tests/test_progress.py tests/test_pack.py tests/test_cli.py"
    [runs]="tests/test_runs.py tests/test_faults.py tests/test_runlock.py tests/test_inspect.py tests/test_claims.py tests/test_train.py"
    [models]="tests/test_models.py"
    [data]="tests/test_data.py"
    [detectors]="tests/test_detectors.py tests/test_calibration.py"
    [stats]="tests/test_stats.py tests/test_calibration.py tests/test_detectors.py"
    [claims]="tests/test_claims.py"   # not test_report.py: its report builds (figures) cost ~75 s a surviving mutant;
                                      # test_claims pins the verdicts the report is built from (planted_verdicts.json)
)
MODULES=("$@")
[ ${#MODULES[@]} -eq 0 ] && MODULES=("${ALL[@]}")
for m in "${MODULES[@]}"; do
    [ -n "${MAP[$m]:-}" ] || { echo "unknown module '$m'; accepted: ${ALL[*]}" >&2; exit 2; }
done
command -v "$MUTMUT" >/dev/null || { echo "mutmut not found: pip install mutmut (3.x)" >&2; exit 2; }
mkdir -p "$OUT"
export CI=true
# one torch thread per test process: mutmut runs one worker per core, and torch's default of one thread per core
# in each oversubscribed them (several times slower, so that mutants on the training path ran into their timeouts)
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

toml_list() { local out="" x; for x in "$@"; do out+="${out:+, }\"$x\""; done; echo "[$out]"; }

ROWS=()
status=0
for m in "${MODULES[@]}"; do
    dir="$WORK/$m"
    rm -rf "$dir"
    git clone -q "$ROOT" "$dir" || { echo "$m: git clone failed" >&2; status=1; continue; }
    # the module's file: elr/training/MODULE.py or elr/analysis/MODULE.py (elr/ is grouped by concept)
    src=$(cd "$dir" && ls elr/*/"$m".py elr/"$m".py 2>/dev/null | head -1)
    [ -n "$src" ] || { echo "$m: no elr/*/$m.py in this checkout" >&2; status=1; continue; }
    # the checkout's [tool.mutmut] (the defaults in pyproject.toml) plus this module and its test files
    python - "$dir/pyproject.toml" "$src" "$(toml_list ${MAP[$m]})" <<'EOF' || { status=1; continue; }
import sys
path, module, tests = sys.argv[1:]
text = open(path).read()
if "\n[tool.mutmut]\n" not in text:
    sys.exit(f"{module}: {path} has no [tool.mutmut] section (a checkout older than bench/mutation.sh)")
open(path, "w").write(text.replace("\n[tool.mutmut]\n", f"""
[tool.mutmut]
only_mutate = ["{module}"]
pytest_add_cli_args_test_selection = {tests}
""", 1))
EOF
    echo "=== $m: mutating $src against ${MAP[$m]}"
    start=$SECONDS
    budget=()
    [ -n "${BUDGET:-}" ] && budget=(timeout --signal=INT --kill-after=120 "${BUDGET}m")
    # mutmut run, with each mutant's tests fastest first (same tests, same verdicts; see the script's docstring);
    # its whole output goes to $OUT/MODULE.log (a failing clean run prints pytest's report there), its tail here
    (cd "$dir" && "${budget[@]}" python "$ROOT/bench/mutmut_fastest_first.py" run 2>&1 | tee "$OUT/$m.log" \
         | tail -c 2000
     exit "${PIPESTATUS[0]}")
    rc=$?
    wall=$((SECONDS - start))
    # timeout's 124: the budget ran out; every mutant checked so far has its result on disk (mutmut writes each)
    # 137: mutmut did not stop within 2 minutes of the interrupt (it can hang in its fork server) and was killed;
    # the results are on disk all the same
    [ -n "${BUDGET:-}" ] && { [ $rc -eq 124 ] || { [ $rc -eq 137 ] && [ $wall -ge $((BUDGET * 60)) ]; }; } \
        && { echo "$m: budget of ${BUDGET} min spent: a partial row"; rc=0; }
    if [ $rc -ne 0 ] || ! (cd "$dir" && "$MUTMUT" export-cicd-stats >/dev/null \
                           && [ -f mutants/mutmut-cicd-stats.json ]); then
        echo "$m: mutmut failed (exit $rc) after ${wall} s; its output is in $OUT/$m.log, the clone kept in $dir" >&2
        ROWS+=("$(printf '%-10s %8s %8s %9s %9s %9s %8s' "$m" FAILED - - - - "$((wall / 60))m$((wall % 60))s")")
        status=1
        continue
    fi
    (cd "$dir" && "$MUTMUT" results 2>/dev/null | grep -E ': (survived|no tests|timeout|suspicious|segfault)$' \
        | sed 's/^ *//' >"$OUT/$m.survivors")
    row=$(python - "$dir/mutants/mutmut-cicd-stats.json" "$m" "$wall" <<'EOF'
import json, sys
s, m, wall = json.load(open(sys.argv[1])), sys.argv[2], int(sys.argv[3])
other = s["suspicious"] + s["segfault"] + s["skipped"] + s["check_was_interrupted_by_user"]
unchecked = s["total"] - s["killed"] - s["survived"] - s["no_tests"] - s["timeout"] - other
print(f"{m:<10} {s['total']:>8} {s['killed']:>8} {s['survived']:>9} {s['no_tests']:>9} {s['timeout']:>9} "
      f"{wall // 60:>5}m{wall % 60:02d}s" + (f"  (+{other} suspicious/segfault/skipped)" if other else "")
      + (f"  PARTIAL: {unchecked} not checked" if unchecked else ""))
EOF
)
    echo "$row"
    ROWS+=("$row")
    [ -n "${KEEP:-}" ] || rm -rf "$dir"
done

echo
printf '%-10s %8s %8s %9s %9s %9s %8s\n' module mutants killed survived "no tests" timeouts wall
for r in "${ROWS[@]}"; do echo "$r"; done
echo "survivors' names: $OUT/<module>.survivors (mutmut show NAME in a clone run with KEEP=1)"
[ -n "${KEEP:-}" ] && echo "clones kept under $WORK" || rmdir "$WORK" 2>/dev/null
exit $status
