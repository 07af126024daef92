#!/usr/bin/env bash
# ecam-jax on every worker of a Cloud TPU VM pod slice (e.g. v5p-64: 8 workers).
#
#   TPU_NAME=my-pod ZONE=us-east5-a launch/tpu_pod.sh --setup      # copy the repo, install
#   TPU_NAME=my-pod ZONE=us-east5-a launch/tpu_pod.sh -- --config=configs/msd.py \
#       --workdir=/mnt/shared/runs/msd --config.data.root=/mnt/shared/Task07_Pancreas
#   add --dry-run to print the gcloud commands instead of running them
#
# Needs: gcloud authenticated for PROJECT (default: gcloud's configured project), the
# TPU VM created, and a filesystem mounted on every worker for data and workdir (e.g.
# Filestore over NFS): all workers read the data and write checkpoints together.
# jax.distributed finds the pod's workers itself (--distributed=on).
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
repo_dir=${REPO_DIR:-ecam-jax}
setup=0 dry=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --setup) setup=1; shift ;;
    --dry-run) dry=1; shift ;;
    --) shift; break ;;
    *) echo "unknown option $1 (main's flags go after --)" >&2; exit 2 ;;
  esac
done
project=()
[[ -n ${PROJECT:-} ]] && project=(--project="$PROJECT")
ssh=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" "${project[@]}" --worker=all)

run() {
  if [[ $dry == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

here=$(cd "$(dirname "$0")/.." && pwd)
if [[ $setup == 1 ]]; then
  run gcloud compute tpus tpu-vm scp --recurse "$here" "$TPU_NAME:$repo_dir" --zone="$ZONE" \
    "${project[@]}" --worker=all
  run "${ssh[@]}" --command="cd $repo_dir && python3 -m pip install -q -e . 'jax[tpu]'"
  exit 0
fi
[[ $# -gt 0 ]] || { echo "usage: $0 [--setup | -- MAIN_FLAGS...]" >&2; exit 2; }
flags=$(printf ' %q' "$@")
run "${ssh[@]}" --command="cd $repo_dir && PYTHONUNBUFFERED=1 python3 -m ecam_jax.main --distributed=on$flags"
