"""The DAG file: imports fast without heavy libraries, has the expected tasks, wiring, retries and params."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAG_FILE = REPO / "dags" / "movielens_recsys.py"

GATES = ("validate_raw", "validate_processed", "validate_graph", "validate_embeddings", "quality_gate",
         "smoke_test")
IO_STEPS = ("ingest", "load_vectors", "load_catalog", "promote")


def test_imports_fast_without_heavy_libraries() -> None:
    probe = f"""
import importlib.util, json, sys, time
t = time.perf_counter()
spec = importlib.util.spec_from_file_location("movielens_recsys", {str(DAG_FILE)!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
seconds = time.perf_counter() - t
heavy = sorted(m for m in ("torch", "dgl", "pandas", "pyarrow", "pymilvus", "great_expectations")
               if m in sys.modules)
print(json.dumps({{"seconds": seconds, "heavy": heavy, "dag_id": module.dag.dag_id}}))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO,
                         env=os.environ.copy(), timeout=60, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert facts["dag_id"] == "movielens_recsys"
    assert facts["heavy"] == [], f"the DAG file imports heavy modules at parse time: {facts['heavy']}"
    assert facts["seconds"] < 2.0, f"DAG import took {facts['seconds']:.2f}s"


def test_dagbag_has_no_import_errors() -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FILE), known_pools={"default_pool", "gpu"})
    assert bag.import_errors == {}
    assert list(bag.dags) == ["movielens_recsys"]


def test_one_task_per_pipeline_step_in_order(recsys_dag) -> None:
    from recsys_tasks import pipeline

    assert [t.task_id for t in recsys_dag.tasks] == ["resolve_config", *pipeline.NAMES]
    order = ["resolve_config", *pipeline.NAMES]
    for before, after in pairwise(order):
        assert before in recsys_dag.get_task(after).upstream_task_ids, f"{before} must run before {after}"


def test_each_task_reads_what_its_step_function_takes(recsys_dag) -> None:
    from recsys_tasks import pipeline

    for step in pipeline.NAMES:
        task = recsys_dag.get_task(step)
        n_inputs = len(inspect.signature(getattr(pipeline, step)).parameters) - 1  # minus settings
        assert len(task.op_args) == 1 + n_inputs, step  # cfg + one step folder per StepResult argument
        assert task.op_args[0].operator.task_id == "resolve_config"


def test_schedule_and_run_policy(recsys_dag) -> None:
    assert recsys_dag.timetable.expression == "0 2 * * *"
    assert recsys_dag.catchup is False
    assert recsys_dag.max_active_runs == 1
    assert {"recsys", "movielens"} <= set(recsys_dag.tags)
    assert "airflow backfill create" in recsys_dag.doc_md


def test_retries_pools_and_queues(recsys_dag, monkeypatch: pytest.MonkeyPatch) -> None:
    for gate in (*GATES, "resolve_config"):
        assert recsys_dag.get_task(gate).retries == 0, gate
    for step in IO_STEPS:
        task = recsys_dag.get_task(step)
        assert task.retries >= 2 and task.retry_exponential_backoff >= 2, step
        assert task.max_retry_delay is not None, step
    train = recsys_dag.get_task("train")
    assert train.pool == "gpu" and train.pool_slots == 1
    assert all(t.pool != "gpu" for t in recsys_dag.tasks if t.task_id != "train")
    assert recsys_dag.get_task("promote").outlets, "promote announces the live model as an asset"


def test_train_queue_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setenv("RECSYS_TRAIN_QUEUE", "gpu")
    spec = importlib.util.spec_from_file_location("movielens_recsys_gpu", DAG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.dag.get_task("train").queue == "gpu"
    assert module.dag.get_task("ingest").queue != "gpu"


def test_params_defaults_validate(recsys_dag) -> None:
    values = recsys_dag.params.validate()
    assert values == {"snapshot": "", "epochs": None, "embed_dim": None, "lr": None, "device": "auto",
                      "sampler": "auto",
                      "skip_checksum": False, "force": False, "promote": "yes"}


@pytest.mark.parametrize("name,value", [("epochs", 3), ("embed_dim", 16), ("lr", 0.02), ("device", "cuda"),
                                        ("sampler", "torch"), ("promote", "no"), ("force", True),
                                        ("snapshot", "/data/snapshots/")])
def test_params_accept_good_values(recsys_dag, name: str, value: object) -> None:
    assert recsys_dag.params.get_param(name).resolve(value) == value


@pytest.mark.parametrize("name,value", [("epochs", 0), ("epochs", "many"), ("embed_dim", 2),
                                        ("lr", 0), ("lr", 2.0),
                                        ("device", "tpu"), ("sampler", "pyg"), ("promote", "maybe"),
                                        ("force", "yes"), ("snapshot", 3)])
def test_params_reject_bad_values(recsys_dag, name: str, value: object) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        recsys_dag.params.get_param(name).resolve(value)


def test_every_param_has_a_form_title_and_description(recsys_dag) -> None:
    for name in recsys_dag.params:
        param = recsys_dag.params.get_param(name)
        assert param.schema.get("title") and param.description, name
