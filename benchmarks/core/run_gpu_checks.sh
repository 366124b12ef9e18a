#!/usr/bin/env bash
# Everything to run on a CUDA machine, in one go, from the repository root:
#   1. the `gpu` tests of every kit (tests/*/test_gpu.py: train bf16/fp16, eval, export,
#      predict on CUDA vs CPU), log in $OUT/gpu_tests.log;
#   2. the training benchmark, our Trainer vs a plain PyTorch loop
#      (benchmarks/core/bench_train_gpu.py), in $OUT/bench_train_gpu.json and .log.
# It needs no venv: the machine's python3 with torch, transformers, onnx, onnxruntime, pytest
# and httpx, plus the wheels in .whl/ (installed into $SITE). Budget: about 7 minutes; each
# part has a time limit and the script prints how long each took.
#
#   OUT=/tmp/gpu-checks bash benchmarks/core/run_gpu_checks.sh
#
# Without CUDA (a dry run of the script) the gpu tests skip and the benchmark runs tiny
# models on the CPU for a few steps.
set -u

OUT=${OUT:-/tmp/e2ekit-gpu-checks}
SITE=${SITE:-/tmp/site}
PY=${PYTHON:-python3}
PYTEST_LIMIT=${PYTEST_LIMIT:-210}  # seconds, all gpu tests together
BENCH_LIMIT=${BENCH_LIMIT:-180}    # seconds, the whole benchmark
mkdir -p "$OUT"
: >"$OUT/timings.txt"
START=$(date +%s)
PART_START=$START

part() {  # close the previous part (its time), open the next
    local now
    now=$(date +%s)
    if [ -n "${PART:-}" ]; then
        echo "== $PART: $((now - PART_START)) s" | tee -a "$OUT/timings.txt"
    fi
    PART=${1:-}
    PART_START=$now
    if [ -n "$PART" ]; then
        echo
        echo "== $PART"
    fi
}

part "dependencies from .whl/"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .whl/*.whl || echo "warning: installing .whl/*.whl failed"
else
    echo "no .whl/ folder: using the packages already installed"
fi
export PYTHONPATH="$PWD/src:$SITE"
export E2EKIT_NO_PROGRESS=1
"$PY" - <<'EOF'
import importlib

required = ["torch", "torchvision", "numpy", "yaml", "PIL", "pydantic", "onnx", "onnxruntime",
            "transformers", "tokenizers", "fastapi", "starlette", "uvicorn", "prometheus_client",
            "tqdm", "pyarrow", "pycocotools", "seqeval", "pytest", "httpx"]
optional = ["tensorboard", "pytest_timeout"]
for kind, names in (("required", required), ("optional", optional)):
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # an import may fail with more than ImportError
            missing.append(f"{name} ({type(exc).__name__}: {exc})")
    print(f"{kind} imports: " + ("all present" if not missing else "MISSING " + "; ".join(missing)))
EOF

part "machine"
if command -v nvidia-smi >/dev/null; then nvidia-smi -L; else echo "nvidia-smi: not found"; fi
"$PY" - <<'EOF'
import platform

import onnxruntime
import torch

print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA build "
      f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, sm {p.major}.{p.minor}")
else:
    print("torch sees no CUDA device: the gpu tests will skip")
print(f"onnxruntime {onnxruntime.__version__}, providers {onnxruntime.get_available_providers()}")
EOF
HAS_CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)

part "gpu tests"
# Only the files that hold gpu tests: collecting the whole suite would import modules this
# machine may lack (e.g. scikit-learn), and one collection error stops pytest before any test.
mapfile -t GPU_TESTS < <({
    ls tests/*/test_gpu.py
    grep -rl --include='test_*.py' 'mark\.gpu' tests
} | sort -u)
echo "files: ${GPU_TESTS[*]}"
TIMEOUT_OPT=()
if "$PY" -c "import pytest_timeout" 2>/dev/null; then TIMEOUT_OPT=(--timeout 150); fi
timeout -k 10 "$PYTEST_LIMIT" "$PY" -m pytest -v -p no:cacheprovider -m gpu \
    "${TIMEOUT_OPT[@]}" --durations=15 "${GPU_TESTS[@]}" 2>&1 | tee "$OUT/gpu_tests.log"
PYTEST_RC=${PIPESTATUS[0]}
echo "gpu tests exit code: $PYTEST_RC (124: stopped at the ${PYTEST_LIMIT} s limit)"

part "training benchmark"
if [ "$HAS_CUDA" = 1 ]; then
    BENCH_ARGS=(--rounds 2 --warmup 10 --steps seg=30,det=40,text=60)
else
    BENCH_ARGS=(--rounds 2 --warmup 2 --steps 3)  # dry run: --small sizes on the CPU
fi
timeout -k 10 "$BENCH_LIMIT" "$PY" benchmarks/core/bench_train_gpu.py "${BENCH_ARGS[@]}" \
    --out "$OUT/bench_train_gpu.json" 2>&1 | tee "$OUT/bench_train_gpu.log"
BENCH_RC=${PIPESTATUS[0]}
echo "benchmark exit code: $BENCH_RC (124: stopped at the ${BENCH_LIMIT} s limit; the JSON"
echo "then holds the workloads finished before, with \"complete\": false)"

part
echo "== total: $(($(date +%s) - START)) s; results in $OUT" | tee -a "$OUT/timings.txt"
if [ "$PYTEST_RC" -ne 0 ] || [ "$BENCH_RC" -ne 0 ]; then exit 1; fi
