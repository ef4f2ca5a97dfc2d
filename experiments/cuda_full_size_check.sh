#!/usr/bin/env bash
# Full-size check on a CUDA machine, in one sitting:
#   1. defense throughput on the GPU (`bench defenses --device cuda`, 1,024 CIFAR-10 test images),
#   2. attack throughput on the GPU (`bench attacks`: PGD steps/s on ResNet-18, BPDA + EOT rows),
#   3. SPLIC thesis Table 4.3 (gray-box) at full size: ResNet-18 trained on all 50,000 CIFAR-10
#      (JPEG copy) training images with the fast_cifar schedule, every cell on all 10,000 test images,
#   4. the same defenses under the adaptive attack suite on the first 500 test images,
#   5. every cell's metrics and timings from the MLflow store.
# Each step has its own time limit (seconds, from the environment) so that one slow step cannot
# take the others' time; a step stopped by its limit closes its MLflow runs KILLED and the next
# step goes on. Everything a step prints lands in OUTDIR. Extra arguments go to both tables (Hydra
# overrides, or options such as --limit). A CPU smoke test:
#   CHECK_DEVICE=cpu experiments/cuda_full_size_check.sh /tmp/check train.epochs=1 dataset.train_limit=256 --limit 8
#
#   experiments/cuda_full_size_check.sh OUTDIR [table overrides...]
set -u
out=${1:?usage: experiments/cuda_full_size_check.sh OUTDIR [table overrides...]}
shift
mkdir -p "$out"
device=${CHECK_DEVICE:-cuda}
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlflow.db} PYTHONUNBUFFERED=1
spec=experiments/000_table4_3_gray_box_cifar10.yaml
full_size=(dataset=cifar10_jpeg dataset.limit=null train=fast_cifar)

step() {  # step NAME SECONDS COMMAND...: run COMMAND under a time limit, its output in OUTDIR/NAME.txt
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout --signal=TERM --kill-after=20 "$limit" "$@" > "$out/$name.txt" 2>&1
    local rc=$?
    echo "$name: rc=$rc, $((SECONDS - start)) s (limit $limit s)" | tee -a "$out/steps.txt"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} > "$out/machine.txt"

step bench_defenses "${LIMIT_BENCH_DEFENSES:-60}" defense-cli bench defenses --device "$device" --images 1024 \
    --no-reference -d jpeg -d tvm -d menet_usvt -d menet_softimpute -d menet -d splic -d quilting \
    -d pixel_deflection -d lrc_hsp
step bench_attacks "${LIMIT_BENCH_ATTACKS:-45}" defense-cli bench attacks --device "$device" -m resnet18 \
    --images 512 --steps 20 --eot-defense splic --eot-defense menet --eot-samples 10 --eot-images 128 --eot-steps 5
step table_4_3 "${LIMIT_TABLE:-240}" defense-cli table "$spec" "${full_size[@]}" "$@"
step table_4_3_adaptive "${LIMIT_ADAPTIVE:-100}" defense-cli table "$spec" --adaptive --limit 500 "${full_size[@]}" "$@"
find experiments/results/000_table4_3_gray_box_cifar10 -name table.md -newer "$out/machine.txt" \
    -exec sh -c 'for f; do echo "== $f"; cat "$f"; done' sh {} + > "$out/tables.md"

python3 - > "$out/cells.txt" 2>&1 <<'EOF'
"""Every run in the store: its name, status, wall time and the metrics that say what it cost."""
import mlflow

runs = mlflow.search_runs(search_all_experiments=True)
for _, run in runs.sort_values("start_time").iterrows():
    wall = (run["end_time"] - run["start_time"]).total_seconds() if run["end_time"] == run["end_time"] else None
    print(run["tags.mlflow.runName"], run["status"], f"wall {wall} s")
    for column in sorted(c for c in runs.columns if c.startswith("metrics.")):
        name = column.removeprefix("metrics.")
        if run[column] == run[column] and any(k in name for k in ("accuracy", "seconds", "destruction", "images")):
            print(f"    {name} {run[column]:.4f}")
EOF
