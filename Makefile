# The two commands a new user runs (see README): `make demo` and `make test`.
# Installing is idempotent: the virtualenv is rebuilt only when requirements.txt or pyproject.toml change.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DGLBACKEND := pytorch
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo ui test browser bench clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3 ...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/pip check
	touch $(STAMP)

# The main job end to end on the embedded defaults (Milvus Lite, SQLite) and the default snapshot:
# the whole DAG once with `airflow dags test` (a short summary here, Airflow's output in
# airflow_home/demo-run.log), then recommendations from the live model. Alerts are off.
demo: install
	scripts/airflow-demo.sh

# Airflow's UI, scheduler and API server (with the recommendations API and view) on one Milvus server.
ui: install
	scripts/airflow-ui.sh

test: install browser
	$(BIN)/python -m pytest

# Headless Chromium for the plugin's browser test (Debian packages; needs root, as in CI).
browser:
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  echo "chromium not installed (not root): the browser test will be skipped"

bench: install
	$(BIN)/python bench/dag_import.py
	$(BIN)/python bench/ingest_preprocess.py
	$(BIN)/python bench/baselines_ml1m.py
	$(BIN)/python bench/train_ml1m.py
	$(BIN)/python bench/serving_latency.py

clean:
	rm -rf $(VENV) .recsys airflow_home
