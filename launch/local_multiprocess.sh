#!/usr/bin/env bash
# N processes of ecam_jax.main on this machine, joined by jax.distributed.
#
#   launch/local_multiprocess.sh [-n N] [-d DEVICES_PER_PROCESS] [--gpus] [--port P] [--dry-run] \
#       -- --config=configs/demo.py --workdir=runs/mp [more main flags]
#
# CPU (default): each process gets DEVICES_PER_PROCESS fake CPU devices; this is how the
# multi-host code path is tested on one machine. --gpus: process i gets GPUs
# [i*D, (i+1)*D) through CUDA_VISIBLE_DEVICES. If one process fails, the others are
# stopped, and the script exits with the first failure's status.
set -euo pipefail

n=2 devices=1 gpus=0 port=${ECAM_PORT:-12355} dry=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -n) n=$2; shift 2 ;;
    -d) devices=$2; shift 2 ;;
    --gpus) gpus=1; shift ;;
    --port) port=$2; shift 2 ;;
    --dry-run) dry=1; shift ;;
    --) shift; break ;;
    *) echo "unknown option $1 (main's flags go after --)" >&2; exit 2 ;;
  esac
done
[[ $# -gt 0 ]] || { echo "usage: $0 [-n N] [-d D] [--gpus] [--dry-run] -- MAIN_FLAGS..." >&2; exit 2; }
python=${PYTHON:-python}

command_for() {  # process id -> the environment and command line, one string
  local i=$1 env
  shift
  if [[ $gpus == 1 ]]; then
    env="CUDA_VISIBLE_DEVICES=$(seq -s, $((i * devices)) $((i * devices + devices - 1)))"
  else
    env="JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=$devices"
  fi
  printf '%s %s -m ecam_jax.main --coordinator_address=127.0.0.1:%s --num_processes=%s --process_id=%s' \
    "$env" "$python" "$port" "$n" "$i"
  printf ' %q' "$@"
}

if [[ $dry == 1 ]]; then
  for ((i = 0; i < n; i++)); do command_for "$i" "$@"; echo; done
  exit 0
fi

pids=()
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap stop_all INT TERM
for ((i = 0; i < n; i++)); do
  bash -c "exec env $(command_for "$i" "$@")" &
  pids+=($!)
done
status=0
for ((k = 0; k < n; k++)); do
  wait -n && continue
  rc=$?
  [[ $status == 0 ]] && status=$rc
  stop_all
done
exit "$status"
