"""ML pipelines for Airflow 3 and MLflow 3. This package never imports Airflow."""

__version__ = "0.1.0"
