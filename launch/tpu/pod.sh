#!/usr/bin/env bash
# Cloud TPU VM / pod recipe for gbmpo-jax: create, install on every worker, train on all
# workers, stream logs, watch for preemption (recreate + resume), delete.
#
#   launch/tpu/pod.sh [--dry-run] COMMAND [options]
#   commands: create | setup | train | logs | status | watch | delete | up (create+setup+train)
#
# Options (or the environment variable in brackets):
#   --name NAME               TPU VM / queued-resource name            [TPU_NAME=gbmpo]
#   --zone ZONE                                                        [ZONE=us-central2-b]
#   --project PROJECT         gcloud project ("" = gcloud's default)   [PROJECT=]
#   --accelerator-type TYPE   e.g. v4-8, v4-32, v5litepod-16           [ACCELERATOR_TYPE=v4-8]
#   --runtime-version V       TPU software version                     [RUNTIME_VERSION=tpu-ubuntu2204-base]
#   --spot | --preemptible    cheaper, preemptible capacity            [SPOT=1 / PREEMPTIBLE=1]
#   --queued                  use a queued resource (waits for capacity) [QUEUED=1]
#   --exp EXP                 experiment for `make train EXP=...`      [EXP=default]
#   --args "K=V ..."          extra config overrides                   [TRAIN_ARGS=]
#   --bucket gs://B/PATH      workdir root on GCS, mounted with gcsfuse at /mnt/gcs on every
#                             worker; the run resumes from it after preemption  [BUCKET=]
#   --workdir DIR             persistent workdir when no bucket (e.g. an NFS/Filestore path)
#   --repo URL --ref REF      what to install                          [REPO_URL=, REPO_REF=main]
#   --interval S              seconds between watch polls              [WATCH_INTERVAL=120]
#   --once                    watch: one poll, then exit (used by the dry-run tests)
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

TPU_NAME="${TPU_NAME:-gbmpo}"
ZONE="${ZONE:-us-central2-b}"
PROJECT="${PROJECT:-}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
SPOT="${SPOT:-0}"
PREEMPTIBLE="${PREEMPTIBLE:-0}"
QUEUED="${QUEUED:-0}"
EXP="${EXP:-default}"
TRAIN_ARGS="${TRAIN_ARGS:-}"
BUCKET="${BUCKET:-}"
WORKDIR="${WORKDIR:-}"
REPO_URL="${REPO_URL:-https://github.com/gbmpo/gbmpo-jax.git}"
REPO_REF="${REPO_REF:-main}"
WATCH_INTERVAL="${WATCH_INTERVAL:-120}"
ONCE=0
JAX_VERSION="${JAX_VERSION:-0.10.2}"
REMOTE_DIR=gbmpo-jax  # relative to the worker's home (ssh starts there)
MOUNT=/mnt/gcs

cmd=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --name) TPU_NAME="$2"; shift ;;
    --zone) ZONE="$2"; shift ;;
    --project) PROJECT="$2"; shift ;;
    --accelerator-type) ACCELERATOR_TYPE="$2"; shift ;;
    --runtime-version) RUNTIME_VERSION="$2"; shift ;;
    --spot) SPOT=1 ;;
    --preemptible) PREEMPTIBLE=1 ;;
    --queued) QUEUED=1 ;;
    --exp) EXP="$2"; shift ;;
    --args) TRAIN_ARGS="$2"; shift ;;
    --bucket) BUCKET="$2"; shift ;;
    --workdir) WORKDIR="$2"; shift ;;
    --repo) REPO_URL="$2"; shift ;;
    --ref) REPO_REF="$2"; shift ;;
    --interval) WATCH_INTERVAL="$2"; shift ;;
    --once) ONCE=1 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    create|setup|train|logs|status|watch|delete|up) cmd="$1" ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
[ -n "$cmd" ] || die "name a command: create | setup | train | logs | status | watch | delete | up"
[ "$SPOT" = 1 ] && [ "$PREEMPTIBLE" = 1 ] && die "--spot and --preemptible are exclusive"

gc=(gcloud)
[ -n "$PROJECT" ] && gc+=(--project="$PROJECT")
tpu=("${gc[@]}" compute tpus tpu-vm)
qr=("${gc[@]}" compute tpus queued-resources)

# The run directory: on the bucket mount (survives the VM) or the given persistent path.
run_dir() {
  if [ -n "$BUCKET" ]; then
    echo "$MOUNT/runs/$TPU_NAME-$EXP"
  elif [ -n "$WORKDIR" ]; then
    echo "$WORKDIR"
  else
    die "set --bucket gs://BUCKET/PATH or --workdir PERSISTENT_DIR: a preempted VM loses its disk"
  fi
}

ssh_all() {
  run "${tpu[@]}" ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$1"
}

create() {
  local opts=(--zone="$ZONE" --accelerator-type="$ACCELERATOR_TYPE")
  if [ "$QUEUED" = 1 ]; then
    [ "$SPOT" = 1 ] && opts+=(--spot)
    [ "$PREEMPTIBLE" = 1 ] && opts+=(--best-effort)
    run "${qr[@]}" create "$TPU_NAME" --node-id="$TPU_NAME" "${opts[@]}" \
      --runtime-version="$RUNTIME_VERSION"
  else
    [ "$SPOT" = 1 ] && opts+=(--spot)
    [ "$PREEMPTIBLE" = 1 ] && opts+=(--preemptible)
    run "${tpu[@]}" create "$TPU_NAME" "${opts[@]}" --version="$RUNTIME_VERSION"
  fi
}

setup() {
  local mount_cmd=""
  if [ -n "$BUCKET" ]; then
    local b="${BUCKET#gs://}"
    mount_cmd="sudo mkdir -p $MOUNT && sudo chown \$USER $MOUNT && (mountpoint -q $MOUNT || gcsfuse --implicit-dirs --only-dir ${b#*/} ${b%%/*} $MOUNT) && "
    [ "${b#*/}" = "$b" ] && mount_cmd="sudo mkdir -p $MOUNT && sudo chown \$USER $MOUNT && (mountpoint -q $MOUNT || gcsfuse --implicit-dirs $b $MOUNT) && "
  fi
  ssh_all "set -e; sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv git make gcsfuse || sudo apt-get install -y -qq python3-venv git make; ${mount_cmd}(test -d $REMOTE_DIR || git clone $REPO_URL $REMOTE_DIR) && cd $REMOTE_DIR && git fetch -q origin && git checkout -q $REPO_REF && make install && .venv/bin/pip install -q 'jax[tpu]==$JAX_VERSION'"
}

train() {
  local dir
  dir="$(run_dir)"
  # Every worker runs the same command; mesh.coordinator=auto lets JAX find its peers. The
  # workdir is shared, so a restarted job resumes from the latest checkpoint there.
  ssh_all "cd $REMOTE_DIR && mkdir -p $dir && nohup make train EXP=$EXP ARGS='--workdir $dir mesh.coordinator=auto $TRAIN_ARGS' > ~/train.log 2>&1 &"
}

logs() {
  run "${tpu[@]}" ssh "$TPU_NAME" --zone="$ZONE" --worker=0 --command="tail -n 100 -f ~/train.log"
}

status() {
  if [ "$QUEUED" = 1 ]; then
    run "${qr[@]}" describe "$TPU_NAME" --zone="$ZONE" --format='value(state.state)'
  else
    run "${tpu[@]}" describe "$TPU_NAME" --zone="$ZONE" --format='value(state)'
  fi
}

delete() {
  if [ "$QUEUED" = 1 ]; then
    run "${qr[@]}" delete "$TPU_NAME" --zone="$ZONE" --force --quiet
  else
    run "${tpu[@]}" delete "$TPU_NAME" --zone="$ZONE" --quiet
  fi
}

finished() {
  local dir
  dir="$(run_dir)"
  run "${tpu[@]}" ssh "$TPU_NAME" --zone="$ZONE" --worker=0 --command="test -e $dir/DONE"
}

# Poll the TPU state; on preemption (or a vanished / failed resource) delete, recreate, set up
# and relaunch: train.py resumes from the last checkpoint in the shared workdir. Stops (and
# deletes the TPU) once the run wrote its DONE marker.
watch() {
  run_dir >/dev/null
  while true; do
    local state
    if [ "$DRY_RUN" = 1 ]; then
      status
      state=PREEMPTED  # show the recovery path
    else
      state="$(status 2>/dev/null || echo MISSING)"
    fi
    case "$state" in
      READY|ACTIVE)
        if finished 2>/dev/null; then
          echo "run finished; deleting $TPU_NAME"
          delete
          return 0
        fi ;;
      CREATING|PROVISIONING|WAITING_FOR_RESOURCES|ACCEPTED|STARTING|RESTARTING) ;;
      *)
        echo "$(date -u +%FT%TZ) $TPU_NAME is ${state:-MISSING}: recreating and resuming" >&2
        delete || true
        create
        setup
        train ;;
    esac
    [ "$ONCE" = 1 ] && return 0
    sleep "$WATCH_INTERVAL"
  done
}

case "$cmd" in
  create) create ;;
  setup) setup ;;
  train) train ;;
  logs) logs ;;
  status) status ;;
  watch) watch ;;
  delete) delete ;;
  up) create; setup; train ;;
esac
