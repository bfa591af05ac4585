#!/usr/bin/env bash
# Create or upgrade the project-local Airflow: metadata DB (SQLite under airflow_home/) and the `gpu` pool.
# Idempotent: safe to run before every demo or UI start.
set -euo pipefail
source "$(dirname "$0")/airflow-env.sh"
mkdir -p "$AIRFLOW_HOME" "$RECSYS_HOME"
airflow db migrate
# One slot: two trainings never share a GPU (the DAG's train task runs in this pool).
airflow pools set gpu 1 "one training at a time per GPU"
echo "Airflow ready: AIRFLOW_HOME=$AIRFLOW_HOME, RECSYS_HOME=$RECSYS_HOME"
