"""The card stored with its model version: run artifacts, the version's description and a tag."""

from __future__ import annotations

from typing import Any

from pipelines.model_card.content import ARTIFACT_DIR, CARD_TAG, FILES
from pipelines.model_card.render import to_html, to_markdown
from pipelines.model_card.text import size


def publish(
    client, *, model_name: str, version: str | int, run_id: str, card: dict[str, Any]
) -> dict[str, Any]:
    """Store the card with the version: run artifacts, the version's description and a tag.

    Logs ``model_card/model_card.{md,html,json}`` to the version's run, sets the version's
    description to the markdown and the tag ``model_card`` to the folder's ``runs:/`` URI.
    A retry overwrites the same three files and sets the same values: nothing is duplicated.
    """
    version = str(version)
    markdown = to_markdown(card)
    client.log_text(run_id, markdown, f"{ARTIFACT_DIR}/{FILES['markdown']}")
    client.log_text(run_id, to_html(card), f"{ARTIFACT_DIR}/{FILES['html']}")
    client.log_dict(run_id, card, f"{ARTIFACT_DIR}/{FILES['json']}")
    client.update_model_version(model_name, version, description=markdown)
    folder = f"runs:/{run_id}/{ARTIFACT_DIR}"
    client.set_model_version_tag(model_name, version, CARD_TAG, folder)
    stored = client.get_run(run_id).info.artifact_uri.rstrip("/") + f"/{ARTIFACT_DIR}"
    return {
        "uri": folder,
        **{kind: f"{folder}/{name}" for kind, name in FILES.items()},
        "artifact_uri": stored,
        "tag": {CARD_TAG: folder},
        "description_bytes": size(markdown),
    }
