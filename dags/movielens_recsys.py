"""
### movielens_recsys: nightly PinSage movie recommender

Every night at 02:00 UTC: MovieLens snapshot → validated tables → user–movie graph → PinSage
embeddings → evaluation and quality gate → vectors in Milvus, movies in the SQL catalog → smoke
test → promotion (the Milvus alias `movies` switches to the new model). One task per step of
`recsys_tasks.pipeline`; each task runs the library's step and passes its step folder on (XCom
holds paths, never data). Steps are idempotent: a step whose outputs exist for the same inputs,
settings and code is skipped, so re-running a task, a run or a date changes nothing.

**Gates** (`validate_*`, `quality_gate`, `smoke_test`) never retry: a failure stops the run, its
report sits in the step's `.failed` folder, and the model being served stays as it was.
I/O steps (`ingest`, `load_vectors`, `load_catalog`, `promote`) retry with exponential backoff.
`train` runs in the one-slot pool `gpu` (two trainings never share a GPU) on the queue named by
`RECSYS_TRAIN_QUEUE` (the compose GPU worker listens on `gpu`).

**Params** (trigger form; an empty field or a cleared checkbox keeps the `RECSYS_*` environment's setting):
`snapshot` (URL, .zip, release folder, or a dated folder/URL prefix, see below), `epochs`,
`embed_dim`, `lr`, `device` (auto/cpu/cuda), `sampler` (auto/dgl/torch), `skip_checksum`, `force`
(redo every step), `promote` (`no`: stop after `smoke_test`; `promote` is skipped).

**Stores**: Airflow Connection `recsys_mysql` (MySQL: host, port, login, password, schema) becomes
the catalog URL; Connection `recsys_milvus` (host, port) or Variable `recsys_milvus` (a URI) the
Milvus URI. Without them the library's settings apply (`RECSYS_DB_URL`, `RECSYS_MILVUS_URI`).

**Backfills**: a run for date D reads the newest snapshot dated at or before D when `snapshot`
is a dated source (`snapshots/2026-11-01/ml-1m.zip`, …, or an `https://…/` prefix with an
`index.txt`; see `recsys_tasks/data/snapshots.py`). Runs without a logical date (manual, asset
triggered) use the time they were triggered.

    airflow backfill create --dag-id movielens_recsys \\
        --from-date 2026-11-01 --to-date 2026-11-08 --max-active-runs 1

creates the nightly runs Nov 1 … Nov 7 (02:00 UTC; `--dry-run` lists them) and runs them one at a
time, oldest first. Keep `--max-active-runs 1`: a backfill's own limit (default 10) replaces the
DAG's `max_active_runs=1`. A date whose snapshot was already processed is a no-op (every step
skips); `--reprocess-behavior completed` re-runs finished dates just as cheaply.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Asset, Param, chain, dag, task

from recsys_tasks.pipeline import BY_NAME, STEPS

SETTING_PARAMS = ("epochs", "embed_dim", "lr", "device", "sampler", "skip_checksum", "force")
LIVE_MODEL = Asset("recsys://milvus/movies")
log = logging.getLogger(__name__)


def _task_options(step: str) -> dict[str, Any]:
    kind = BY_NAME[step].kind
    if kind == "gate":
        return {"retries": 0}
    if kind == "io":
        return {"retries": 3, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": 2.0,
                "max_retry_delay": timedelta(minutes=10)}
    if step == "train":
        return {"retries": 1, "pool": "gpu", "queue": os.environ.get("RECSYS_TRAIN_QUEUE") or "default",
                "execution_timeout": timedelta(hours=6)}
    return {"retries": 1, "retry_delay": timedelta(minutes=1)}


def _store_urls() -> dict[str, str]:
    """Catalog and Milvus URLs from Airflow Connections/Variables; absent ones leave the library's settings.

    Read in every task rather than passed through XCom, so passwords never land in the metadata DB.
    """
    from airflow.sdk import Connection, Variable
    from airflow.sdk.exceptions import AirflowNotFoundException
    from sqlalchemy.engine import URL

    out: dict[str, str] = {}
    try:
        c = Connection.get("recsys_mysql")
        out["db_url"] = URL.create("mysql+pymysql", username=c.login or None, password=c.password or None,
                                   host=c.host, port=c.port or 3306,
                                   database=c.schema or None).render_as_string(hide_password=False)
    except AirflowNotFoundException:
        pass
    try:
        c = Connection.get("recsys_milvus")
        out["milvus_uri"] = f"http://{c.host}:{c.port or 19530}"
    except AirflowNotFoundException:
        if uri := Variable.get("recsys_milvus", default=None):
            out["milvus_uri"] = uri
    return out


def _settings(cfg: dict[str, Any]):  # -> recsys_tasks.config.Settings (imported lazily)
    from recsys_tasks.config import load_settings

    return load_settings(**cfg, **_store_urls())


@task(retries=0, multiple_outputs=False)
def resolve_config() -> dict[str, Any]:
    """Validated settings overrides for this run: the params and the dated snapshot for its date."""
    from airflow.sdk import get_current_context

    from recsys_tasks.data.snapshots import resolve_snapshot

    ctx = get_current_context()
    params, run = ctx["params"], ctx["dag_run"]
    when = ctx.get("logical_date") or run.run_after or datetime.now(UTC)
    # Empty params and cleared checkboxes leave the RECSYS_* environment's settings in force.
    cfg = {k: params[k] for k in SETTING_PARAMS if params.get(k) not in (None, False)}
    source = params.get("snapshot") or _settings({}).snapshot
    cfg["snapshot"] = resolve_snapshot(source, when.date())
    settings = _settings(cfg)  # fails here, not hours later, on a bad setting or connection
    log.info("run date %s: settings %s", when.date(), settings.public())
    return cfg


def step_task(step: str):
    @task(task_id=step, **_task_options(step), outlets=[LIVE_MODEL] if step == "promote" else [])
    def run_step(cfg: dict[str, Any], *inputs: str) -> str:
        from airflow.sdk import get_current_context
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from recsys_tasks import pipeline
        from recsys_tasks.artifacts import load_result
        from recsys_tasks.errors import InputError

        ctx = get_current_context()
        if step == "promote" and ctx["params"]["promote"] == "no":
            raise AirflowSkipException("param promote=no: the model stays a candidate")
        settings, started = _settings(cfg), datetime.now(UTC)
        try:
            result = getattr(pipeline, step)(settings, *(load_result(p) for p in inputs))
        except Exception as exc:
            _record(settings, ctx["run_id"], step, "failed", started)
            if isinstance(exc, InputError):  # bad input or a failed gate: retrying cannot fix it
                raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
            raise
        _record(settings, ctx["run_id"], step, "skipped" if result.skipped else "done", started,
                result.manifest.get("counts"))
        return str(result.path)

    return run_step


def _record(settings, run_id: str, step: str, status: str, started: datetime,
            counts: dict[str, Any] | None = None) -> None:
    """The step's outcome in the catalog's `runs` table (what the Recommender view lists)."""
    from recsys_tasks.stores.catalog import record_run

    finished = datetime.now(UTC)
    try:
        record_run(settings, run_id, step, status, started_at=started, finished_at=finished,
                   duration_s=(finished - started).total_seconds(), counts=counts)
    except Exception as exc:  # noqa: BLE001 - the run log must not fail (or mask the error of) a step
        log.warning("could not record %s=%s in the catalog: %s", step, status, exc)


@dag(
    dag_id="movielens_recsys",
    schedule="0 2 * * *",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["recsys", "movielens", "pinsage", "ml"],
    doc_md=__doc__,
    default_args={"owner": "ml-platform"},
    params={
        "snapshot": Param("", type="string", title="Snapshot source",
                          description="URL, .zip, release folder, or dated folder / https prefix ending "
                                      "with '/'. Empty: RECSYS_SNAPSHOT or the official ml-1m URL."),
        "epochs": Param(None, type=["null", "integer"], minimum=1, maximum=500, title="Epochs",
                        description="Training epochs. Empty: RECSYS_EPOCHS or 8."),
        "embed_dim": Param(None, type=["null", "integer"], minimum=4, maximum=1024, title="Embedding size",
                           description="Embedding dimension. Empty: RECSYS_EMBED_DIM or 64."),
        "lr": Param(None, type=["null", "number"], exclusiveMinimum=0, maximum=1, title="Learning rate",
                    description="Adam learning rate. Empty: RECSYS_LR or 0.003."),
        "device": Param("auto", type="string", enum=["auto", "cpu", "cuda"], title="Device",
                        description="Training device; auto uses CUDA when present."),
        "sampler": Param("auto", type="string", enum=["auto", "dgl", "torch"], title="Neighbour sampler",
                         description="PinSAGE sampler; auto prefers DGL, else the torch-native one."),
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
    done: dict[str, Any] = {}
    for step in STEPS:
        done[step.name] = step_task(step.name)(cfg, *(done[r] for r in step.reads))
    chain(cfg, *done.values())  # the gates sit between the steps: nothing runs past a failed one


dag = movielens_recsys()
