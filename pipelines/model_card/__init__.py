"""Model card: what a registered version is for, what it learned from, how well it does and where not.

``build`` gathers the card from the config and the ingest, train and evaluate
results into a plain JSON-able dict (``content``); ``to_markdown`` renders it for
the model version's description in MLflow (kept under MLflow's size limit),
``to_html`` as a standalone page with SVG charts (``render``, ``charts`` and the
``model_card*.j2`` templates in ``pipelines/templates``); ``publish`` stores all
three with the version (``store``).

The description limit: MLflow 3.17 has no check of its own on a model
version's description, but its SQL store declares ``model_versions.description``
as ``VARCHAR(5000)`` (``mlflow/store/model_registry/dbmodels/models.py``).
PostgreSQL and MySQL reject a longer value; SQLite stores it anyway. The
markdown is therefore kept within 5,000 UTF-8 bytes (hence characters too):
slice tables shrink to the best and worst slices first, then free text, and
the full card is always in the run's artifacts.
"""

from pipelines.model_card.content import (
    ARTIFACT_DIR,
    CARD_TAG,
    DESCRIPTION_LIMIT,
    FILES,
    METRICS,
    SCHEMA_VERSION,
    build,
)
from pipelines.model_card.render import to_html, to_markdown
from pipelines.model_card.store import publish

__all__ = [
    "ARTIFACT_DIR",
    "CARD_TAG",
    "DESCRIPTION_LIMIT",
    "FILES",
    "METRICS",
    "SCHEMA_VERSION",
    "build",
    "publish",
    "to_html",
    "to_markdown",
]
