#!/usr/bin/env bash
# Issue 20's GPU measurements in one call: the float8 kernels alone, then LipDub clips with each kernel
# variant side by side (speed and drift against the first), then the 4x3 batch with the chosen kernels.
#
#   bash bench/device_fp8.sh OUT_DIR [PART...]     PART: kernels clip1080 clip720 batch720 batch1080 (default: all)
#
# Needs a CUDA GPU with float8 units and, importable, dubflow, diffusers 0.42.1 and the `gpu` extra
# (torchao, nvidia-cudnn-frontend). Logs and JSON go to OUT_DIR (copy them to bench/results/).
set -euo pipefail
out=$1
shift
parts=("${@:-kernels clip1080 clip720 batch720 batch1080}")
parts=(${parts[*]})
here=$(dirname "$0")
export PYTHONUNBUFFERED=1
variants=bf16+compile,fp8lin+compile,fp8attn+compile,fp8lin+fp8attn+compile

run() {  # name, command...: tee'd log; a failing part leaves the next ones to run
    local name=$1
    shift
    "$@" 2>&1 | tee "$out/$name.log" || echo "$name FAILED ($?)"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
for part in "${parts[@]}"; do
    case $part in
        kernels) run fp8_kernels python3 "$here/fp8_kernels.py" --tokens 65280,16320 --repeats 10 \
                     --json "$out/fp8_kernels.json" ;;
        clip1080) run lipdub_gpu_1080 python3 "$here/lipdub_gpu.py" --sizes 1920x1080 --repeats 2 \
                      --variants "$variants" --json "$out/lipdub_gpu_1080.json" ;;
        clip720) run lipdub_gpu_720 python3 "$here/lipdub_gpu.py" --sizes 1280x720 --repeats 2 \
                     --variants bf16+compile,fp8lin+fp8attn+compile --json "$out/lipdub_gpu_720.json" ;;
        batch720|batch1080)
            size=$([ "$part" = batch720 ] && echo 1280x720 || echo 1920x1080)
            run "lipdub_$part" python3 "$here/lipdub_batch.py" --size "$size" --fresh-process-clips 0 --warm-up \
                --fp8-linears --attention cudnn_fp8 --compile --json "$out/lipdub_$part.json" ;;
        *) echo "unknown part $part" >&2; exit 2 ;;
    esac
done
