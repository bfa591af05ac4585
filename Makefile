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

# The suite on one pytest-xdist worker per core (at most 4), a test file to a worker, the slow files dealt
# first (tests/conftest.py). TEST_WORKERS=0: all in this process.
TEST_WORKERS ?= auto

test: install browser
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --maxprocesses 4 --dist loadfile --no-loadscope-reorder

# Headless Chromium for the plugin's browser test (Debian packages; needs root, as in CI).
browser:
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  echo "chromium not installed (not root): the browser test will be skipped"

# Figures only (printed; nothing asserted). The real releases come from BENCH_DATA (ml-1m, ml-100k; see
# ../shared/data/README.md); scale.py and serving_latency.py write their own synthetic data. On two CPU
# cores the ml-1m training dominates. Left out, as they take hours there: bench/quality.py on ml-1m
# (three ml-1m trainings), bench/scale.py beyond 1m, bench/peers.py (RecBole, its own virtualenv).
BENCH_DATA ?= ../shared/data

bench: install
	$(BIN)/python bench/dag_import.py
	$(BIN)/python bench/ingest_preprocess.py --release $(BENCH_DATA)/ml-1m
	nice -n 10 $(BIN)/python bench/scale.py --sizes 1m --until validate_graph --work $(CURDIR)/.recsys/bench-scale
	$(BIN)/python bench/train_ml1m.py --data $(BENCH_DATA)/ml-1m
	$(BIN)/python bench/quality.py --data $(BENCH_DATA)/ml-100k
	$(BIN)/python bench/serving_latency.py

clean:
	rm -rf $(VENV) .recsys airflow_home
