"""The project's Airflow plugin: the alert webhook and the Models page on the API server, the timetable.

Airflow finds it through the ``airflow.plugins`` entry point of the installed package
(``pyproject.toml``), in every process it starts: no plugins folder, no ``PYTHONPATH``. A registered
class keeps the import path the DAG files use (Airflow looks custom timetables up by that path when
it reads a serialized DAG).
"""

from airflow.plugins_manager import AirflowPlugin

from mlops_airflow import overview
from mlops_airflow.alerts import app
from mlops_airflow.schedules import DataSpanTimetable

# One app under /mlops: the alert webhook (POST /mlops/alerts) and the Models page (GET /mlops/models)
app.include_router(overview.router)


class MlopsPlugin(AirflowPlugin):
    name = "mlops"
    fastapi_apps = [{"app": app, "url_prefix": "/mlops", "name": "MLOps alert webhook and Models page"}]
    external_views = [overview.EXTERNAL_VIEW]
    timetables = [DataSpanTimetable]
