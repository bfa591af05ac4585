"""
### movielens_recsys: nightly PinSage movie recommender

Every night at 02:00 UTC: MovieLens snapshot → validated tables → user–movie graph (task group
**data**) → PinSage embeddings, evaluation and quality gate (**model**) → vectors in Milvus, movies
in the SQL catalog, smoke test, promotion: the Milvus alias `movies` switches to the new model
(**release**). One task per step of `recsys_tasks.pipeline.STEPS`; each runs the library's step and
passes its step folder on (XCom holds paths, never data). Steps are idempotent: a step whose
outputs exist for the same inputs, settings and code is skipped, so re-running a task, a run or a
date changes nothing.

**Gates** (`validate_*`, `quality_gate`, `smoke_test`) never retry: a failure stops the run, its
report sits in the step's `.failed` folder, and the model being served stays as it was.
I/O steps (`ingest`, `load_vectors`, `load_catalog`, `promote`) retry with exponential backoff.
`train` runs in the one-slot pool `gpu` (two trainings never share a GPU) on the queue named by
`RECSYS_TRAIN_QUEUE` (the compose GPU worker listens on `gpu`). `promote` serves a model only if
its data is newer than the live model's (then the run's date decides), and is skipped when the live
model does not change; when it switches, the asset `recsys://milvus/movies` gets an event.

**Params** (trigger form; an empty field or a cleared checkbox keeps the `RECSYS_*` environment's
setting): `snapshot` (URL, .zip, release folder, or a dated folder/URL prefix, see below), `epochs`,
`embed_dim`, `lr`, `device` (auto/cpu/cuda), `sampler` (auto/dgl/torch), `skip_checksum`, `force`
(redo every step), `promote` (`no`: stop after `smoke_test`; `promote` is skipped).

**Stores**: the Airflow connections `recsys_mysql` (the catalog) and `recsys_milvus` (Milvus, with
login/password or an API key), else `RECSYS_DB_URL` / `RECSYS_MILVUS_URI` / `RECSYS_MILVUS_TOKEN`:
the same resolution for the tasks and the Recommender plugin (`plugins/recsys_airflow/stores.py`).

**Alerts**: with `RECSYS_ALERT_EMAIL` set, a task that fails for good sends an e-mail (run, step,
rule, report path) through the SMTP connection `recsys_smtp` (`plugins/recsys_airflow/alerts.py`).

**Backfills**: a run for date D reads the newest snapshot dated at or before D when `snapshot`
is a dated source (`snapshots/2026-11-01/ml-1m.zip`, …, or an `https://…/` prefix with an
`index.txt`; see `recsys_tasks/data/snapshots.py`). Runs without a logical date (manual, asset
triggered) use the time they were triggered.

    airflow backfill create --dag-id movielens_recsys \\
        --from-date 2026-11-01 --to-date 2026-11-04 --max-active-runs 1

creates the nightly runs Nov 1, 2 and 3 (02:00 UTC; `--dry-run` lists them) and runs them one at a
time, oldest first. Keep `--max-active-runs 1`: a backfill's own limit (default 10) replaces the
DAG's `max_active_runs=1`. A date whose snapshot was already processed is a no-op (every step
skips); `--reprocess-behavior completed` re-runs finished dates just as cheaply.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import Asset, Param, chain, dag, task, task_group
from recsys_airflow.alerts import FailureAlert
from recsys_airflow.tasks import task_options

from recsys_tasks.pipeline import BY_NAME

LIVE_MODEL = Asset("recsys://milvus/movies")
TRAIN_QUEUE = os.environ.get("RECSYS_TRAIN_QUEUE") or "default"


def step_task(name: str):
    """The Airflow task for one pipeline step: (this run's settings, the step folders it reads) -> its folder."""
    step = BY_NAME[name]

    @task(task_id=name, **task_options(step, TRAIN_QUEUE), outlets=[LIVE_MODEL] if name == "promote" else [])
    def run(cfg: dict[str, Any], *inputs: str) -> str:
        from recsys_airflow.tasks import run_step

        return run_step(step, cfg, inputs)

    return run


@task(retries=0)
def resolve_config() -> dict[str, Any]:
    """Validated settings overrides for this run: the params and the dated snapshot for its date."""
    from airflow.sdk import get_current_context
    from recsys_airflow.tasks import resolve_config, run_date

    ctx = get_current_context()
    return resolve_config(ctx["params"], run_date(ctx))


@task_group
def data(cfg: Any) -> dict[str, Any]:
    """Snapshot → validated tables → validated user–movie graph."""
    ingested = step_task("ingest")(cfg)
    raw_ok = step_task("validate_raw")(cfg, ingested)
    processed = step_task("preprocess")(cfg, ingested)
    processed_ok = step_task("validate_processed")(cfg, processed)
    graph = step_task("build_graph")(cfg, processed)
    graph_ok = step_task("validate_graph")(cfg, graph, processed)
    chain(raw_ok, processed, processed_ok, graph, graph_ok)  # nothing runs past a failed gate
    return {"preprocess": processed, "build_graph": graph, "gate": graph_ok}


@task_group
def model(cfg: Any, upstream: dict[str, Any]) -> dict[str, Any]:
    """Train PinSage, evaluate it against the baselines, judge it, export and check its embeddings."""
    processed, graph = upstream["preprocess"], upstream["build_graph"]
    trained = step_task("train")(cfg, processed, graph)
    evaluated = step_task("evaluate")(cfg, processed, graph, trained)
    judged = step_task("quality_gate")(cfg, processed, graph, evaluated)
    exported = step_task("export_embeddings")(cfg, graph, trained)
    exported_ok = step_task("validate_embeddings")(cfg, exported, processed)
    chain(upstream["gate"], trained, evaluated, judged, exported, exported_ok)
    return {**upstream, "evaluate": evaluated, "quality_gate": judged, "export_embeddings": exported,
            "gate": exported_ok}


@task_group
def release(cfg: Any, upstream: dict[str, Any]) -> None:
    """Load the vectors and the catalog, smoke-test the new collection, switch the live alias to it."""
    processed, exported = upstream["preprocess"], upstream["export_embeddings"]
    loaded = step_task("load_vectors")(cfg, exported, processed)
    catalog = step_task("load_catalog")(cfg, processed, upstream["evaluate"])
    smoke_ok = step_task("smoke_test")(cfg, loaded, exported, processed, upstream["build_graph"])
    promoted = step_task("promote")(cfg, upstream["quality_gate"], loaded)
    chain(upstream["gate"], loaded, catalog, smoke_ok, promoted)


@dag(
    dag_id="movielens_recsys",
    schedule="0 2 * * *",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["recsys", "movielens", "pinsage", "ml"],
    doc_md=__doc__,
    default_args={"owner": "ml-platform", "on_failure_callback": [FailureAlert()]},
    params={
        "snapshot": Param(None, type=["null", "string"], title="Snapshot source",
                          description="URL, .zip, release folder, or dated folder / https prefix ending "
                                      "with '/'. Empty: RECSYS_SNAPSHOT or the official ml-1m URL."),
        "epochs": Param(None, type=["null", "integer"], minimum=1, maximum=500, title="Epochs",
                        description="Training epochs. Empty: RECSYS_EPOCHS or 8."),
        "embed_dim": Param(None, type=["null", "integer"], minimum=4, maximum=1024, title="Embedding size",
                           description="Embedding dimension. Empty: RECSYS_EMBED_DIM or 64."),
        "lr": Param(None, type=["null", "number"], exclusiveMinimum=0, maximum=1, title="Learning rate",
                    description="Adam learning rate. Empty: RECSYS_LR or 0.01."),
        "device": Param(None, type=["null", "string"], enum=[None, "auto", "cpu", "cuda"], title="Device",
                        description="Training device; auto uses CUDA when present. Empty: RECSYS_DEVICE or auto."),
        "sampler": Param(None, type=["null", "string"], enum=[None, "auto", "dgl", "torch"],
                         title="Neighbour sampler",
                         description="PinSAGE sampler; auto prefers DGL, else the torch-native one. "
                                     "Empty: RECSYS_SAMPLER or auto."),
        "skip_checksum": Param(False, type="boolean", title="Skip checksum",
                               description="Accept a local copy of an official release without its md5."),
        "force": Param(False, type="boolean", title="Force",
                       description="Redo every step even when its outputs exist."),
        "promote": Param("yes", type="string", enum=["yes", "no"], title="Promote",
                         description="no: stop after smoke_test; the new model is loaded but not served."),
    },
)
def movielens_recsys() -> None:
    cfg = resolve_config()
    release(cfg, model(cfg, data(cfg)))


dag = movielens_recsys()
