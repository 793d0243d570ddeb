#!/bin/bash
# One device call: GPU benches (128 px paper config, 64 px demo), variants, a profile; a 2-core CPU bench alongside.
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
O=${OUT:-/tmp/gpu_out}; mkdir -p "$O"
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$O/log"; }
{ nvidia-smi -L; python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name())'
  lscpu | grep -E 'Model name|^Flags|^CPU\(s\)|Thread|Socket'; which g++ gcc; nproc; } > "$O/info.txt" 2>&1
el info done
(taskset -c 0,1 env OMP_NUM_THREADS=2 timeout 420 python3 main.py --mode bench --device cpu --dataset synthetic \
   --synthetic_dir /tmp/syn64cpu --synthetic_images 2000 --image_size 64 --g_conv_dim 32 --d_conv_dim 32 \
   --g_repeat_num 3 --d_repeat_num 5 --batch_size 16 --n_critic 5 --bench_warmup 10 --bench_iters 30 \
   --bench_compare --outputs_dir /tmp/o_cpu > "$O/cpu_bench.txt" 2>&1; echo "rc $?" >> "$O/cpu_bench.txt") &
CPU=$!
G="taskset -c 2-15"
B128="--mode bench --batch_size 25 --synthetic_images 2000 --synthetic_dir /tmp/syn128 --n_critic 5 --bench_iters 100 --bench_infer_repeats 50 --outputs_dir /tmp/o128"
run() {  # name timeout env... -- args
  local name=$1 t=$2; shift 2
  el "start $name"
  $G timeout "$t" env "$@" >> "$O/gpu.txt" 2>&1; echo "rc $? ($name)" >> "$O/gpu.txt"
  el "end $name"
}
echo "=== 128 default, compare, profile" >> "$O/gpu.txt"
run b128 150 X_PROFILE="$O/profile.txt" python3 docs/gpu_runs/variants.py $B128 --bench_compare
echo "=== 128 explicit_gp true" >> "$O/gpu.txt"
run b128_xgp 60 python3 docs/gpu_runs/variants.py $B128 --explicit_gp true
echo "=== 128 explicit_gp true, compiled D" >> "$O/gpu.txt"
run b128_xgp_cd 90 X_COMPILE_D=1 python3 docs/gpu_runs/variants.py $B128 --explicit_gp true
echo "=== 128 explicit_gp true, compiled D, reduce-overhead" >> "$O/gpu.txt"
run b128_ro 110 X_COMPILE_D=1 X_MODE=reduce-overhead python3 docs/gpu_runs/variants.py $B128 --explicit_gp true
echo "=== 64 demo model, compare" >> "$O/gpu.txt"
run b64 90 python3 docs/gpu_runs/variants.py --mode bench --image_size 64 --g_conv_dim 32 --d_conv_dim 32 --g_repeat_num 3 \
  --d_repeat_num 5 --batch_size 16 --n_critic 1 --synthetic_images 2000 --synthetic_dir /tmp/syn64 --bench_iters 100 \
  --bench_infer_repeats 50 --outputs_dir /tmp/o64 --bench_compare
el "waiting for the CPU bench"
wait $CPU
el done
