"""The production shape, end to end, on this machine's PostgreSQL, Redis and MariaDB (tests/production/stack.py:
CeleryExecutor, FAB auth, a default and a `gpu` Celery worker, stores only through Airflow connections).

In order, as an operator would: trigger through the REST API with params (JWT auth) and wait for
success; trigger again (every step skips, nothing is re-promoted); trigger a corrupted snapshot (it
fails at validate_raw, the served model is unchanged, an alert e-mail names the run, step, rule and
report); run the README's backfill command over three dated snapshots (one run at a time, oldest
first, each date on its own snapshot, and an older snapshot's model never replaces the newer live
one; the second night's snapshot is a copy of the first's, a night without new data). Throughout, the plugin's API answers only real users with read access, and no embedded store
(SQLite, Milvus Lite) appears in the shared home. Generous timeouts and no timing asserts: it must
pass on a loaded machine.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from recsys_tasks.pipeline import NAMES as STEPS
from tests.production.smtp_sink import SmtpSink, body
from tests.production.stack import BIN, REPO, Stack, readme_backfill_command, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.mysql]
N_USERS = 120
DATES = ("2026-11-01", "2026-11-02", "2026-11-03")
CONF = {"epochs": 2, "embed_dim": 16, "lr": 0.02, "device": "cpu", "skip_checksum": True}  # = the stack's env


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from recsys_tasks.data.synthetic import write_snapshot

    root = tmp_path_factory.mktemp("production")
    snapshots = root / "snapshots"
    write_snapshot(snapshots / DATES[0], n_users=N_USERS, fmt="ml-1m", seed=1)
    shutil.copytree(snapshots / DATES[0], snapshots / DATES[1])  # a night without new data
    write_snapshot(snapshots / DATES[2], n_users=N_USERS + 40, fmt="ml-1m", seed=3)
    with SmtpSink() as smtp:
        stack = Stack(root, smtp.airflow_connection())
        stack.smtp = smtp
        try:
            stack.create_databases()
            stack.init()
            stack.start_all()
            yield stack
        finally:
            stack.close()


@pytest.fixture(scope="module")
def tokens(stack: Stack) -> dict[str, str]:
    return {user: stack.token(user) for user in ("admin", "viewer", "nobody")}


@pytest.fixture(scope="module")
def settings(stack: Stack):
    """The test's own view of the stores (read directly, next to what the plugin reports)."""
    from recsys_tasks.config import load_settings

    return load_settings(home=stack.home, db_url=stack.catalog_url, milvus_uri=stack.milvus_uri)


def live_version(stack: Stack, token: str) -> str | None:
    health = stack.api("GET", "/recsys/health", token)
    assert health.status_code in (200, 503), health.text
    return health.json()["model_version"]


def recorded(settings, run_id: str) -> dict[str, str]:
    from sqlalchemy import select

    from recsys_tasks.stores.catalog import Catalog, runs

    with Catalog.from_settings(settings).engine.connect() as conn:
        return {r.step: r.status for r in conn.execute(select(runs).where(runs.c.run_id == run_id))}


def live_model_events(stack: Stack, token: str) -> list[dict[str, Any]]:
    answer = stack.api("GET", "/api/v2/assets/events", token, params={"limit": 100})
    assert answer.status_code == 200, answer.text
    return [e for e in answer.json()["asset_events"] if e["uri"] == "recsys://milvus/movies"]


@pytest.fixture(scope="module")
def first(stack: Stack, tokens: dict[str, str]) -> dict[str, Any]:
    admin = tokens["admin"]
    wait_until("the DAG parsed by the dag-processor",
               lambda: stack.api("GET", "/api/v2/dags/movielens_recsys", admin).status_code == 200,
               600, 5, stack.log_tails)
    # The latest nightly's date, triggered before unpausing: unpausing would otherwise add that
    # scheduled run (catchup=False still runs the latest interval) and do this run's work first.
    now = datetime.now(UTC)
    nightly = now.replace(hour=2, minute=0, second=0, microsecond=0) - timedelta(days=int(now.hour < 2))
    run_id = stack.trigger(admin, {**CONF, "snapshot": str(stack.root / "snapshots")}, nightly.isoformat())
    assert stack.api("PATCH", "/api/v2/dags/movielens_recsys", admin, json={"is_paused": False}).status_code == 200
    return {"run_id": run_id, "run": stack.wait_for_run(admin, run_id)}


def test_first_run_through_the_rest_api_trains_on_the_gpu_queue_and_promotes(
        stack: Stack, tokens: dict[str, str], first: dict[str, Any], settings) -> None:
    admin, run_id = tokens["admin"], first["run_id"]
    states = stack.task_states(admin, run_id)
    assert first["run"]["state"] == "success", f"{states}\n{stack.log_tails()}"
    assert {s: ti["state"] for s, ti in states.items()} == {s: "success" for s in ("resolve_config", *STEPS)}
    assert (states["train"]["queue"], states["train"]["pool"]) == ("gpu", "gpu")  # only the gpu worker listens
    assert all(ti["queue"] == "default" for s, ti in states.items() if s != "train")
    # the newest dated snapshot as of the run's date
    assert stack.xcom(admin, run_id, "resolve_config")["snapshot"] == str(stack.root / "snapshots" / DATES[-1])
    from recsys_tasks.release.promotion import status

    live = status(settings)["live"]
    assert live is not None and live["status"] == "active"
    assert live_version(stack, tokens["viewer"]) == live["model_version"]
    assert recorded(settings, run_id) == {s: "done" for s in STEPS}
    assert len(live_model_events(stack, admin)) == 1
    assert stack.smtp.messages == []


def test_the_plugin_answers_only_readers(stack: Stack, tokens: dict[str, str], first: dict[str, Any]) -> None:
    import jwt

    for path in ("/recsys/health", "/recsys-ui/status.json", "/recsys-ui/"):
        assert stack.api("GET", path, None).status_code == 401, path
        forged = jwt.encode(jwt.decode(tokens["viewer"], options={"verify_signature": False}),
                            "a-guessed-secret-that-is-long-enough-for-hs512-and-then-some-more", algorithm="HS512")
        assert stack.api("GET", path, forged).status_code == 403, path
        assert stack.api("GET", path, tokens["nobody"]).status_code == 403, path  # FAB role Public
        assert stack.api("GET", path, tokens["viewer"]).status_code == 200, path
    movie = stack.api("GET", "/recsys/movies", tokens["viewer"], params={"query": "a", "limit": 1}).json()[0]
    recs = stack.api("POST", "/recsys/recommendations", tokens["viewer"],
                     json={"history": [movie["movie_id"]], "k": 5})
    assert recs.status_code == 200 and len(recs.json()["items"]) == 5, recs.text
    assert stack.api("GET", "/api/v2/dags", None).status_code == 401  # Airflow's own API, the same rule


def test_a_second_run_skips_every_step(stack: Stack, tokens: dict[str, str], first: dict[str, Any],
                                       settings) -> None:
    admin = tokens["admin"]
    before = live_version(stack, tokens["viewer"])
    run_id = stack.trigger(admin, {**CONF, "snapshot": str(stack.root / "snapshots")})
    assert stack.wait_for_run(admin, run_id)["state"] == "success"
    states = {s: ti["state"] for s, ti in stack.task_states(admin, run_id).items()}
    assert states == {**{s: "success" for s in ("resolve_config", *STEPS)}, "promote": "skipped"}
    # smoke_test always re-checks the live stores (it only reads them); every other step is a skip
    assert {s: v for s, v in recorded(settings, run_id).items() if s != "smoke_test"} == {
        s: "skipped" for s in STEPS if s != "smoke_test"}
    assert live_version(stack, tokens["viewer"]) == before
    assert len(live_model_events(stack, admin)) == 1, "nothing new went live: no asset event"


def test_a_corrupted_snapshot_fails_at_its_gate_alerts_and_keeps_the_live_model(
        stack: Stack, tokens: dict[str, str], first: dict[str, Any], settings) -> None:
    admin = tokens["admin"]
    before = live_version(stack, tokens["viewer"])
    corrupt = stack.root / "corrupt" / "ml-1m"
    shutil.copytree(stack.root / "snapshots" / DATES[-1], corrupt)
    ratings = corrupt / "ratings.dat"
    lines = ratings.read_text(encoding="latin-1").splitlines()
    user, movie, _, stamp = lines[3].split("::")
    lines[3] = f"{user}::{movie}::9::{stamp}"  # parses, but a rating of 9 breaks the 1..5 rule
    ratings.write_text("\n".join(lines) + "\n", encoding="latin-1")

    run_id = stack.trigger(admin, {**CONF, "snapshot": str(corrupt)})
    assert stack.wait_for_run(admin, run_id)["state"] == "failed"
    states = {s: ti["state"] for s, ti in stack.task_states(admin, run_id).items()}
    assert states["ingest"] == "success" and states["validate_raw"] == "failed"
    assert all(states[s] == "upstream_failed" for s in STEPS[STEPS.index("validate_raw") + 1:])
    assert live_version(stack, tokens["viewer"]) == before

    [alert] = stack.smtp.wait_for(1)  # sent by the Celery worker's task process
    assert alert["To"] == "ml-oncall@test.local"
    assert f"{run_id}: validate_raw failed (rule rating_in_allowed_set)" in alert["Subject"]
    [report] = (stack.home / "artifacts" / "validate_raw").glob("*.failed/report.json")
    assert str(report) in body(alert) and run_id in body(alert)


def test_the_readme_backfill_runs_the_dates_in_order_and_never_serves_older_data(
        stack: Stack, tokens: dict[str, str], first: dict[str, Any], settings) -> None:
    from recsys_tasks.release.promotion import status

    admin = tokens["admin"]
    live_before = live_version(stack, tokens["viewer"])
    command = readme_backfill_command()
    assert "--max-active-runs 1" in command
    out = subprocess.run(shlex.split(command), env={**stack.env, "PATH": f"{BIN}:{stack.env['PATH']}"},
                         cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout + out.stderr

    def backfill_runs() -> list[dict[str, Any]]:
        answer = stack.api("GET", "/api/v2/dags/movielens_recsys/dagRuns", admin,
                           params={"run_type": "backfill", "order_by": "logical_date", "limit": 100})
        return answer.json()["dag_runs"]

    runs = backfill_runs()
    assert [r["logical_date"][:10] for r in runs] == list(DATES), runs
    for run in runs:
        stack.wait_for_run(admin, run["dag_run_id"])
    runs = backfill_runs()
    assert [r["state"] for r in runs] == ["success"] * 3, stack.log_tails()
    starts = [datetime.fromisoformat(r["start_date"]) for r in runs]
    ends = [datetime.fromisoformat(r["end_date"]) for r in runs]
    assert all(ends[i] <= starts[i + 1] for i in range(2)), f"dates overlapped: {list(zip(starts, ends))}"

    for run, day in zip(runs, DATES, strict=True):
        snapshot = stack.xcom(admin, run["dag_run_id"], "resolve_config")["snapshot"]
        assert snapshot == str(stack.root / "snapshots" / day), (day, snapshot)
    # Nov 1 trains a model on older data than the live one (Nov 3's): it does not go live
    for run in runs:
        assert stack.task_states(admin, run["dag_run_id"])["promote"]["state"] == "skipped"
    assert live_version(stack, tokens["viewer"]) == live_before == status(settings)["live"]["model_version"]
    trained = [recorded(settings, r["dag_run_id"])["train"] for r in runs]
    assert trained == ["done", "skipped", "skipped"]  # Nov 2: Nov 1's data again; Nov 3: the first run's
    assert len(live_model_events(stack, admin)) == 1


def test_only_the_connections_name_the_stores(stack: Stack, first: dict[str, Any]) -> None:
    assert not {"RECSYS_DB_URL", "RECSYS_MILVUS_URI"} & set(stack.env)
    assert not (stack.home / "catalog.db").exists() and not (stack.home / "milvus.db").exists()
