#!/usr/bin/env bash
# Multi-host training on one machine: N CPU processes of wgan_jax.main, the
# coordinator on 127.0.0.1, each with its own CPU devices.
#
#   launch/local.sh N --config=configs/smoke.py --workdir=runs/local [flags]
#
# The flags go to every process, which adds --coordinator_address,
# --num_processes and --process_id. Environment: LOCAL_DEVICES (CPU devices
# per process, default 1), PORT (the coordinator's, default a free one),
# PYTHON (default python), GRACE_S (seconds the others get after one fails
# before they are killed, default 30). A SIGTERM or SIGINT to this script is
# passed to every process: they checkpoint at one step and exit 0, and the
# same command resumes. Exits 0 when every process does, 1 when any fails
# (the others are stopped), 2 on bad usage.
set -uo pipefail

if (($# < 1)) || [[ ! $1 =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 N --config=FILE --workdir=DIR [wgan_jax.main flags]" >&2
  exit 2
fi
num_processes=$1
shift
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python}
grace=${GRACE_S:-30}
if [[ -z ${PORT:-} ]]; then
  PORT=$("$python" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])') || exit 1
fi

# The repository on the path, so relative --config and --workdir paths stay
# relative to where this was called from.
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export JAX_PLATFORMS=cpu
export JAX_NUM_CPU_DEVICES=${LOCAL_DEVICES:-1}

declare -A index=()
for ((i = 0; i < num_processes; i++)); do
  "$python" -m wgan_jax.main --coordinator_address="127.0.0.1:$PORT" \
    --num_processes="$num_processes" --process_id="$i" "$@" &
  index[$!]=$i
done
echo "local.sh: $num_processes processes (pids ${!index[*]}), coordinator" \
  "127.0.0.1:$PORT, CPU devices per process: $JAX_NUM_CPU_DEVICES" >&2

forward() {
  echo "local.sh: passing SIGTERM to every process" >&2
  kill -TERM "${!index[@]}" 2>/dev/null
}
trap forward TERM INT

status=0
deadline=
while ((${#index[@]})); do
  # Bash reaps its children itself: a pid that is gone has finished, and
  # `wait PID` gives its status. (wait -n can lose a child that ends while
  # another is being handled.)
  for pid in "${!index[@]}"; do
    kill -0 "$pid" 2>/dev/null && continue
    wait "$pid"
    rc=$?
    i=${index[$pid]}
    unset "index[$pid]"
    ((rc == 0)) && continue
    echo "local.sh: process $i (pid $pid) exited with status $rc" >&2
    if ((status == 0 && ${#index[@]})); then
      # The others would wait for it in a collective until JAX's heartbeat
      # timeout; end them now.
      echo "local.sh: stopping the other processes" >&2
      kill -TERM "${!index[@]}" 2>/dev/null
      deadline=$((SECONDS + grace))
    fi
    status=1
  done
  if [[ -n $deadline ]] && ((SECONDS >= deadline && ${#index[@]})); then
    echo "local.sh: killing the processes left after ${grace} s" >&2
    kill -KILL "${!index[@]}" 2>/dev/null
    deadline=
  fi
  ((${#index[@]})) && sleep 0.5
done
exit "$status"
