"""The DAG file: imports without heavy libraries; one task per pipeline step, in the task group of its
stage, wired in table order; retries, pools and queues by kind; nullable params. (Import time is a
benchmark, bench/dag_import.py, not a test: a loaded machine makes it slow.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest

from recsys_tasks.pipeline import STEPS

REPO = Path(__file__).resolve().parents[2]
DAG_FILE = REPO / "dags" / "movielens_recsys.py"


def task_id(step) -> str:
    return f"{step.stage}.{step.name}"


def test_imports_without_heavy_libraries() -> None:
    probe = f"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("movielens_recsys", {str(DAG_FILE)!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
heavy = sorted(m for m in ("torch", "dgl", "pandas", "pyarrow", "pymilvus", "great_expectations",
                           "recsys_tasks.stores.catalog") if m in sys.modules)
print(json.dumps({{"heavy": heavy, "dag_id": module.dag.dag_id}}))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO,
                         env=os.environ.copy(), timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert facts["dag_id"] == "movielens_recsys"
    assert facts["heavy"] == [], f"the DAG file imports heavy modules at parse time: {facts['heavy']}"


def test_dagbag_has_no_import_errors() -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FILE), known_pools={"default_pool", "gpu"})
    assert bag.import_errors == {}
    assert list(bag.dags) == ["movielens_recsys"]


def test_one_task_per_step_in_the_group_of_its_stage(recsys_dag) -> None:
    assert [t.task_id for t in recsys_dag.tasks] == ["resolve_config", *(task_id(s) for s in STEPS)]
    groups = recsys_dag.task_group.children
    assert [g for g in groups if g != "resolve_config"] == ["data", "model", "release"]
    for step in STEPS:
        assert recsys_dag.get_task(task_id(step)).task_group.group_id == step.stage, step.name


def test_steps_run_in_table_order_and_read_what_the_table_says(recsys_dag) -> None:
    order = ["resolve_config", *(task_id(s) for s in STEPS)]
    for before, after in pairwise(order):
        assert before in recsys_dag.get_task(after).upstream_task_ids, f"{before} must run before {after}"
    stage = {s.name: s.stage for s in STEPS}
    for step in STEPS:
        args = recsys_dag.get_task(task_id(step)).op_args
        assert args[0].operator.task_id == "resolve_config"
        assert [a.operator.task_id for a in args[1:]] == [f"{stage[r]}.{r}" for r in step.reads], step.name


def test_schedule_and_run_policy(recsys_dag) -> None:
    assert recsys_dag.timetable.expression == "0 2 * * *"
    assert recsys_dag.catchup is False
    assert recsys_dag.max_active_runs == 1
    assert {"recsys", "movielens"} <= set(recsys_dag.tags)
    assert "--max-active-runs 1" in recsys_dag.doc_md


def test_retries_pools_and_queues_follow_the_step_kind(recsys_dag) -> None:
    assert recsys_dag.get_task("resolve_config").retries == 0
    for step in STEPS:
        task = recsys_dag.get_task(task_id(step))
        if step.kind == "gate":
            assert task.retries == 0, step.name
        elif step.kind == "io":
            assert task.retries >= 2 and task.retry_exponential_backoff >= 2, step.name
            assert task.max_retry_delay is not None, step.name
        else:
            assert task.retries >= 1, step.name
        assert (task.pool == "gpu") == (step.name == "train"), step.name
    assert recsys_dag.get_task("model.train").pool_slots == 1
    assert recsys_dag.get_task("release.promote").outlets, "promote announces the live model as an asset"
    assert all(not t.outlets for t in recsys_dag.tasks if t.task_id != "release.promote")


def test_every_task_alerts_on_failure(recsys_dag) -> None:
    from recsys_airflow.alerts import FailureAlert

    for task in recsys_dag.tasks:
        assert any(isinstance(cb, FailureAlert) for cb in task.on_failure_callback), task.task_id


def test_train_queue_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setenv("RECSYS_TRAIN_QUEUE", "gpu")
    spec = importlib.util.spec_from_file_location("movielens_recsys_gpu", DAG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.dag.get_task("model.train").queue == "gpu"
    assert all(t.queue != "gpu" for t in module.dag.tasks if t.task_id != "model.train")


def test_params_default_to_the_environment(recsys_dag) -> None:
    """Every setting param is empty by default (None), so RECSYS_* applies; the form submits as is."""
    values = recsys_dag.params.validate()
    assert values == {"snapshot": None, "epochs": None, "embed_dim": None, "lr": None, "device": None,
                      "sampler": None, "skip_checksum": False, "force": False, "promote": "yes"}


@pytest.mark.parametrize("name,value", [("epochs", 3), ("embed_dim", 16), ("lr", 0.02), ("device", "cuda"),
                                        ("device", None), ("sampler", "torch"), ("sampler", None),
                                        ("promote", "no"), ("force", True), ("snapshot", "/data/snapshots/"),
                                        ("snapshot", None), ("snapshot", "")])
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


def test_the_readme_and_the_dag_doc_give_the_same_backfill_command(recsys_dag) -> None:
    from tests.production.stack import readme_backfill_command

    in_doc = " ".join(recsys_dag.doc_md.split("airflow backfill create", 1)[1].split("\n\n")[0].replace("\\", " ")
                      .split())
    assert readme_backfill_command().split() == ["airflow", "backfill", "create", *in_doc.split()]
    assert "--max-active-runs 1" in readme_backfill_command()
