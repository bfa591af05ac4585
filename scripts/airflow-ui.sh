#!/usr/bin/env bash
# Airflow's UI and scheduler (`airflow standalone`) plus a Milvus Lite server, so the scheduler, the
# task processes and the API server (which serves /recsys and the Recommender view) share one vector
# store. Open http://localhost:8080 (login printed by standalone; AIRFLOW__API__PORT changes the port).
# Ctrl-C stops both.
set -euo pipefail
"$(dirname "$0")/airflow-setup.sh"
source "$(dirname "$0")/airflow-env.sh"
MILVUS_PORT="${RECSYS_MILVUS_PORT:-19530}"
export RECSYS_MILVUS_URI="${RECSYS_MILVUS_URI:-http://127.0.0.1:$MILVUS_PORT}"
if [[ "$RECSYS_MILVUS_URI" == "http://127.0.0.1:$MILVUS_PORT" ]]; then
  milvus-lite server --data-dir "$RECSYS_HOME/milvus.db" --host 127.0.0.1 --port "$MILVUS_PORT" &
  MILVUS_PID=$!
  trap 'kill "$MILVUS_PID" 2>/dev/null || true' EXIT
  for _ in $(seq 60); do
    (exec 3<>"/dev/tcp/127.0.0.1/$MILVUS_PORT") 2>/dev/null && break
    kill -0 "$MILVUS_PID" 2>/dev/null || { echo "milvus-lite server exited" >&2; exit 1; }
    sleep 1
  done
fi
PORT="${AIRFLOW__API__PORT:-8080}"
# Task processes report to the API server's execution API: follow a changed port.
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="${AIRFLOW__CORE__EXECUTION_API_SERVER_URL:-http://localhost:$PORT/execution/}"
echo "Milvus: $RECSYS_MILVUS_URI; Airflow UI: http://localhost:$PORT (Browse > Recommender); API: http://localhost:$PORT/recsys/docs"
airflow standalone
