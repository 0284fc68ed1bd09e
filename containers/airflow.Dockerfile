# The Airflow image the Helm chart runs (scheduler, API server, workers): the official
# apache/airflow image plus this project's `pipelines` package (light modules only are imported
# by the DAGs and plugins; steps run in their own pods) and its DAGs and plugins.
# Build from the repository root:
#   docker build -f containers/airflow.Dockerfile -t mlops-airflow:0.1.0 .
# Not built on the development machine (no registry to pull apache/airflow from); CI's release
# workflow builds it where a registry is reachable.
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11
FROM ${AIRFLOW_IMAGE}
USER airflow
COPY --chown=airflow:0 pyproject.toml README.md /opt/mlops-src/
COPY --chown=airflow:0 pipelines /opt/mlops-src/pipelines
# Keep the image's own Airflow; add the project with the same pins as pyproject.toml's `airflow` extra.
RUN pip install --no-cache-dir "/opt/mlops-src[airflow]" "apache-airflow==${AIRFLOW_VERSION}"
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins
