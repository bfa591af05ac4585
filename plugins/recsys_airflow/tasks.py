"""A pipeline step as an Airflow task: its options by kind, and what a task does around the step.

The DAG file only wires tasks; what each one does lives here so the DAG reads like Airflow's examples.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from recsys_tasks.pipeline import Step

log = logging.getLogger(__name__)

# Params that become settings overrides; None (an empty form field) or False (a cleared checkbox)
# leaves the RECSYS_* environment's value in force.
SETTING_PARAMS = ("epochs", "embed_dim", "lr", "device", "sampler", "skip_checksum", "force")
TRAIN_POOL = "gpu"
PROMOTE = "promote"


def task_options(step: Step, train_queue: str) -> dict[str, Any]:
    """Retries by kind: a gate never retries (its verdict stands), an io step retries with backoff,
    training runs alone in the one-slot `gpu` pool on the training queue."""
    if step.kind == "gate":
        return {"retries": 0}
    if step.kind == "io":
        return {"retries": 3, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": 2.0,
                "max_retry_delay": timedelta(minutes=10)}
    if step.name == "train":
        return {"retries": 1, "pool": TRAIN_POOL, "queue": train_queue, "execution_timeout": timedelta(hours=6)}
    return {"retries": 1, "retry_delay": timedelta(minutes=1)}


def resolve_config(params: dict[str, Any], run_date: date) -> dict[str, Any]:
    """This run's settings overrides: the params set, and the dated snapshot for `run_date`.

    Validates the whole settings (connections included) so a bad setting fails the first task, not
    hours later. Holds no store URL or password: it is the XCom every step task reads.
    """
    from recsys_airflow.stores import settings
    from recsys_tasks.data.snapshots import resolve_snapshot

    cfg = {k: params[k] for k in SETTING_PARAMS if params.get(k) not in (None, False)}
    cfg["snapshot"] = resolve_snapshot(params.get("snapshot") or settings().snapshot, run_date)
    cfg["run_date"] = run_date.isoformat()  # the registry orders models by data recency, then run date
    log.info("run date %s: settings %s", run_date, settings(**cfg).public())
    return cfg


def run_date(ctx: dict[str, Any]) -> date:
    """A scheduled or backfill run's logical date; a manual or asset-triggered run's trigger time."""
    run = ctx["dag_run"]
    return (ctx.get("logical_date") or run.run_after or datetime.now(UTC)).date()


def run_step(step: Step, cfg: dict[str, Any], inputs: Sequence[str]) -> str:
    """Run one pipeline step on the step folders it reads; record the outcome; return its folder.

    Bad input and failed gates fail the task for good (a retry cannot fix them); anything else
    fails it with its own error and the task's retries apply. `promote` is skipped when the live
    model did not change, so the live-model asset event means a new model is served.
    """
    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from recsys_airflow.stores import settings as store_settings
    from recsys_tasks import pipeline
    from recsys_tasks.artifacts import load_result
    from recsys_tasks.errors import InputError
    from recsys_tasks.release.promotion import moved

    ctx = get_current_context()
    if step.name == PROMOTE and ctx["params"].get("promote") == "no":
        raise AirflowSkipException("param promote=no: the model stays a candidate")
    settings, started = store_settings(**cfg), datetime.now(UTC)
    try:
        result = pipeline.run_one(settings, step.name, [load_result(p) for p in inputs])
    except Exception as exc:
        record(settings, ctx["run_id"], step.name, "failed", started)
        if isinstance(exc, InputError):
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
        raise
    record(settings, ctx["run_id"], step.name, "skipped" if result.skipped else "done", started,
           result.manifest.get("counts"))
    if step.name == PROMOTE and not moved(result):
        raise AirflowSkipException(f"{result.manifest.get('model_version')}: the live model did not change")
    return str(result.path)


def record(settings: Any, run_id: str, step: str, status: str, started: datetime,
           counts: dict[str, Any] | None = None) -> None:
    """The step's outcome in the catalog's `runs` table (what the Recommender view lists)."""
    from recsys_tasks.stores.catalog import record_run

    finished = datetime.now(UTC)
    try:
        record_run(settings, run_id, step, status, started_at=started, finished_at=finished,
                   duration_s=(finished - started).total_seconds(), counts=counts)
    except Exception as exc:  # noqa: BLE001 - the run log must not fail (or mask the error of) a step
        log.warning("could not record %s=%s in the catalog: %s", step, status, exc)
