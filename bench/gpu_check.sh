#!/usr/bin/env bash
# GPU check for one NVIDIA H200 (or any CUDA machine): the bench's GPU rows, a kill -9 / resume of a CUDA run,
# and the full study's projected hours. Installs nothing but this repository (pip install -e ., and only if
# `import elr` fails); every step has a timeout; the whole script stays under 8 minutes.
#
#     bash bench/gpu_check.sh                 # results in ./gpu-check (OUT=DIR to change)
#     DEVICE=cpu BENCH_MODELS=convnet_si:2 TRAIN_MODEL=convnet_si BENCH_EXTRA="--images 256 --repeats 1" \
#         bash bench/gpu_check.sh             # a dry run of the script's logic on a CPU (not a measurement)
set -euo pipefail

cd "$(dirname "$0")/.."                      # the repository root: python -m elr works from here
OUT=${OUT:-./gpu-check}
DEVICE=${DEVICE:-cuda}
BENCH_MODELS=${BENCH_MODELS:-resnet18}
TRAIN_MODEL=${TRAIN_MODEL:-resnet18}
BENCH_EXTRA=${BENCH_EXTRA:-}
PY=${PYTHON:-python}
mkdir -p "$OUT"
start=$SECONDS
DEADLINE=$((start + 470))                    # 8 minutes less a margin: every timeout below fits before it
step() { echo; echo "=== [$((SECONDS - start)) s] $*"; }
# budget WANT RESERVE: WANT seconds, or less so that RESERVE seconds stay for the later steps (at least 5)
budget() { local left=$((DEADLINE - SECONDS - $2)); if [ "$left" -lt "$1" ]; then echo $((left > 5 ? left : 5)); else echo "$1"; fi; }

step "devices"
if command -v nvidia-smi >/dev/null; then timeout 20 nvidia-smi -L; else echo "nvidia-smi: not found"; fi
if ! timeout 60 "$PY" -c "import elr" 2>/dev/null; then
    # offline machine: no build isolation (it would fetch setuptools), no dependencies (torch is already there)
    timeout "$(budget 120 300)" "$PY" -m pip install --no-deps --no-build-isolation -e .
fi
timeout 60 "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"

# Budget (s): bench <= 300, then train to the first checkpoint <= 60, resume <= 60, checks ~10: within DEADLINE.
step "bench: $BENCH_MODELS on $DEVICE, fp32 and bf16, loop / eager / fast / packed K = 1, 4, 16"
# the progress lines go to a log too, so a bench cut by its timeout still leaves what it measured
bench_rc=0
# shellcheck disable=SC2086  # BENCH_EXTRA is a list of flags
timeout -k 5 "$(budget 300 140)" "$PY" -m elr bench --device "$DEVICE" --models "$BENCH_MODELS" --precisions fp32,bf16 \
    --modes loop,eager,fast,packed --pack 1,4,16 --out "$OUT/bench_gpu.json" $BENCH_EXTRA \
    2> >(tee "$OUT/bench_progress.log" >&2) | tee "$OUT/bench_table.txt" || bench_rc=$?
echo "bench exit status: $bench_rc"

step "projected study hours from $OUT/bench_gpu.json"
if [ -f "$OUT/bench_gpu.json" ]; then
    timeout 30 "$PY" - "$OUT/bench_gpu.json" <<'EOF'
import json, sys
result = json.load(open(sys.argv[1]))
proj = result["projection"]
if "error" in proj:
    print("projection:", proj["error"])
    sys.exit(0)
for scale, p in proj["scales"].items():
    used = ", ".join(f"{m} {u['mode']} {u['images_per_s']:,.0f} images/s" for m, u in p["models"].items())
    line = f"{scale}: {p['measured_runs']}/{p['runs']} runs measured: {p['hours']:,.1f} h ({used or '-'})"
    if "packed" in p:
        line += f"; packed: {p['packed']['hours']:,.1f} h"
    if p["missing"]:
        line += "; not measured: " + ", ".join(p["missing"])
    print(line)
EOF
else
    echo "no bench JSON (bench exit status $bench_rc)"
fi

step "train $TRAIN_MODEL on $DEVICE for 3 epochs, kill -9 after its first checkpoint, resume"
RUN="$OUT/run"
rm -rf "$RUN"
TRAIN=("$PY" -m elr train --device "$DEVICE" --model "$TRAIN_MODEL" --data synthetic --subset 2000 --epochs 3
       --progress false --out "$RUN")
"${TRAIN[@]}" &
pid=$!
deadline=$((SECONDS + $(budget 60 75)))
until [ -f "$RUN/checkpoint.pt" ]; do
    if ! kill -0 "$pid" 2>/dev/null; then echo "FAIL: the run exited before its first checkpoint"; exit 1; fi
    if [ $SECONDS -ge $deadline ]; then kill -9 "$pid"; echo "FAIL: no checkpoint in time"; exit 1; fi
    sleep 0.02
done
kill -9 "$pid"
wait "$pid" && rc=0 || rc=$?
echo "killed with SIGKILL after the first checkpoint (exit status $rc); epochs logged by then:" \
     "$(wc -l < "$RUN/metrics.jsonl") lines"
if [ -f "$RUN/summary.json" ]; then
    echo "FAIL: the run had already finished when it was killed: the resume was not exercised"; exit 1
fi
timeout -k 5 "$(budget 60 15)" "${TRAIN[@]}"
timeout 30 "$PY" - "$RUN" <<'EOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
summary = json.loads((run / "summary.json").read_text())
epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
assert summary["finished"] is True, summary
assert epochs == [0, 1, 2, 3], f"metrics.jsonl epochs {epochs}, expected 0..3 exactly once"
print(f"OK: resumed run finished, epochs {epochs}, final test acc {summary['final_test_acc']:.3f}")
EOF

step "done in $((SECONDS - start)) s; results in $OUT"
[ "$bench_rc" -eq 0 ] || { echo "FAIL: bench exit status $bench_rc"; exit 1; }
