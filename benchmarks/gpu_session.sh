#!/usr/bin/env bash
# One GPU session, prepared: correctness of the CUDA paths (triton first), then the scan and training-step
# figures of issue 28, every stage under its own time limit so that the whole run ends in about 8 minutes.
#
#     OUT=/some/folder bash benchmarks/gpu_session.sh      # from the repository root, on a machine with CUDA
#
# Needs torch with CUDA and the library's dependencies; triton, mamba_ssm, mambapy and causal-conv1d are
# used when importable (no network needed). Writes under $OUT: env.txt (device, driver, torch / triton /
# CUDA versions, which optional packages import), one log per stage, scan.json, and summary.txt (exit code
# and seconds per stage; 124 = the stage hit its time limit). Figures go to benchmarks/README.md by hand.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_session_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET MAMBAMIXER_SCAN_BACKEND
: >"$OUT/summary.txt"

stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.txt, record rc and time
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    echo "== $name (limit ${limit}s): $*" | tee -a "$OUT/summary.txt"
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.txt" 2>&1
    local rc=$?
    echo "   rc $rc, $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
    tail -n 3 "$OUT/$name.txt"
}

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
    nvcc --version 2>&1 | tail -n 2
    "$PY" - <<'EOF'
import importlib, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA (torch)", torch.version.cuda)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO CUDA DEVICE")
for name in ("triton", "mamba_ssm", "mambapy", "causal_conv1d", "numba", "einops"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "importable"))
    except Exception as err:  # missing, or a broken build
        print(name, "NOT importable:", type(err).__name__, str(err)[:200])
from mambamixer.ops import available_backends
print("scan backends on cuda:", available_backends("cuda"))
EOF
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

SHAPES="8,256,384,16 32,96,128,16 4,2048,256,16 64,1024,768,16"
stage test_cuda_scan 120 "$PY" -m pytest -q -rs tests/test_cuda.py -k "scan or triton" -p no:cacheprovider
stage scan 90 "$PY" benchmarks/scan.py --device cuda --no-reference --repeats 10 --shapes $SHAPES \
    --json "$OUT/scan.json"
stage train_vim2_tiny 100 "$PY" benchmarks/train_step.py --device cuda --bf16 --model vim2_tiny --image-size 224 \
    --in-chans 3 --batch 32 --steps 2 --rounds 2 --backends $("$PY" -c \
    "from mambamixer.ops import available_backends; print(*available_backends('cuda')[:-1])")
stage train_tsm2_512 50 "$PY" benchmarks/train_step.py --device cuda --bf16 --model tsm2_512:horizon=96,n_vars=7 \
    --batch 32 --steps 5 --rounds 3 --backends $("$PY" -c \
    "from mambamixer.ops import available_backends; print(*available_backends('cuda')[:-1])")
CONVS="library conv1d"
"$PY" -c "import causal_conv1d" 2>/dev/null && CONVS="$CONVS causal_conv1d_fn"
stage conv_tsm2_512 40 "$PY" benchmarks/train_step.py --device cuda --bf16 --model tsm2_512:horizon=96,n_vars=7 \
    --batch 32 --steps 5 --rounds 3 --convs $CONVS
stage test_cuda_rest 80 "$PY" -m pytest -q -rs tests/test_cuda.py -k "not scan and not triton" -p no:cacheprovider
echo "done in $SECONDS s; logs in $OUT" | tee -a "$OUT/summary.txt"
