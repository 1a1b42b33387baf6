#!/usr/bin/env bash
# Container entrypoint: turn the environment into one launcher command for launch/pretrain.py.
#
#   entrypoint.sh --config configs/demo.yaml train.max_steps=20     # arguments go to pretrain.py
#   entrypoint.sh mixpretrain synth --out /data/shards ...          # a command on PATH runs as is
#
# Launch modes (chosen from the environment, see docs/multinode.md):
#   one node            NNODES unset or 1:  deepspeed [--include localhost:IDS | --num_gpus N] launch/pretrain.py ...
#   hostfile (ssh)      HOSTFILE=FILE:      deepspeed --hostfile FILE ... (pdsh/ssh to every host)
#   launcher per node   NNODES>1 + NODE_RANK + MASTER_ADDR (SLURM srun, Kubernetes pods):
#                       deepspeed --no_ssh --node_rank R --hostfile <one line per node> ...
#   MIXPRETRAIN_LAUNCHER=torchrun uses torchrun with the same variables instead of deepspeed.
#
# Variables (all optional): NNODES, NODE_RANK (else PET_NODE_RANK, else SLURM_NODEID), MASTER_ADDR,
# MASTER_PORT, NPROC_PER_NODE, HOSTFILE, MIXPRETRAIN_NODE_ENV=kubeflow (NNODES/NODE_RANK from the
# PyTorchJob's WORLD_SIZE/RANK), MIXPRETRAIN_SHARDS (becomes data.shards=...), MIXPRETRAIN_SCRIPT,
# MIXPRETRAIN_DS_LAUNCHER (pdsh|openmpi|mvapich|slurm), MIXPRETRAIN_DRY_RUN=1 (print, do not run).
set -euo pipefail

die() {
    echo "entrypoint: error: $*" >&2
    exit 2
}
log() { echo "entrypoint: $*" >&2; }

# Files this script generates (a per-node hostfile, a DS_ENV_FILE), never one the user named: they
# are removed when the launch ends, fails or is stopped (and after a dry run).
TEMP_FILES=()
# shellcheck disable=SC2329 # called from a trap
remove_temp_files() { ((${#TEMP_FILES[@]} == 0)) || rm -f -- "${TEMP_FILES[@]}"; }
trap remove_temp_files EXIT

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MIXPRETRAIN_HOME="${MIXPRETRAIN_HOME:-$(dirname "$HERE")}"
SCRIPT="${MIXPRETRAIN_SCRIPT:-$MIXPRETRAIN_HOME/launch/pretrain.py}"
LAUNCHER="${MIXPRETRAIN_LAUNCHER:-deepspeed}"

# A command on PATH (mixpretrain, bash, python ...) runs directly, so one image serves ingest,
# synth and eval too. Overrides such as key=value and options (-x) never match.
if [[ $# -gt 0 && "$1" != -* && "$1" != *=* ]] && command -v -- "$1" >/dev/null 2>&1; then
    exec "$@"
fi
if [[ $# -eq 1 && ("$1" == "--help" || "$1" == "-h") ]]; then
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
    [[ -f "$SCRIPT" ]] && exec python "$SCRIPT" --help
    exit 0
fi

# --- environment defaults -------------------------------------------------------------------
# NCCL: log warnings (the first thing to read when a run hangs) and make a dead peer raise an
# error in every rank instead of blocking the collective forever.
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"
# wandb: offline unless a key was passed in at run time (no key is ever baked into the image).
if [[ -z "${WANDB_MODE:-}" ]]; then
    if [[ -n "${WANDB_API_KEY:-}" ]]; then export WANDB_MODE=online; else export WANDB_MODE=offline; fi
fi
export PYTHONUNBUFFERED=1

if [[ "${MIXPRETRAIN_NODE_ENV:-}" == "kubeflow" ]]; then
    # A PyTorchJob (kubeflow.org/v1, no nprocPerNode) gives each pod WORLD_SIZE = number of pods
    # and RANK = pod index; the launcher below sets the per-process values itself.
    NNODES="${NNODES:-${WORLD_SIZE:-}}"
    NODE_RANK="${NODE_RANK:-${RANK:-}}"
    unset WORLD_SIZE RANK
elif [[ -n "${MIXPRETRAIN_NODE_ENV:-}" ]]; then
    die "MIXPRETRAIN_NODE_ENV='${MIXPRETRAIN_NODE_ENV}' is not supported (only 'kubeflow')"
fi
NNODES="${NNODES:-${PET_NNODES:-1}}"
NODE_RANK="${NODE_RANK:-${PET_NODE_RANK:-${SLURM_NODEID:-0}}}"
MASTER_ADDR="${MASTER_ADDR:-${PET_MASTER_ADDR:-}}"
MASTER_PORT="${MASTER_PORT:-${PET_MASTER_PORT:-29500}}"
NPROC_PER_NODE="${NPROC_PER_NODE:-${PET_NPROC_PER_NODE:-}}"
# torchrun's symbolic counts (Kubeflow Trainer sets PET_NPROC_PER_NODE=auto): count GPUs below.
[[ "$NPROC_PER_NODE" == "auto" || "$NPROC_PER_NODE" == "gpu" ]] && NPROC_PER_NODE=""

is_uint() { [[ "$1" =~ ^(0|[1-9][0-9]*)$ ]]; } # no leading zeros: bash reads 08 as bad octal
{ is_uint "$NNODES" && ((NNODES >= 1)); } || die "NNODES='$NNODES' must be a positive integer"
{ is_uint "$NODE_RANK" && ((NODE_RANK < NNODES)); } || die "NODE_RANK='$NODE_RANK' must be an integer in [0, NNODES=$NNODES)"
is_uint "$MASTER_PORT" || die "MASTER_PORT='$MASTER_PORT' must be a port number"
[[ -z "$NPROC_PER_NODE" ]] || { is_uint "$NPROC_PER_NODE" && ((NPROC_PER_NODE >= 1)); } ||
    die "NPROC_PER_NODE='$NPROC_PER_NODE' must be a positive integer"

# --- shard source ---------------------------------------------------------------------------
ARGS=("$@")
if [[ -n "${MIXPRETRAIN_SHARDS:-}" ]]; then
    if [[ "$MIXPRETRAIN_SHARDS" == pipe:* ]]; then
        # pipe:aws s3 cp s3://b/x.tar - : fail now, not in every data loader worker later.
        read -r pipe_cmd _ <<<"${MIXPRETRAIN_SHARDS#pipe:}"
        command -v -- "$pipe_cmd" >/dev/null 2>&1 ||
            die "MIXPRETRAIN_SHARDS pipes through '$pipe_cmd', which is not on PATH ($MIXPRETRAIN_SHARDS)"
    elif [[ "$MIXPRETRAIN_SHARDS" != *://* && ! -e "$MIXPRETRAIN_SHARDS" ]]; then
        die "MIXPRETRAIN_SHARDS='$MIXPRETRAIN_SHARDS' does not exist (mount it, or give a pipe:/http(s):// URL)"
    fi
    ARGS+=("data.shards=$MIXPRETRAIN_SHARDS")
fi

[[ -f "$SCRIPT" ]] || die "training script '$SCRIPT' not found (MIXPRETRAIN_SCRIPT / MIXPRETRAIN_HOME)"

# --- hostfile -------------------------------------------------------------------------------
check_hostfile() { # a missing hostfile makes deepspeed fall back to this node alone, silently
    local file="$1" n=0 line lineno=0
    [[ -f "$file" ]] || die "hostfile '$file' (HOSTFILE) not found; mount it or unset HOSTFILE for one node"
    while IFS= read -r line || [[ -n "$line" ]]; do
        lineno=$((lineno + 1))
        line="${line%%#*}"
        [[ -z "${line// /}" ]] && continue
        [[ "$line" =~ ^[[:space:]]*[^[:space:]]+[[:space:]]+slots=[0-9]+[[:space:]]*$ ]] ||
            die "hostfile '$file' line $lineno: expected 'HOST slots=N', got '$line'"
        n=$((n + 1))
    done <"$file"
    ((n > 0)) || die "hostfile '$file' lists no hosts"
}

# The deepspeed launcher rewrites CUDA_VISIBLE_DEVICES to indices: GPU UUIDs cannot be kept. Run in
# the main shell (not inside $(...), where die would only end the subshell).
require_index_cvd() {
    local cvd="${CUDA_VISIBLE_DEVICES:-}"
    [[ -z "$cvd" || "$cvd" =~ ^[0-9]+(,[0-9]+)*$ ]] ||
        die "CUDA_VISIBLE_DEVICES='$cvd' is not a list of indices; the deepspeed launcher cannot keep it, use MIXPRETRAIN_LAUNCHER=torchrun"
}

# Visible GPU ids on this node; the DeepSpeed launcher rewrites CUDA_VISIBLE_DEVICES to ids taken
# from the hostfile, so keep them in the generated one (SLURM may hand out 4,5,6,7).
local_gpu_ids() {
    local cvd="${CUDA_VISIBLE_DEVICES:-}"
    if [[ -n "$cvd" ]]; then
        echo "$cvd"
    elif [[ -n "$NPROC_PER_NODE" ]]; then
        seq -s, 0 $((NPROC_PER_NODE - 1))
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        seq -s, 0 $(($(nvidia-smi -L | grep -c '^GPU') - 1))
    else
        echo 0 # CPU (DS_ACCELERATOR=cpu): one process per node unless NPROC_PER_NODE says more
    fi
}

# DeepSpeed's ssh/pdsh runner passes on to the ranks only NCCL_*, PYTHON*, MLFLOW*, MV2*, UCX*
# variables, plus those of a .deepspeed_env file: the rest (WANDB_MODE, a W&B key, the NCCL error
# handling set above, DS_ACCELERATOR, ...) would never reach a rank, not even the local ones.
forward_env_to_ssh_ranks() {
    [[ -z "${DS_ENV_FILE:-}" ]] || return 0 # the user's own list
    local f v
    f="$(mktemp "${TMPDIR:-/tmp}/mixpretrain-dsenv.XXXXXX")" # mode 600: it may hold a W&B key
    TEMP_FILES+=("$f")
    for v in "$HOME/.deepspeed_env" ./.deepspeed_env; do      # what deepspeed would have read
        [[ -f "$v" ]] && cat "$v" >>"$f"
    done
    for v in WANDB_MODE WANDB_API_KEY WANDB_PROJECT WANDB_ENTITY TORCH_NCCL_ASYNC_ERROR_HANDLING \
        DEEPSPEED_TIMEOUT DS_ACCELERATOR OMP_NUM_THREADS MIXPRETRAIN_HTTP_STALL_S; do
        [[ -n "${!v:-}" ]] && printf '%s=%s\n' "$v" "${!v}" >>"$f"
    done
    export DS_ENV_FILE="$f" # absolute: deepspeed joins it to ~ and . and finds it either way
}

# --- launcher command -----------------------------------------------------------------------
CMD=()
case "$LAUNCHER" in
deepspeed)
    require_index_cvd
    DS=(deepspeed --master_port "$MASTER_PORT")
    [[ -n "${MIXPRETRAIN_DS_LAUNCHER:-}" ]] && DS+=(--launcher "$MIXPRETRAIN_DS_LAUNCHER")
    if ((NNODES > 1)); then
        [[ -n "$MASTER_ADDR" ]] || die "NNODES=$NNODES needs MASTER_ADDR (the node-rank-0 host)"
        ids="$(local_gpu_ids)"
        if [[ -n "${HOSTFILE:-}" ]]; then
            check_hostfile "$HOSTFILE"
            hostfile="$HOSTFILE"
        else
            # Every node runs its own launcher (--no_ssh); the hostfile only tells it the world
            # shape, so the host names are placeholders.
            hostfile="$(mktemp "${TMPDIR:-/tmp}/mixpretrain-hostfile.XXXXXX")"
            TEMP_FILES+=("$hostfile")
            slots=$(($(tr ',' '\n' <<<"$ids" | sort -n | tail -1) + 1))
            include=""
            for ((n = 0; n < NNODES; n++)); do
                echo "node$n slots=$slots" >>"$hostfile"
                include+="${include:+@}node$n:$ids"
            done
            DS+=(--include "$include")
        fi
        DS+=(--hostfile "$hostfile" --no_ssh --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR")
    elif [[ -n "${HOSTFILE:-}" ]]; then
        check_hostfile "$HOSTFILE"
        forward_env_to_ssh_ranks
        DS+=(--hostfile "$HOSTFILE")
        [[ -n "$MASTER_ADDR" ]] && DS+=(--master_addr "$MASTER_ADDR")
    elif [[ -n "$NPROC_PER_NODE" && -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
        # --num_gpus N would make deepspeed use GPUs 0..N-1 whatever SLURM assigned (4,5 on a
        # shared node): name the first N visible ones instead.
        ids="$(tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | head -n "$NPROC_PER_NODE" | paste -sd, -)"
        DS+=(--include "localhost:$ids")
    elif [[ -n "$NPROC_PER_NODE" ]]; then
        DS+=(--num_gpus "$NPROC_PER_NODE")
    fi
    CMD=("${DS[@]}" "$SCRIPT" "${ARGS[@]}")
    ;;
torchrun)
    [[ -z "${HOSTFILE:-}" ]] || die "HOSTFILE is for the deepspeed launcher; torchrun needs NNODES/NODE_RANK/MASTER_ADDR on every node"
    if [[ -z "$NPROC_PER_NODE" ]]; then  # one process per visible GPU (indices or UUIDs alike)
        NPROC_PER_NODE=$(tr ',' '\n' <<<"$(local_gpu_ids)" | grep -c .)
    fi
    TR=(torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NPROC_PER_NODE"
        --master_port "$MASTER_PORT")
    if ((NNODES > 1)); then
        [[ -n "$MASTER_ADDR" ]] || die "NNODES=$NNODES needs MASTER_ADDR (the node-rank-0 host)"
        TR+=(--master_addr "$MASTER_ADDR")
    else
        TR+=(--master_addr "${MASTER_ADDR:-127.0.0.1}")
    fi
    CMD=("${TR[@]}" "$SCRIPT" "${ARGS[@]}")
    ;;
python)
    ((NNODES == 1)) || die "MIXPRETRAIN_LAUNCHER=python runs one process; NNODES=$NNODES needs deepspeed or torchrun"
    CMD=(python "$SCRIPT" "${ARGS[@]}")
    ;;
*)
    die "MIXPRETRAIN_LAUNCHER='$LAUNCHER' is not one of deepspeed, torchrun, python"
    ;;
esac

log "node $NODE_RANK of $NNODES, master ${MASTER_ADDR:-local}:$MASTER_PORT, WANDB_MODE=$WANDB_MODE, NCCL_DEBUG=$NCCL_DEBUG"
if [[ "${MIXPRETRAIN_DRY_RUN:-0}" == "1" ]]; then
    [[ -n "${hostfile:-}" ]] && sed "s/^/hostfile: /" "$hostfile" >&2
    [[ -n "${DS_ENV_FILE:-}" ]] && cut -d= -f1 "$DS_ENV_FILE" | sed "s/^/ds_env: /" >&2 # names only
    printf '%q ' "${CMD[@]}"
    echo
    exit 0
fi
if ((${#TEMP_FILES[@]} == 0)); then
    log "exec: ${CMD[*]}"
    exec "${CMD[@]}"
fi

# Generated files must outlive the launcher's start-up but not the launcher: run it as a child
# instead of exec'ing it, pass on the signals a scheduler, `docker stop` or Ctrl-C send to this
# shell (PID 1 in a container), and exit with the launcher's status once the EXIT trap removed them.
log "run: ${CMD[*]}"
# A plain `cmd &` starts with SIGINT/SIGQUIT ignored (its ranks would inherit that, and Ctrl-C
# would not stop them): a subshell that resets them first, then becomes the launcher.
(
    trap - INT QUIT
    exec "${CMD[@]}"
) <&0 &
child=$!
signalled=0
# shellcheck disable=SC2329 # called from a trap
pass_on() {
    signalled=1
    kill -s "$1" "$child" 2>/dev/null || true
}
for sig in TERM INT HUP QUIT USR1 USR2; do
    # shellcheck disable=SC2064 # expand $sig now: one handler per signal
    trap "pass_on $sig" "$sig"
done
status=0
wait "$child" || status=$?
while ((signalled)); do # that wait was cut short by a signal (128+n): wait for the launcher itself
    signalled=0
    again=0
    wait "$child" 2>/dev/null || again=$?
    ((again == 127)) || status=$again # 127: the launcher had already ended with $status
done
exit "$status"
