#!/usr/bin/env bash
# Run the whole DAG once, in one process (`airflow dags test`), then ask the live model for
# recommendations for two well-known movies. Usage: scripts/airflow-demo.sh ['{"epochs": 2}']
# The snapshot is RECSYS_SNAPSHOT (default: the official ml-1m URL); the stores are the embedded
# defaults under RECSYS_HOME (Milvus Lite file, SQLite) unless RECSYS_MILVUS_URI / RECSYS_DB_URL say otherwise.
# The terminal gets the short story (each task as it starts, the pipeline's own log lines, the task
# states, the error of a failed run); Airflow's full output goes to $AIRFLOW_HOME/demo-run.log.
set -euo pipefail
"$(dirname "$0")/airflow-setup.sh" >/dev/null
source "$(dirname "$0")/airflow-env.sh"
CONF="${1:-{\}}"
LOG="$AIRFLOW_HOME/demo-run.log"
echo "movielens_recsys: one run with airflow dags test (full log: $LOG)"
status=0
airflow dags test movielens_recsys -c "$CONF" 2>&1 | tee "$LOG" \
  | grep --line-buffered -E '\[DAG TEST\] starting task_id=|\[recsys_(tasks|airflow)[a-z_.]*\]' \
  | sed -u -E -e 's/.*\[DAG TEST\] starting task_id=([^ ]+).*/  \1/' \
              -e 's/^[0-9T:.-]+Z \[[a-z ]+\] (.*) \[recsys_[a-z_.]+\].*/      \1/' || status=$?
run_id=$(grep -o 'DagRun Finished: .*run_id=[^,]*' "$LOG" | tail -1 | sed -E 's/.*run_id=//')
if [[ -n "$run_id" ]]; then
  echo; echo "== task states of $run_id"
  airflow tasks states-for-dag-run movielens_recsys "$run_id" -o plain 2>/dev/null \
    | awk 'NR > 1 {printf "  %-32s %s\n", $3, $4}'
fi
if [[ "$status" != 0 ]]; then
  echo; echo "The run failed:"
  grep -E '^airflow\.sdk\.exceptions\.AirflowFailException: |^[a-zA-Z_.]+(Error|Exception): ' "$LOG" | tail -1 \
    | sed -E 's/^airflow\.sdk\.exceptions\.AirflowFailException: /  /' >&2
  echo "(full log: $LOG)" >&2
  exit "$status"
fi
# Toy Story (1995) and Star Wars: Episode IV (1977) in MovieLens ids.
for movie in ${RECSYS_DEMO_MOVIES:-1 260}; do
  echo; echo "== movies like $movie =="
  recsys recommend --movie-id "$movie" -k 10
done
