"""Model configs that do not load, as this file's import error in the Airflow UI.

Every other DAG file builds its DAGs for the models of the catalogue whose config loads
(``mlops_airflow.dag_settings.models``) and leaves the others out; this file fails to import,
naming each bad config with its validation message, so that one model's broken file is seen
without stopping the rest.
"""

from mlops_airflow.dag_settings import raise_catalogue_errors

raise_catalogue_errors()
