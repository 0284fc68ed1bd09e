"""Airflow glue for the ``pipelines`` package: the step-task factory and DAG settings."""
