#!/usr/bin/env bash
# The GPU check of issue #39, as one prepared script: install, device info, correctness rows (every registered
# distillation method with AMP off/on, fp16, torch.compile, --nproc 1, export of a GPU-trained run) and training
# speed (benchmarks/train_speed.py), written under $OUT. Sized for under 8 minutes on one H100.
#
#   OUT=/path bash benchmarks/gpu_check.sh                                  # on the GPU machine
#   OUT=/tmp/gpucheck bash benchmarks/gpu_check.sh --device cpu --tiny --skip-install   # CPU rehearsal (~4 min)
#   bash benchmarks/gpu_check.sh --fetch-wheels   # on a machine with a network, before the GPU session
#
# On the device tool (it sets $OUT): command "bash benchmarks/gpu_check.sh", carry ["benchmarks/wheels"],
# timeout_s 540 (the steps stop at GPU_CHECK_BUDGET, 450 s; the machine's start comes on top).
#
# Flags (or environment): --device cuda|cpu (GPU_CHECK_DEVICE, default cuda), --tiny (GPU_CHECK_TINY=1: tiny
# data, models and step counts), --skip-install (GPU_CHECK_SKIP_INSTALL=1: use .venv or $PYTHON as it is),
# GPU_CHECK_BUDGET (seconds; steps that would start after it are skipped), GPU_CHECK_KEEP_WORK=1 (keep the run
# dirs, in a temporary folder named at the start).
#
# Install: `uv sync --locked --all-extras --inexact` where uv is; else (the GPU machine: a python3 with torch and
# no network) the wheels in benchmarks/wheels, then `pip install --no-index --no-deps -e .`, else the package on
# PYTHONPATH. That image lacks torch-pruning, uvicorn and httptools, which edgekd imports: --fetch-wheels
# downloads them (versions from uv.lock) into benchmarks/wheels (git-ignored); the device call must carry
# "benchmarks/wheels".
#
# $OUT ends with gpu_check.md (the summary: a pass/fail table and the speed tables), gpu_check.log (this
# script's output) and logs.tar.gz (a log per step): three files, as a device call brings back at most eight.
# Exit code: 1 if any row failed (a speed run that crashed included; every row runs all the same), else 0.
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 2
DEVICE=${GPU_CHECK_DEVICE:-cuda}
TINY=${GPU_CHECK_TINY:-0}
SKIP_INSTALL=${GPU_CHECK_SKIP_INSTALL:-0}
FETCH_WHEELS=0
while [ $# -gt 0 ]; do
    case $1 in
        --device) DEVICE=$2; shift ;;
        --device=*) DEVICE=${1#*=} ;;
        --tiny) TINY=1 ;;
        --skip-install) SKIP_INSTALL=1 ;;
        --fetch-wheels) FETCH_WHEELS=1 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

lock_version() {  # the version uv.lock pins for package $1
    awk -v name="name = \"$1\"" '$0 == name { getline; gsub(/"/, "", $3); print $3; exit }' uv.lock
}

if [ "$FETCH_WHEELS" = 1 ]; then
    pkgs=()
    for p in torch-pruning uvicorn httptools; do pkgs+=("$p==$(lock_version "$p")"); done
    exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d benchmarks/wheels "${pkgs[@]}"
fi

# ---------------------------------------------------------------------------------------------- sizes
if [ "$TINY" = 1 ]; then  # a rehearsal of every step in minutes on 2 CPU cores
    DATA="{classes: 4, size: 16, count: 64, val_count: 32}"; BATCH=16; EPOCHS=2; WORKERS=1
    TEACHER=resnet8; STUDENT=resnet8; ACC_TOL=0.25; BUDGET=${GPU_CHECK_BUDGET:-900}
    SPEED_ARGS="--steps 2 --rounds 1"
    SPEED_RUNS=(
        "32px-b64|--teacher resnet8 --student resnet8 --batch 16"
        "32px-b256|--teacher resnet8 --student resnet8 --batch 32 --workers 1 --rows ce,kd,drkd,r2kd"
        "224px-b64|--teacher tv/resnet50 --student tv/mobilenet_v3_small --batch 8 --rows kd,drkd,r2kd"
    )
else  # one H100: about 200 steps a row; the speed runs at the sizes the issue names
    DATA="{classes: 10, size: 32, count: 6400, val_count: 1000}"; BATCH=64; EPOCHS=2; WORKERS=4
    TEACHER=resnet32x4; STUDENT=resnet8x4; ACC_TOL=0.06; BUDGET=${GPU_CHECK_BUDGET:-450}
    SPEED_ARGS="--rounds 3"
    SPEED_RUNS=(
        "32px-b64|--teacher resnet32x4 --student resnet8x4 --batch 64 --steps 50 --workers 6"
        "32px-b256|--teacher resnet32x4 --student resnet8x4 --batch 256 --steps 20 --workers 8 --rows ce,kd,drkd,r2kd"
        "224px-b64|--teacher tv/resnet50 --student tv/mobilenet_v3_small --image-size 224 --batch 64 --steps 20
         --workers 12 --rows kd,drkd,r2kd"
    )
fi
AMP_ON=auto  # bf16 on an H100; on CPU auto means off, so the rehearsal asks for bf16 itself
[ "$DEVICE" = cpu ] && AMP_ON=bf16

OUT=${OUT:-$REPO/runs/gpu_check}
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
rm -rf "$OUT/logs" "$OUT/logs.tar.gz" "$OUT/gpu_check.md" "$OUT/gpu_check.log"
mkdir -p "$OUT/logs"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
ROWS=$WORK/rows.tsv  # name, PASS/FAIL/SKIP, seconds, detail
: >"$ROWS"
export PYTHONUNBUFFERED=1 COLUMNS=160  # COLUMNS: rich prints the CLI's lines unwrapped
START=$SECONDS
STEP=0

say() { echo "$*" | tee -a "$OUT/gpu_check.log"; }
FAILED_LOGS=()
row() {  # NAME PASS|FAIL|SKIP SECONDS DETAIL; a failed row's log is quoted in the summary
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4//$'\t'/ }" >>"$ROWS"
    if [ "$2" = FAIL ]; then FAILED_LOGS+=("$LOG"); fi
}

# step NAME TIMEOUT COMMAND...: run it with its output in logs/NN-NAME.log, within the time left of the budget.
# Returns the command's status (124 when it ran out of time, 125 when skipped for lack of time).
step() {
    local name=$1 limit=$2; shift 2
    STEP=$((STEP + 1))
    LOG=$OUT/logs/$(printf '%02d' "$STEP")-$name.log
    local left=$((BUDGET - (SECONDS - START)))
    if [ "$left" -lt 20 ]; then
        say "-- $name: skipped, ${left} s of the ${BUDGET} s budget left"
        echo "skipped: the ${BUDGET} s budget was spent" >"$LOG"
        STEP_SECONDS=0
        return 125
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    say "-- $name (limit ${limit} s) ..."
    local t0=$SECONDS rc=0
    timeout -k 10 "$limit" "$@" >"$LOG" 2>&1 || rc=$?
    STEP_SECONDS=$((SECONDS - t0))
    say "   $name: exit $rc in ${STEP_SECONDS} s (elapsed $((SECONDS - START)) s)"
    return $rc
}

last_line() { grep -v '^\s*$' "$1" | tail -n 1 | cut -c1-250; }

# ---------------------------------------------------------------------------------------------- install
PY=${PYTHON:-python3}
[ -x "$REPO/.venv/bin/python" ] && PY=$REPO/.venv/bin/python
install() {  # sets PY, PYTHONPATH and INSTALLED (how)
    INSTALLED="uv sync --locked --all-extras --inexact"
    if command -v uv >/dev/null && uv sync --locked --all-extras --inexact; then
        PY=$REPO/.venv/bin/python
        return
    fi
    PY=${PYTHON:-python3}
    if compgen -G "benchmarks/wheels/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" benchmarks/wheels/*.whl \
            && export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    INSTALLED="$PY -m pip install --no-index --no-deps -e ."
    if ! "$PY" -m pip install --no-index --no-deps --no-build-isolation -e .; then
        INSTALLED="edgekd on PYTHONPATH ($PY; pip install -e . failed)"
        echo "$INSTALLED"
        mkdir -p "$WORK/src/edgekd"
        ln -s "$REPO"/edgekd/* "$WORK/src/edgekd/"
        ln -s "$REPO/export" "$WORK/src/edgekd/export"
        ln -s "$REPO/serve" "$WORK/src/edgekd/serve"
        export PYTHONPATH=$WORK/src${PYTHONPATH:+:$PYTHONPATH}
    fi
}
say "== edgekd GPU check: device $DEVICE, $([ "$TINY" = 1 ] && echo tiny || echo full) sizes, budget ${BUDGET} s"
say "   out $OUT, work $WORK"
if [ "$SKIP_INSTALL" = 1 ]; then
    row "install" SKIP 0 "skipped (--skip-install); python $PY"
else
    STEP=$((STEP + 1)); LOG=$OUT/logs/$(printf '%02d' "$STEP")-install.log; t0=$SECONDS
    say "-- install ..."
    if install >"$LOG" 2>&1; then  # in this shell: it sets PY and PYTHONPATH
        row "install" PASS $((SECONDS - t0)) "$INSTALLED"
    else
        row "install" FAIL $((SECONDS - t0)) "$INSTALLED: $(last_line "$LOG")"
    fi
    say "   install: $INSTALLED, $((SECONDS - t0)) s"
fi
IMPORTS="import torch, torchvision, torch_pruning, onnx, onnxruntime, edgekd.cli, edgekd.train, edgekd.export"
if step imports 120 "$PY" -c "$IMPORTS; print(torch.__version__, edgekd.__file__)"; then
    row "edgekd and its training imports load" PASS "$STEP_SECONDS" "$(last_line "$LOG")"
else
    row "edgekd and its training imports load" FAIL "$STEP_SECONDS" "$(last_line "$LOG")"
fi

# ---------------------------------------------------------------------------------------------- device
DEVICE_PY='
import platform, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0).total_memory // 2**20, "MiB")
else:
    print("device", platform.processor() or platform.machine(), "(CPU)")'
step device 60 bash -c 'nvidia-smi || echo "nvidia-smi: not available"; "$0" -c "$1"' "$PY" "$DEVICE_PY"
DEVICE_NAME=$(grep '^device ' "$LOG" | tail -n 1 | cut -d' ' -f2-)
TORCH_LINE=$(grep '^torch ' "$LOG" | tail -n 1)

# ---------------------------------------------------------------------------------------------- correctness
CFG=$WORK/data.yaml
cat >"$CFG" <<EOF
data: synthetic
data_options: $DATA
batch_size: $BATCH
epochs: $EPOCHS
workers: $WORKERS
device: $DEVICE
EOF
EDGEKD=("$PY" -m edgekd)
T_DIR=$WORK/runs/teacher
if step teacher 180 "${EDGEKD[@]}" train -c "$CFG" --model "$TEACHER" --nproc 1 --amp "$AMP_ON" --out "$T_DIR" \
        && [ -f "$T_DIR/model.safetensors" ]; then
    row "train $TEACHER teacher (CLI, --nproc 1, amp=$AMP_ON)" PASS "$STEP_SECONDS" "$(last_line "$LOG")"
else
    row "train $TEACHER teacher (CLI, --nproc 1, amp=$AMP_ON)" FAIL "${STEP_SECONDS:-0}" "$(last_line "$LOG")"
fi

step methods 330 "$PY" benchmarks/gpu_correctness.py --config "$CFG" --teacher "$T_DIR" --student "$STUDENT" \
    --amp "$AMP_ON" --acc-tol "$ACC_TOL" --out "$WORK/runs/methods" --rows "$ROWS"
rc=$?  # 3: some rows failed, and say so themselves; anything else stopped the rows
if [ "$rc" -eq 3 ]; then
    FAILED_LOGS+=("$LOG")
elif [ "$rc" -ne 0 ]; then
    why=$([ "$rc" -eq 124 ] && echo "out of time" || echo "exit $rc")
    row "method rows (gpu_correctness.py)" FAIL "$STEP_SECONDS" "stopped ($why) after: $(last_line "$LOG")"
fi

KD_DIR=$WORK/runs/cli-kd
if step cli-distill 120 "${EDGEKD[@]}" distill -c "$CFG" --method kd --student "$STUDENT" --teacher "$T_DIR" \
        --nproc 1 --amp "$AMP_ON" --out "$KD_DIR"; then
    row "distill kd (CLI, --nproc 1, amp=$AMP_ON)" PASS "$STEP_SECONDS" "$(last_line "$LOG")"
else
    row "distill kd (CLI, --nproc 1, amp=$AMP_ON)" FAIL "${STEP_SECONDS:-0}" "$(last_line "$LOG")"
fi

# the export verifies every artifact on the held-out split against the PyTorch model: its table and manifest.json
# must show the ONNX FP32 model agreeing with it
EXPORT_DIR=$WORK/exports/cli-kd
CHECK_EXPORT='
import json, sys
m = json.load(open(sys.argv[1] + "/manifest.json"))
a, torch_acc = m["artifacts"]["onnx-fp32"], m["eval"]["torch_accuracy"]
agree, diff, acc = a["agreement"], a["max_abs_diff"], a["accuracy"]
print(f"onnx-fp32 vs PyTorch: agreement {agree:.4f}, max |logit diff| {diff:.2e}, top-1 {acc:.4f} ({torch_acc:.4f})")
sys.exit(0 if agree >= 0.99 and diff <= 1e-3 else 1)'
if step export 150 "${EDGEKD[@]}" export "$KD_DIR" --out "$EXPORT_DIR" --formats onnx \
        && grep -q 'onnx-fp32' "$LOG" && "$PY" -c "$CHECK_EXPORT" "$EXPORT_DIR" >>"$LOG" 2>&1; then
    row "export the GPU-trained kd run; ONNX agrees with PyTorch" PASS "$STEP_SECONDS" "$(last_line "$LOG")"
else
    row "export the GPU-trained kd run; ONNX agrees with PyTorch" FAIL "${STEP_SECONDS:-0}" "$(last_line "$LOG")"
fi

# ---------------------------------------------------------------------------------------------- speed
SPEED_MD=()
for spec in "${SPEED_RUNS[@]}"; do
    name=${spec%%|*}
    md=$WORK/train_speed-$name.md
    # shellcheck disable=SC2086  # the sizes are words on purpose
    step "speed-$name" 150 "$PY" benchmarks/train_speed.py ${spec#*|} $SPEED_ARGS --device "$DEVICE" --out "$md"
    case $? in
        0) row "speed $name runs" PASS "$STEP_SECONDS" "$(grep -m1 'edgekd kd / reference kd' "$md")"
           SPEED_MD+=("$md") ;;
        125) row "speed $name runs" SKIP 0 "skipped: the ${BUDGET} s budget was spent" ;;
        *) row "speed $name runs" FAIL "$STEP_SECONDS" "$(last_line "$LOG")" ;;
    esac
done

# ---------------------------------------------------------------------------------------------- summary
COMMIT=$(git rev-parse --short HEAD 2>/dev/null) || COMMIT="(no git)"
[ "$COMMIT" != "(no git)" ] && ! git diff --quiet HEAD 2>/dev/null && COMMIT="$COMMIT + uncommitted changes"
FAILED=$(awk -F'\t' '$2 == "FAIL"' "$ROWS" | wc -l)
PASSED=$(awk -F'\t' '$2 == "PASS"' "$ROWS" | wc -l)
{
    echo "# edgekd GPU check (issue #39)"
    echo
    echo "Device: ${DEVICE_NAME:-unknown} (--device $DEVICE); ${TORCH_LINE:-torch: unknown}; edgekd $COMMIT;" \
         "$([ "$TINY" = 1 ] && echo 'tiny rehearsal sizes' || echo 'full sizes'); $(date -u '+%Y-%m-%d %H:%M UTC');" \
         "$((SECONDS - START)) s in all."
    echo
    echo "## Correctness: $PASSED passed, $FAILED failed"
    echo
    echo "Teacher $TEACHER, student $STUDENT; synthetic $DATA, batch $BATCH, $EPOCHS epochs; AMP rows: $AMP_ON;" \
         "an AMP or compiled row passes within $ACC_TOL of its FP32 eager accuracy (seed 0), or within twice the" \
         "gap between seeds 0 and 1 of FP32 eager if that is larger."
    echo
    echo "| row | result | s | detail |"
    echo "|---|---|---:|---|"
    awk -F'\t' '{ gsub(/\|/, "\\|", $4); printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4 }' "$ROWS"
    echo
    echo "## Speed"
    for md in "${SPEED_MD[@]}"; do
        echo
        sed 's/^# /### /' "$md"
    done
    if [ "$FAILED" -gt 0 ]; then
        echo
        echo "## Logs of failed steps (last lines; all in logs.tar.gz)"
        printf '%s\n' "${FAILED_LOGS[@]}" | sort -u | while read -r log; do
            echo
            echo "### $(basename "$log")"
            echo '```'
            grep -v '^\s*$' "$log" | tail -n 15 | cut -c1-200
            echo '```'
        done
    fi
} >"$OUT/gpu_check.md"
tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$OUT/logs"
[ "${GPU_CHECK_KEEP_WORK:-0}" = 1 ] || rm -rf "$WORK"
say ""
tee -a "$OUT/gpu_check.log" <"$OUT/gpu_check.md"
say ""
say "== $PASSED passed, $FAILED failed in $((SECONDS - START)) s; summary $OUT/gpu_check.md"
[ "$FAILED" -eq 0 ]
