#!/usr/bin/env bash
# A shared MLflow tracking server for sweeps (concurrent SLURM jobs must not share one SQLite file directly:
# SQLite under many writers locks). Loopback by default; the store and artifacts live under DIR.
#
# Usage:  scripts/mlflow-server.sh start DIR [PORT]   prints `export MLFLOW_TRACKING_URI=http://HOST:PORT`
#         scripts/mlflow-server.sh stop DIR             stops it by the pid in DIR/mlflow.pid (never by name)
# Env:    MLFLOW_HOST (default 127.0.0.1; on a cluster, this host's address on the cluster network, which the
#           compute nodes reach; 0.0.0.0 would also expose it on every other interface)
#         MLFLOW_AUTH (default 0 on loopback, 1 elsewhere): MLflow's basic-auth app; the admin account is
#           MLFLOW_TRACKING_USERNAME (default admin) / MLFLOW_TRACKING_PASSWORD (required; used when DIR/auth.db
#           is first created), the same variables MLflow clients send. Needs `pip install 'mlflow[auth]'`.
#         MLFLOW_ALLOW_NO_AUTH=1 binds a non-loopback address without authentication anyway (not advised).
#         MLFLOW_ALLOWED_HOSTS (default: this host's names and HOST; MLflow refuses other Host headers),
#         MLFLOW_WORKERS (default 1), MLFLOW_START_TIMEOUT (default 90 s)
set -euo pipefail
cmd=${1:?usage: mlflow-server.sh start|stop DIR [PORT]}; DIR=${2:?DIR}; PORT=${3:-5000}
HOST=${MLFLOW_HOST:-127.0.0.1}
log() { echo "[mlflow-server] $*" >&2; }
running() { local st; st=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $st != Z* ]]; }
loopback() { [[ $1 == 127.* || $1 == localhost || $1 == ::1 ]]; }
if loopback "$HOST"; then AUTH=${MLFLOW_AUTH:-0}; else AUTH=${MLFLOW_AUTH:-1}; fi
if [[ $cmd == start ]] && ! loopback "$HOST" && [[ $AUTH != 1 && ${MLFLOW_ALLOW_NO_AUTH:-0} != 1 ]]; then
  log "error: MLFLOW_HOST=$HOST without authentication: anyone who reaches it could read and delete every run."
  log "Keep MLFLOW_AUTH=1 (set MLFLOW_TRACKING_PASSWORD), or MLFLOW_ALLOW_NO_AUTH=1 on a network you trust."
  exit 2
fi
if [[ $cmd == start && $AUTH == 1 && -z ${MLFLOW_TRACKING_PASSWORD:-} ]]; then
  log "error: MLFLOW_AUTH=1 needs MLFLOW_TRACKING_PASSWORD (the admin password; clients send the same variable)"
  exit 2
fi
if [[ $cmd == start && ($HOST == 0.0.0.0 || $HOST == ::) ]]; then
  log "warning: $HOST listens on every interface; prefer this host's address on the cluster network"
fi
mkdir -p "$DIR"; DIR=$(cd "$DIR" && pwd)
case $cmd in
start)
  if [[ -s $DIR/mlflow.pid ]] && running "$(cat "$DIR/mlflow.pid")"; then
    log "already running (pid $(cat "$DIR/mlflow.pid"))"; cat "$DIR/env.sh"; exit 0
  fi
  if ss -Hltn "sport = :$PORT" | grep -q .; then log "port $PORT is in use"; exit 1; fi
  extra=()
  if [[ $AUTH == 1 ]]; then
    # the admin account is created from this file when auth.db is first made; the file is the owner's only
    (umask 077; cat > "$DIR/auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = sqlite:///$DIR/auth.db
admin_username = ${MLFLOW_TRACKING_USERNAME:-admin}
admin_password = $MLFLOW_TRACKING_PASSWORD
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
    )
    export MLFLOW_AUTH_CONFIG_PATH=$DIR/auth.ini
    # the CSRF key of the auth app's forms: made once, kept with the store, the same across restarts
    [[ -s $DIR/flask_secret ]] || (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DIR/flask_secret")
    export MLFLOW_FLASK_SERVER_SECRET_KEY=${MLFLOW_FLASK_SERVER_SECRET_KEY:-$(cat "$DIR/flask_secret")}
    extra+=(--app-name basic-auth)
  fi
  allowed=${MLFLOW_ALLOWED_HOSTS:-$HOST,$HOST:$PORT,localhost,localhost:$PORT,127.0.0.1:$PORT,$(hostname),$(hostname):$PORT,$(hostname -f 2>/dev/null || hostname):$PORT}
  if [[ $AUTH == 1 ]]; then umask 077; fi  # auth.db holds password hashes: the store is the owner's only
  # without job execution and with one worker: 2 processes, ~0.5 GB, ready in ~12 s (13 processes, 3 GB otherwise)
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid mlflow server "${extra[@]}" \
    --backend-store-uri "sqlite:///$DIR/mlflow.db" --default-artifact-root "$DIR/artifacts" \
    --host "$HOST" --port "$PORT" --allowed-hosts "$allowed" \
    --workers "${MLFLOW_WORKERS:-1}" >"$DIR/server.log" 2>&1 </dev/null &
  echo $! > "$DIR/mlflow.pid"
  t_end=$((SECONDS + ${MLFLOW_START_TIMEOUT:-90}))
  until curl -sf "http://$HOST:$PORT/health" >/dev/null 2>&1; do
    running "$(cat "$DIR/mlflow.pid")" || { log "server exited; see $DIR/server.log"; tail -n 20 "$DIR/server.log" >&2; exit 1; }
    (( SECONDS < t_end )) || { log "not healthy after ${MLFLOW_START_TIMEOUT:-90} s"; "$0" stop "$DIR"; exit 1; }
    sleep 0.5
  done
  echo "export MLFLOW_TRACKING_URI=http://$HOST:$PORT" > "$DIR/env.sh"
  if [[ $AUTH == 1 ]]; then
    echo "# and each user: export MLFLOW_TRACKING_USERNAME=... MLFLOW_TRACKING_PASSWORD=..." >> "$DIR/env.sh"
  fi
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
