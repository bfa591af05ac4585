"""The production shape on this machine's services, started the way docker-compose.yml starts it.

Metadata DB: a PostgreSQL database of its own; Celery broker: Redis under a key prefix of its own;
result backend: the same PostgreSQL database; catalog: a MariaDB database of its own through the
Airflow connection `recsys_mysql`; vectors: a `milvus-lite server` through `recsys_milvus`; alerts:
a loopback SMTP server through `recsys_smtp`. `airflow-init`'s commands; the api-server, through whose
REST API the admin adds the other users and the connections; then the scheduler, dag-processor,
triggerer and two Celery workers (queues `default` and `gpu`). Everything it creates is removed by
`close()`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures_stores import service_unavailable

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}
MARIADB = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
REDIS = ("127.0.0.1", 6379)
USERS = {"admin": "Admin", "viewer": "Viewer", "nobody": "Public"}
DAG_ID = "movielens_recsys"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, check, timeout: float, interval: float = 2.0, on_timeout=lambda: "") -> Any:
    """Poll `check()` until it returns something truthy; fail with `on_timeout()`'s text after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s\n{on_timeout()}")
        time.sleep(interval)


class Stack:
    def __init__(self, root: Path, smtp_connection: str) -> None:
        self.root, self.suffix = root, uuid.uuid4().hex[:10]
        self.name = f"recsys_prod_{self.suffix}"  # the PostgreSQL and the MariaDB database
        self.redis_prefix = f"recsys-prod-{self.suffix}:"
        self.home, self.airflow_home, self.logs = root / "home", root / "airflow", root / "logs"
        for folder in (self.home, self.airflow_home, self.logs):
            folder.mkdir(parents=True)
        self.api_port, self.milvus_port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.api_port}"
        self.passwords = {user: secrets.token_urlsafe(12) for user in USERS}
        self.procs: dict[str, subprocess.Popen] = {}
        self._cleanups: list = []
        self.smtp_connection = smtp_connection
        self.env = self._environment()

    # --- set up -----------------------------------------------------------------------------------
    def _environment(self) -> dict[str, str]:
        from cryptography.fernet import Fernet

        # psycopg2 named: SQLAlchemy 2.1's plain postgresql:// means psycopg 3, which Airflow does not ship
        db = f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{self.name}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RECSYS_"))}
        env.update({
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "DGLBACKEND": "pytorch",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
            "AIRFLOW_HOME": str(self.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "true",
            # as docker-compose.yml's x-airflow-common
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__AUTH_MANAGER": "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db,
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{db}",
            "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS[0]}:{REDIS[1]}/0",
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": self.redis_prefix,
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(48),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base}/execution/",
            "RECSYS_HOME": str(self.home),
            "RECSYS_TRAIN_QUEUE": "gpu",
            # this test's sizes (a small machine shared with other jobs)
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "false",
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            # the backfill's settings (scheduled runs take the params' defaults: the environment)
            "RECSYS_SNAPSHOT": str(self.root / "snapshots"),
            "RECSYS_SKIP_CHECKSUM": "true",
            "RECSYS_EPOCHS": "2", "RECSYS_EMBED_DIM": "16", "RECSYS_LR": "0.02", "RECSYS_DEVICE": "cpu",
            "RECSYS_BATCH_SIZE": "128",
            "RECSYS_ALERT_EMAIL": "ml-oncall@test.local",
        })
        return env

    def create_databases(self) -> None:
        import psycopg2
        import pymysql
        import redis

        try:
            pg = psycopg2.connect(**PG, connect_timeout=5)
            maria = pymysql.connect(**MARIADB, connect_timeout=5, autocommit=True)
            broker = redis.Redis(*REDIS, socket_timeout=5)
            broker.ping()
        except Exception as exc:  # noqa: BLE001 - any unreachable service: say which; skip, or fail under CI
            service_unavailable(f"the production test needs PostgreSQL {PG['port']}, MariaDB {MARIADB['port']} "
                                f"and Redis {REDIS[1]} on 127.0.0.1: {exc}")
        pg.autocommit = True
        with pg.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{self.name}"')  # a generated name, not input
        with maria.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{self.name}` CHARACTER SET utf8mb4")

        def drop() -> None:
            with pg.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            pg.close()
            with maria.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{self.name}`")
            maria.close()
            for key in broker.scan_iter(match=f"{self.redis_prefix}*"):
                broker.delete(key)
            broker.close()

        self._cleanups.append(drop)

    @property
    def catalog_url(self) -> str:
        return f"mysql+pymysql://root@127.0.0.1:3306/{self.name}?charset=utf8mb4"

    @property
    def milvus_uri(self) -> str:
        return f"http://127.0.0.1:{self.milvus_port}"

    def airflow(self, *args: str, timeout: float = 600) -> str:
        out = subprocess.run([str(BIN / "airflow"), *args], env=self.env, cwd=REPO, capture_output=True,
                             text=True, timeout=timeout, check=False)
        assert out.returncode == 0, f"airflow {' '.join(args)}: {(out.stdout + out.stderr)[-4000:]}"
        return out.stdout

    def init(self) -> None:
        """docker-compose.yml's airflow-init: the metadata DB, the admin user and the `gpu` pool."""
        self.airflow("db", "migrate")
        # `--password=…` in one word: a random password may start with '-', which argparse reads as a flag
        self.airflow("users", "create", "--role", USERS["admin"], "--username", "admin",
                     f"--password={self.passwords['admin']}", "--firstname", "admin", "--lastname", "Test",
                     "--email", "admin@test.local")
        self.airflow("pools", "set", "gpu", "1", "one training at a time per GPU")

    def provision(self) -> None:
        """What the operator then adds through the REST API as the admin: the other users and the connections
        (before any worker starts, so the first task finds them)."""
        admin = self.token("admin")
        for user, role in USERS.items():
            if user != "admin":
                answer = self.api("POST", "/auth/fab/v1/users", admin, json={
                    "username": user, "password": self.passwords[user], "first_name": user, "last_name": "Test",
                    "email": f"{user}@test.local", "roles": [{"name": role}]})
                assert answer.status_code in (200, 201), answer.text
        smtp = json.loads(self.smtp_connection)
        connections = {
            "recsys_mysql": {"conn_type": "mysql", "host": "127.0.0.1", "port": 3306, "login": "root",
                             "schema": self.name},
            # milvus-lite ignores credentials; they exercise the login/password → token path all the same
            "recsys_milvus": {"conn_type": "http", "host": "127.0.0.1", "port": self.milvus_port,
                              "login": "recsys", "password": secrets.token_urlsafe(8)},
            "recsys_smtp": {**smtp, "extra": json.dumps(smtp["extra"])},
        }
        for connection_id, fields in connections.items():
            answer = self.api("POST", "/api/v2/connections", admin, json={"connection_id": connection_id, **fields})
            assert answer.status_code == 201, answer.text

    def start(self, name: str, *cmd: str, extra_env: dict[str, str] | None = None) -> None:
        log = (self.logs / f"{name}.log").open("w")
        self.procs[name] = subprocess.Popen(list(cmd), env={**self.env, **(extra_env or {})}, cwd=REPO,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start_all(self) -> None:
        airflow = str(BIN / "airflow")
        self.start("milvus", str(BIN / "milvus-lite"), "server", "--data-dir", str(self.root / "milvus"),
                   "--host", "127.0.0.1", "--port", str(self.milvus_port))
        wait_until("milvus-lite server", lambda: self._listening(self.milvus_port), 120, 1, self.log_tails)
        self.start("api-server", airflow, "api-server", "--port", str(self.api_port))
        wait_until("api-server", self._api_up, 300, 2, self.log_tails)
        self.provision()
        for name in ("scheduler", "dag-processor", "triggerer"):
            self.start(name, airflow, name)
        # two workers on one host: their own Celery node names and log-server ports
        self.start("worker", airflow, "celery", "worker", "--queues", "default", "--celery-hostname",
                   f"default-{self.suffix}@%h", extra_env={"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())})
        self.start("worker-gpu", airflow, "celery", "worker", "--queues", "gpu", "--concurrency", "1",
                   "--celery-hostname", f"gpu-{self.suffix}@%h",
                   extra_env={"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())})

    def _listening(self, port: int) -> bool:
        self._alive()
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    def _api_up(self) -> bool:
        self._alive()
        try:
            return httpx.get(f"{self.base}/api/v2/version", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def _alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode}\n{self.log_tails()}")

    def log_tails(self, chars: int = 2500) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-chars:]}"
                         for p in sorted(self.logs.glob("*.log")))

    # --- REST API -----------------------------------------------------------------------------------
    def token(self, user: str) -> str:
        answer = httpx.post(f"{self.base}/auth/token", json={"username": user, "password": self.passwords[user]},
                            timeout=60)
        assert answer.status_code == 201, answer.text
        return answer.json()["access_token"]

    def api(self, method: str, path: str, token: str | None, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.request(method, f"{self.base}{path}", headers=headers, timeout=120, **kwargs)

    def trigger(self, token: str, conf: dict[str, Any], logical_date: str | None = None) -> str:
        answer = self.api("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", token,
                          json={"logical_date": logical_date, "conf": conf})
        assert answer.status_code == 200, answer.text
        return answer.json()["dag_run_id"]

    def wait_for_run(self, token: str, run_id: str, timeout: float = 1800) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            self._alive()
            run = self.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}", token).json()
            return run if run["state"] in ("success", "failed") else None

        return wait_until(f"run {run_id}", finished, timeout, 5, self.log_tails)

    def task_states(self, token: str, run_id: str) -> dict[str, dict[str, Any]]:
        """The run's task instances by step name (the task id without its group)."""
        answer = self.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", token,
                          params={"limit": 100})
        assert answer.status_code == 200, answer.text
        return {ti["task_id"].rsplit(".", 1)[-1]: ti for ti in answer.json()["task_instances"]}

    def xcom(self, token: str, run_id: str, task_id: str) -> Any:
        answer = self.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/"
                                 "return_value", token, params={"deserialize": "true"})
        assert answer.status_code == 200, answer.text
        value = answer.json()["value"]
        return json.loads(value) if isinstance(value, str) and value[:1] in "{[" else value

    # --- tear down ----------------------------------------------------------------------------------
    def close(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # its own session: the process and what it forked
        for proc in self.procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # what it forked and left behind, if anything
            except ProcessLookupError:
                pass
        for cleanup in reversed(self._cleanups):
            cleanup()
        shutil.rmtree(self.airflow_home, ignore_errors=True)


def readme_backfill_command() -> str:
    """The `airflow backfill create` command of the README's "The DAG" section, as written there."""
    text = (REPO / "README.md").read_text()
    section = text.split("## The DAG", 1)[1].split("\n## ", 1)[0]
    [command] = re.findall(r"^airflow backfill create[^\n]*(?:\\\n[^\n]*)*", section, re.MULTILINE)
    return command.replace("\\\n", " ")
