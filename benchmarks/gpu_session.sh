#!/usr/bin/env bash
# The prepared GPU session of issue 6, in one call of at most 9.6 minutes (device tool: timeout_s 600; the
# timeouts below sum to 570 s; run 6 took 288 s in all, gpu.py 180 s of its 300 (now a budget of 130 s: the Triton
# kernels' checks, then timings shrunk to it; unchanged since run 6, so last), gpu_module_gap.py about 20 s;
# gpu_routed.py now also checks and times layer norm, whose float64 and torch loops at T = 1024 take seconds a
# row; gpu_profile.py, run 6's launch costs and profiles, is not run again (nothing it measures changed: run it on
# its own); each command killed 5 s after its limit if it ignores the signal).
# Writes under $OUT (default ./gpu_out): gpu_cluster.md (the thread-block-cluster kernels checked against
# float64 cuDNN and the NumPy spec, forward, gradients and variants, and timed against cuDNN bf16/fp16;
# goal 3), gpu_user_path.md (the user's path through lstmkit.nn.LSTM, checks), gpu_results.md (every Triton
# kernel and variant checked against float64 references and timed against cuDNN, without a host
# synchronisation per kernel; the tuning measurements, the forward step ablation), gpu_ln_diag.md (the Triton
# layer-norm kernel's bf16 error step by step, beside torch's), gpu_module_gap.md (a routed module's forward
# against its layer, and the parts of its host time, each alone), and the logs. Needs python3 with torch and triton (the device
# image's); lstmkit is taken from src/, not installed.
# DRY=1 runs every script with --dry-run instead (CPU, tiny shapes, about 90 s; limits x3, no cluster budget):
# tests/test_gpu_scripts.py does, so a Python error or a wrong option here shows in CI, not in the few minutes a
# GPU is lent. (The dry runs need triton >= 3.9's interpreter: not a check to run on the GPU image, triton 3.6.)
set -u
OUT=${OUT:-gpu_out}
D=""
X=1
CB="--budget-s 90"
if [ -n "${DRY:-}" ] && [ "${DRY}" != 0 ]; then D="--dry-run"; X=3; CB=""; fi
mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1
T="timeout -k 5"
$T 10 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1
$T 20 python3 -c "import torch, triton; print('torch', torch.__version__, 'cudnn', torch.backends.cudnn.version(), 'triton', triton.__version__)" >> "$OUT/gpu.txt" 2>&1
$T $((120 * X)) python3 benchmarks/gpu_cluster.py $D --out "$OUT/gpu_cluster.md" $CB 2> "$OUT/cluster_log.txt" > /dev/null
echo "gpu_cluster.py: exit $?" >> "$OUT/gpu.txt"
$T $((60 * X)) python3 benchmarks/gpu_user_path.py $D --out "$OUT/gpu_user_path.md" 2> "$OUT/user_log.txt" > /dev/null
echo "gpu_user_path.py: exit $?" >> "$OUT/gpu.txt"
$T $((40 * X)) python3 benchmarks/gpu_ln_diag.py $D --out "$OUT/gpu_ln_diag.md" 2> "$OUT/ln_diag_log.txt" > /dev/null
echo "gpu_ln_diag.py: exit $?" >> "$OUT/gpu.txt"
$T $((120 * X)) python3 benchmarks/gpu_routed.py $D --out "$OUT/gpu_routed.md" 2> "$OUT/routed_log.txt" > /dev/null
echo "gpu_routed.py: exit $?" >> "$OUT/gpu.txt"
$T $((50 * X)) python3 benchmarks/gpu_module_gap.py $D --out "$OUT/gpu_module_gap.md" 2> "$OUT/gap_log.txt" > /dev/null
echo "gpu_module_gap.py: exit $?" >> "$OUT/gpu.txt"
$T $((180 * X)) python3 benchmarks/gpu.py $D --out "$OUT/gpu_results.md" --budget-s 130 2> "$OUT/gpu_log.txt" > /dev/null
echo "gpu.py: exit $?" >> "$OUT/gpu.txt"
cat "$OUT/gpu.txt"
tail -n 5 "$OUT/cluster_log.txt" "$OUT/gpu_log.txt"
