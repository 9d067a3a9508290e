#!/usr/bin/env bash
# Trains on a Cloud TPU VM pod slice: create it, copy and install this
# repository on every worker, run wgan_jax.main on all workers at once, fetch
# the results, delete the slice.
#
#   launch/tpu_pod.sh create|install|train|fetch|delete|all
#
# Edit the variables below first. `train` runs one process per worker
# (--worker=all) with --distributed: JAX learns the workers and the
# coordinator from the TPU metadata. Each worker reads its own part of the
# data; only worker 0 writes metrics, samples and plots; all write the
# checkpoints, so the workdir is a Cloud Storage bucket mounted with gcsfuse
# at the same path on every worker. A preempted (spot) slice sends SIGTERM:
# all workers checkpoint at the same step and exit 0; `train` again resumes.
#
# Not yet run by the authors (no TPU access): the commands follow the Cloud
# TPU and JAX documentation.
set -euo pipefail

# ---- Edit these ----
PROJECT=my-gcp-project
ZONE=us-central2-b
TPU_NAME=wgan-jax-pod
ACCELERATOR_TYPE=v4-32  # 4 workers (hosts) x 4 chips.
RUNTIME_VERSION=tpu-ubuntu2204-base
SPOT=--spot  # Empty for an on-demand slice.
BUCKET=my-bucket  # Holds the TFDS data and the runs.
DATA_DIR=gs://$BUCKET/tensorflow_datasets  # Prepared TFDS data.
MOUNT=/mnt/$BUCKET  # The bucket, mounted on every worker.
RUN=default
CONFIG=configs/default.py
EXTRA_FLAGS=""  # More wgan_jax.main flags, e.g. --config.batch_size=256.
FETCH_TO=runs/tpu  # Local folder for `fetch`.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORKDIR=$MOUNT/runs/$RUN
GCLOUD=(gcloud compute tpus tpu-vm --project="$PROJECT" --zone="$ZONE")

on_all_workers() {
  "${GCLOUD[@]}" ssh "$TPU_NAME" --worker=all --command="$1"
}

create() {
  # shellcheck disable=SC2086
  "${GCLOUD[@]}" create "$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" \
    --version="$RUNTIME_VERSION" $SPOT
}

install() {
  local archive=/tmp/wgan_jax.tar.gz
  tar -C "$REPO" --exclude=.venv --exclude=runs --exclude=.git \
    -czf "$archive" .
  "${GCLOUD[@]}" scp "$archive" "$TPU_NAME":/tmp/ --worker=all
  on_all_workers "set -e
    mkdir -p ~/wgan_jax && tar -C ~/wgan_jax -xzf /tmp/wgan_jax.tar.gz
    cd ~/wgan_jax && python3 -m venv .venv && . .venv/bin/activate
    pip install -q -e . 'jax[tpu]==0.10.2'
    if ! command -v gcsfuse >/dev/null; then
      echo 'deb https://packages.cloud.google.com/apt gcsfuse-jammy main' |
        sudo tee /etc/apt/sources.list.d/gcsfuse.list
      curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg |
        sudo tee /etc/apt/trusted.gpg.d/gcsfuse.asc >/dev/null
      sudo apt-get update -q && sudo apt-get install -qy gcsfuse
    fi
    sudo mkdir -p $MOUNT && sudo chown \$USER $MOUNT
    mountpoint -q $MOUNT || gcsfuse --implicit-dirs \
      --rename-dir-limit=1000000 $BUCKET $MOUNT"
}

train() {
  # One process per worker; the first failure ends the ssh session.
  on_all_workers "cd ~/wgan_jax && . .venv/bin/activate &&
    TFDS_DATA_DIR=$DATA_DIR python -m wgan_jax.main --distributed \
      --config=$CONFIG --workdir=$WORKDIR $EXTRA_FLAGS"
}

fetch() {
  mkdir -p "$FETCH_TO"
  gcloud storage cp -r "gs://$BUCKET/runs/$RUN" "$FETCH_TO/"
}

delete() {
  "${GCLOUD[@]}" delete "$TPU_NAME" --quiet
}

case "${1:-}" in
  create | install | train | fetch | delete) "$1" ;;
  all) create && install && train && fetch ;;
  *)
    echo "usage: $0 create|install|train|fetch|delete|all" >&2
    exit 2
    ;;
esac
