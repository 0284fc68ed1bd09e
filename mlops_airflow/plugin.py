"""The project's Airflow plugin: the alert webhook on the API server and the DAGs' timetable.

Airflow finds it through the ``airflow.plugins`` entry point of the installed package
(``pyproject.toml``), in every process it starts: no plugins folder, no ``PYTHONPATH``. A registered
class keeps the import path the DAG files use (Airflow looks custom timetables up by that path when
it reads a serialized DAG).
"""

from airflow.plugins_manager import AirflowPlugin

from mlops_airflow.alerts import app
from mlops_airflow.schedules import DataSpanTimetable


class MlopsPlugin(AirflowPlugin):
    name = "mlops"
    fastapi_apps = [{"app": app, "url_prefix": "/mlops", "name": "MLOps alert webhook"}]
    timetables = [DataSpanTimetable]
