# The project image: Airflow 3.3.2 (official image) + the pinned stack + recsys_tasks, dags and plugins.
# One image for every Airflow service and both Celery workers (CPU and GPU: PyPI's torch ships CUDA).
FROM apache/airflow:3.3.2-python3.11

ENV DGLBACKEND=pytorch \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# RECSYS_HOME (a named volume in docker-compose.yml) must be writable by the airflow user.
USER root
RUN mkdir -p /opt/recsys /opt/recsys-src && chown airflow:root /opt/recsys /opt/recsys-src
USER airflow

WORKDIR /opt/recsys-src
# The image installs exactly requirements.txt (it pins apache-airflow==3.3.2, so Airflow is not moved).
COPY --chown=airflow:root requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY --chown=airflow:root pyproject.toml README.md ./
COPY --chown=airflow:root recsys_tasks ./recsys_tasks
RUN pip install --no-cache-dir --no-deps -e .

COPY --chown=airflow:root dags /opt/airflow/dags
COPY --chown=airflow:root plugins /opt/airflow/plugins
WORKDIR /opt/airflow
