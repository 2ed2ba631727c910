#!/usr/bin/env bash
# Serving and training speed on one CUDA GPU, fp32 against bf16. Run from the repository
# root on a machine with a GPU:
#
#   bash bench/gpu_check.sh            # both parts; results in bench/results/ and gpu-check.tar.gz
#   bash bench/gpu_check.sh serving    # or only one part: serving or training
#   OUT=/some/folder bash bench/gpu_check.sh
#
# NOTE: not yet run on a GPU. Each part is estimated at 4 to 5 minutes, most of it
# starting servers and worker processes.
#
# The machine needs torch with CUDA and this project's other dependencies. Where it
# cannot install from an index, download the missing wheels on a machine that can and
# put them in .whl/ beside this repository's files, for example for Python 3.12:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl \
#     fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv \
#     annotated-types typing-inspection uvicorn faiss-cpu python-multipart
#
# This script installs anything in .whl/ into a private folder before it starts.
set -euo pipefail

part="${1:-all}"
case "$part" in
    all | serving | training) ;;
    *)
        echo "usage: $0 [all|serving|training]" >&2
        exit 2
        ;;
esac
out="${OUT:-bench/results}"
mkdir -p "$out"
python="${PYTHON:-python3}"

if compgen -G ".whl/*.whl" > /dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu-check-site .whl/*.whl
    export PYTHONPATH="/tmp/gpu-check-site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"  # the packages run from this checkout, installed or not
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.csv"
"$python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'; print(torch.__version__, torch.cuda.get_device_name(0))"

started=$(date +%s)
if [ "$part" != training ]; then
    for dtype in float32 bfloat16; do
        "$python" -m bench.bench_serving --dtype "$dtype" --model glyphs-simclr --text --seconds 3 \
            --concurrency 1 32 128 --items-per-request 8 --raw-seconds 1 2>&1 | tee -a "$out/gpu-check.log"
    done
fi
if [ "$part" != serving ]; then
    for precision in fp32 bf16; do
        "$python" -m bench.bench_methods --device cuda --precision "$precision" --batch-size 256 --steps 20 \
            --max-seconds 5 2>&1 | tee -a "$out/gpu-check.log"
    done
fi
echo "gpu check took $(( $(date +%s) - started )) s" | tee -a "$out/gpu-check.log"

# one archive, because some runners bring back only a few files
if [ "$(realpath "$out")" != "$(realpath bench/results)" ]; then
    cp -r bench/results/. "$out"/
fi
tar -czf /tmp/gpu-check.tar.gz -C "$out" --exclude gpu-check.tar.gz .
mv /tmp/gpu-check.tar.gz "$out/"
