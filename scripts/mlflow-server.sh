#!/usr/bin/env bash
# A shared MLflow tracking server for sweeps (concurrent SLURM jobs must not share one SQLite file directly:
# SQLite under many writers locks). Loopback by default; the store and artifacts live under DIR.
#
# Usage:  scripts/mlflow-server.sh start DIR [PORT]   prints `export MLFLOW_TRACKING_URI=http://HOST:PORT`
#         scripts/mlflow-server.sh stop DIR             stops it by the pid in DIR/mlflow.pid (never by name)
# Env:    MLFLOW_HOST (default 127.0.0.1; a cluster's shared server binds an address the compute nodes reach)
#         MLFLOW_WORKERS (default 1), MLFLOW_START_TIMEOUT (default 90 s)
set -euo pipefail
cmd=${1:?usage: mlflow-server.sh start|stop DIR [PORT]}; DIR=${2:?DIR}; PORT=${3:-5000}
HOST=${MLFLOW_HOST:-127.0.0.1}
mkdir -p "$DIR"; DIR=$(cd "$DIR" && pwd)
log() { echo "[mlflow-server] $*" >&2; }
running() { local st; st=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $st != Z* ]]; }
case $cmd in
start)
  if [[ -s $DIR/mlflow.pid ]] && running "$(cat "$DIR/mlflow.pid")"; then
    log "already running (pid $(cat "$DIR/mlflow.pid"))"; cat "$DIR/env.sh"; exit 0
  fi
  if ss -Hltn "sport = :$PORT" | grep -q .; then log "port $PORT is in use"; exit 1; fi
  # without job execution and with one worker: 2 processes, ~0.5 GB, ready in ~12 s (13 processes, 3 GB otherwise)
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid mlflow server \
    --backend-store-uri "sqlite:///$DIR/mlflow.db" --default-artifact-root "$DIR/artifacts" \
    --host "$HOST" --port "$PORT" --workers "${MLFLOW_WORKERS:-1}" >"$DIR/server.log" 2>&1 </dev/null &
  echo $! > "$DIR/mlflow.pid"
  t_end=$((SECONDS + ${MLFLOW_START_TIMEOUT:-90}))
  until curl -sf "http://$HOST:$PORT/health" >/dev/null 2>&1; do
    running "$(cat "$DIR/mlflow.pid")" || { log "server exited; see $DIR/server.log"; tail -n 20 "$DIR/server.log" >&2; exit 1; }
    (( SECONDS < t_end )) || { log "not healthy after ${MLFLOW_START_TIMEOUT:-90} s"; "$0" stop "$DIR"; exit 1; }
    sleep 0.5
  done
  echo "export MLFLOW_TRACKING_URI=http://$HOST:$PORT" > "$DIR/env.sh"
  log "ready at http://$HOST:$PORT (pid $(cat "$DIR/mlflow.pid"), store $DIR)"
  cat "$DIR/env.sh"
  ;;
stop)
  [[ -s $DIR/mlflow.pid ]] || exit 0
  pid=$(cat "$DIR/mlflow.pid")
  if running "$pid"; then
    # setsid made the server a process-group leader: its gunicorn/uvicorn workers share its group
    kill -- -"$pid" 2>/dev/null || kill "$pid"
    for ((i = 0; i < 100; i++)); do running "$pid" || break; sleep 0.1; done
    running "$pid" && { log "pid $pid ignored SIGTERM: SIGKILL"; kill -9 -- -"$pid" 2>/dev/null || kill -9 "$pid"; }
  fi
  rm -f "$DIR/mlflow.pid"; log "stopped ($DIR)"
  ;;
*) echo "usage: mlflow-server.sh start|stop DIR [PORT]" >&2; exit 2 ;;
esac
