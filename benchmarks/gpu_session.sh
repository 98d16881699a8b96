#!/usr/bin/env bash
# The prepared GPU session of issue 6, in one call of at most 9.4 minutes (device tool: timeout_s 600).
# Writes under $OUT (default ./gpu_out): gpu_user_path.md (the user's path through lstmkit.nn.LSTM, checks),
# gpu_results.md (every kernel and variant checked against float64 references and timed against cuDNN, the
# tuning measurements, the forward step ablation), gpu_barrier.md (the synchronisation alone), and the logs. Needs python3 with torch and triton
# (the device image's); lstmkit is taken from src/, not installed.
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'cudnn', torch.backends.cudnn.version(), 'triton', triton.__version__)" >> "$OUT/gpu.txt" 2>&1
timeout 120 python3 benchmarks/gpu_user_path.py --out "$OUT/gpu_user_path.md" 2> "$OUT/user_log.txt" > /dev/null
echo "gpu_user_path.py: exit $?" >> "$OUT/gpu.txt"
timeout 400 python3 benchmarks/gpu.py --out "$OUT/gpu_results.md" --budget-s 350 2> "$OUT/gpu_log.txt" > /dev/null
echo "gpu.py: exit $?" >> "$OUT/gpu.txt"
timeout 40 python3 benchmarks/gpu_barrier.py --out "$OUT/gpu_barrier.md" 2> "$OUT/barrier_log.txt" > /dev/null
echo "gpu_barrier.py: exit $?" >> "$OUT/gpu.txt"
cat "$OUT/gpu.txt"
tail -n 5 "$OUT/gpu_log.txt"
