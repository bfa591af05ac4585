#!/usr/bin/env bash
# Run the whole DAG once, in one process (`airflow dags test`), then ask the live model for
# recommendations for two well-known movies. Usage: scripts/airflow-demo.sh ['{"epochs": 2}']
# The snapshot is RECSYS_SNAPSHOT (default: the official ml-1m URL); the stores are the embedded
# defaults under RECSYS_HOME (Milvus Lite file, SQLite) unless RECSYS_MILVUS_URI / RECSYS_DB_URL say otherwise.
set -euo pipefail
"$(dirname "$0")/airflow-setup.sh"
source "$(dirname "$0")/airflow-env.sh"
CONF="${1:-{\}}"
airflow dags test movielens_recsys -c "$CONF"  # exits non-zero when the run fails
# Toy Story (1995) and Star Wars: Episode IV (1977) in MovieLens ids.
for movie in ${RECSYS_DEMO_MOVIES:-1 260}; do
  echo; echo "== movies like $movie =="
  recsys recommend --movie-id "$movie" -k 10
done
