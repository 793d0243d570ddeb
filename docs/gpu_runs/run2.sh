#!/bin/bash
# Second device call: the short quality run of the 128 px configuration, a profile of --explicit_gp true, CUDA graphs for G.
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
O=${OUT:-/tmp/gpu_out}; mkdir -p "$O"
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$O/log"; }
G="taskset -c 2-15"
D128="--synthetic_images 4000 --synthetic_dir /tmp/syn128"
B128="--mode bench --batch_size 25 $D128 --n_critic 5 --bench_iters 100 --bench_infer_repeats 50 --outputs_dir /tmp/o128"
run() {  # name timeout env... -- args
  local name=$1 t=$2; shift 2
  el "start $name"
  echo "=== $name" >> "$O/gpu.txt"
  $G timeout "$t" env "$@" >> "$O/gpu.txt" 2>&1; echo "rc $? ($name)" >> "$O/gpu.txt"
  el "end $name"
}
run b128_xgp_profile 100 X_PROFILE="$O/profile_xgp.txt" python3 docs/gpu_runs/variants.py $B128 --explicit_gp true
run quality 250 python3 main.py --mode demo --image_size 128 --g_conv_dim 64 --d_conv_dim 64 --g_repeat_num 6 \
  --d_repeat_num 6 --batch_size 25 $D128 --num_iters 3400 --num_iters_decay 0 --eval_step 850 --outputs_dir /tmp/q128
ls -lR /tmp/q128 > "$O/q128_files.txt" 2>&1
(cd /tmp/q128 && tar czf "$O/q128_results.tgz" results config.json $(ls -t samples/*.png 2>/dev/null | head -1)) 2>/dev/null
left=$(( 440 - ($(date +%s) - T0) ))
[ $left -gt 60 ] && run b128_cudagraphs_G $left X_MODE=reduce-overhead python3 docs/gpu_runs/variants.py $B128
el done
