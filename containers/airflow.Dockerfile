# The Airflow image the Helm chart runs (scheduler, API server, workers): the official
# apache/airflow image plus this project's package (`pipelines`, light modules only imported by the
# DAGs; steps run in their own pods; and `mlops_airflow`, whose plugin Airflow finds through the
# package's `airflow.plugins` entry point) and its DAGs. The demo tooling (`mlops_demo`) is not in it.
# Build from the repository root:
#   docker build -f containers/airflow.Dockerfile -t mlops-airflow:0.1.0 .
# Not built on the development machine (no registry to pull apache/airflow from); CI's release
# workflow builds it where a registry is reachable.
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11
FROM ${AIRFLOW_IMAGE}
USER airflow
COPY --chown=airflow:0 pyproject.toml README.md /opt/mlops-src/
COPY --chown=airflow:0 pipelines /opt/mlops-src/pipelines
COPY --chown=airflow:0 mlops_airflow /opt/mlops-src/mlops_airflow
# Keep the image's own Airflow; add the project with the same pins as pyproject.toml's `airflow` extra.
RUN pip install --no-cache-dir "/opt/mlops-src[airflow]" "apache-airflow==${AIRFLOW_VERSION}"
COPY --chown=airflow:0 dags /opt/airflow/dags
